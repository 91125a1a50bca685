"""Grafting, ablation and warm starts (Singh et al. 2025, Sec. 4-5)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_transience import config as config_lib
from icl_transience.proj.transience import ablate
from icl_transience import metrics_table
from icl_transience.proj.transience import interventions
from icl_transience.errors import UserError
from icl_transience.proj.transience import graft
from icl_transience.nn import transformer
from icl_transience.train import loop
from icl_transience.proj.transience import classifier

from helpers import REPO  # pylint: disable=unused-import  (puts configs/ on the path)
from helpers import assert_trees_equal, copy_run, final_state, smoke_config
import coopetition  # pylint: disable=wrong-import-order

MODEL = classifier.SequenceClassifier(n_outputs=12, depth=3, d_model=16, n_heads=4)
FEATS = jax.random.normal(jax.random.PRNGKey(1), (6, 3, 8))
LABELS = jax.random.randint(jax.random.PRNGKey(2), (6, 2), 0, 12)


def init(seed):
  return MODEL.init(jax.random.PRNGKey(seed), FEATS, LABELS)["params"]


def apply(params, **kwargs):
  return MODEL.apply({"params": params}, FEATS, LABELS, **kwargs)


@pytest.mark.parametrize("mode", ["out", "in"])
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_graft_of_a_model_onto_itself_is_the_identity(mode, layer):
  params = init(0)
  np.testing.assert_allclose(
      graft.forward(MODEL, mode, layer, params, params, FEATS, LABELS),
      apply(params), rtol=1e-5, atol=1e-6)


def test_graft_mixes_the_two_models_and_trains_only_the_live_one():
  live, frozen = init(0), init(1)
  loss = lambda p, mode: jnp.sum(graft.forward(MODEL, mode, 0, p, frozen, FEATS, LABELS) ** 2)
  out = graft.forward(MODEL, "out", 0, live, frozen, FEATS, LABELS)
  assert not np.allclose(out, apply(live)) and not np.allclose(out, apply(frozen))
  # graft-out from block 0: the live blocks 1-2 and readout get no gradient
  grads = jax.grad(loss)(live, "out")
  for name in ("block_1", "block_2", "ln_final", "unembed"):
    assert all((g == 0).all() for g in jax.tree.leaves(grads[name])), name
  assert any((g != 0).any() for g in jax.tree.leaves(grads["block_0"]))
  # graft-in till block 0: the live embeddings and block 0 get no gradient
  grads = jax.grad(loss)(live, "in")
  for name in ("input_proj", "label_embed", "positions", "block_0"):
    assert all((g == 0).all() for g in jax.tree.leaves(grads[name])), name
  assert any((g != 0).any() for g in jax.tree.leaves(grads["block_1"]))


@pytest.mark.parametrize("block", [0, 1, 2])
def test_ablating_every_head_removes_the_layers_attention_output(block):
  params = init(0)
  removed = jax.tree.map(lambda x: x, params)
  kernel = removed[f"block_{block}"]["attn"]["out"]["kernel"]
  removed[f"block_{block}"]["attn"]["out"]["kernel"] = jnp.zeros_like(kernel)
  ablated = interventions.forward(MODEL, params, FEATS, LABELS,
                                  interventions.Intervention(ablate=((block, "all"),)))
  np.testing.assert_allclose(ablated, apply(removed), rtol=1e-5, atol=1e-6)
  assert not np.allclose(ablated, apply(params))


def test_one_head_ablation_zeroes_that_heads_output_rows():
  params = init(0)
  head = interventions.forward(MODEL, params, FEATS, LABELS,
                               interventions.parse(ablate="1:2"))
  removed = jax.tree.map(lambda x: x, params)
  kernel = removed["block_1"]["attn"]["out"]["kernel"]  # rows: (head, head_dim)
  removed["block_1"]["attn"]["out"]["kernel"] = kernel.at[8:12].set(0.0)
  np.testing.assert_allclose(head, apply(removed), rtol=1e-5, atol=1e-6)
  assert not np.allclose(head, apply(params), atol=1e-4)
  # keeping every activation of a block clean undoes nothing and changes nothing
  same = interventions.forward(MODEL, params, FEATS, LABELS,
                               interventions.parse(keep="0:q,k,v,pattern;2:pattern"))
  np.testing.assert_allclose(same, apply(params), rtol=1e-5, atol=1e-6)
  rec = interventions.record(MODEL, params, FEATS, LABELS)
  assert rec["residual"].shape == (6, 4, 5, 16)
  assert rec["blocks"][1]["pattern"].shape == (6, 4, 5, 5)
  np.testing.assert_allclose(rec["logits"], apply(params), rtol=1e-6)


TWO_LAYER = classifier.SequenceClassifier(n_outputs=12, depth=2, d_model=16,
                                           n_heads=4)


def readout(params, stream):
  """The query logits the readout gives for a final residual stream."""
  ln = transformer.nn.LayerNorm(epsilon=1e-5).apply(
      {"params": params["ln_final"]}, stream[:, -1])
  return transformer.nn.Dense(12).apply({"params": params["unembed"]}, ln)


def block_1_by_hand(params, stream, q, k, v):
  """Block 1's causal attention from given q, k, v, added to the stream,
  then read out."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  causal = np.tril(np.ones(scores.shape[-2:], bool))
  pattern = jax.nn.softmax(jnp.where(causal, scores, -1e20), -1)
  heads = jnp.einsum("bhqk,bkhd->bqhd", pattern, v).reshape(stream.shape)
  return readout(params, stream + heads @ params["block_1"]["attn"]["out"]["kernel"])


def test_every_row_of_the_ablation_table_by_hand():
  """The interventions of the paper's Fig. 2 table (and ours), each against a
  computation that edits weights or recombines recorded activations."""
  params = TWO_LAYER.init(jax.random.PRNGKey(0), FEATS, LABELS)["params"]
  without = lambda p, *blocks: jax.tree.map(lambda x: x, p) | {
      f"block_{b}": dict(p[f"block_{b}"], attn=dict(
          p[f"block_{b}"]["attn"], out={"kernel": jnp.zeros((16, 16))}))
      for b in blocks}
  clean = interventions.record(TWO_LAYER, params, FEATS, LABELS)
  ablated = interventions.record(TWO_LAYER, without(params, 0), FEATS, LABELS)
  stream = ablated["residual"][:, 1]  # the stream without block 0's heads
  qkv = lambda rec: tuple(rec["blocks"][1][a] for a in ("q", "k", "v"))
  (q, k, v), (q0, k0, v0) = qkv(clean), qkv(ablated)
  expected = {
      "none": clean["logits"],
      "layer1_ablated_layer2_qkv_clean": block_1_by_hand(params, stream, q, k, v),
      "layer1_ablated_recompute_queries": block_1_by_hand(params, stream, q0, k, v),
      "layer1_ablated_recompute_keys": block_1_by_hand(params, stream, q, k0, v),
      "layer1_ablated_recompute_values": block_1_by_hand(params, stream, q, k, v0),
      "all_heads_ablated": TWO_LAYER.apply({"params": without(params, 0, 1)},
                                           FEATS, LABELS),
      # the authors': token embeddings zeroed at the input, the positions
      # and the blocks' (clean-pattern, clean-value) outputs kept
      "direct_embedding_removed": readout(
          params, clean["residual"][:, -1] - clean["residual"][:, 0]
          + params["positions"][FEATS.shape[1] * 2 - 2]),
      # ours: the blocks' outputs alone, without the embedding stream
      "embedding_subtracted_at_readout": readout(
          params, clean["residual"][:, -1] - clean["residual"][:, 0]),
  }
  assert list(expected) == list(interventions.TABLE)
  for name, iv in interventions.TABLE.items():
    got = interventions.forward(TWO_LAYER, params, FEATS, LABELS, iv)
    np.testing.assert_allclose(got, expected[name], rtol=1e-4, atol=1e-5,
                               err_msg=name)
  distinct = {name: np.asarray(e) for name, e in expected.items()}
  assert not np.allclose(distinct["none"], distinct["all_heads_ablated"], atol=1e-3)


def test_fig2b_induction_clamp_by_hand():
  """Singh et al. 2025, Fig. 2b: layer 1 ablated, one layer-2 head kept with
  clean values and its query attention clamped to s on the target's label
  token and 1 - s on the other; the readout sees the embedding plus that
  head's output alone."""
  params = TWO_LAYER.init(jax.random.PRNGKey(0), FEATS, LABELS)["params"]
  target = LABELS[:, 1]
  clean = interventions.record(TWO_LAYER, params, FEATS, LABELS)
  v = clean["blocks"][1]["v"][:, :, 2]            # head 2's values (B, T, 4)
  w_out = params["block_1"]["attn"]["out"]["kernel"][8:12]
  for s in (0.0, 0.8, 1.0):
    iv = ablate.fig2b(2, 4, 2, (s,))[f"fig2b_s={s:g}"]
    row = np.zeros((6, 5))
    row[:, 1] = np.where(LABELS[:, 0] == target, s, 1 - s)
    row[:, 3] = np.where(LABELS[:, 1] == target, s, 1 - s)
    stream = clean["residual"][:, 0] + 0.0
    stream = stream.at[:, -1].add(jnp.einsum("bk,bkd->bd", row, v) @ w_out)
    got = interventions.forward(TWO_LAYER, params, FEATS, LABELS, iv, target)
    np.testing.assert_allclose(got, readout(params, stream), rtol=1e-4,
                               atol=1e-5, err_msg=f"s={s}")
  assert list(ablate.fig2b(2, 4, 0, (0, 0.5))) == ["fig2b_s=0", "fig2b_s=0.5"]
  with pytest.raises(UserError, match="--fig2b: needs the 2-layer model"):
    ablate.fig2b(3, 4, 0, (1.0,))
  with pytest.raises(UserError, match="--head: 4"):
    ablate.fig2b(2, 4, 4, (1.0,))
  with pytest.raises(UserError, match="strength 1.5"):
    interventions.check(interventions.parse(induction="1:0",
                                            induction_strength=1.5), 2, 4)


def test_training_clamps_by_hand():
  """The model's own clamps (Singh et al. 2025, appendix runs): an ablated
  head is the ablation intervention in every pass and its value weights get
  no gradient; a blocked head gives a label token no attention to its
  exemplar and renormalises the rest of that row."""
  params = init(0)
  ablated = classifier.SequenceClassifier(n_outputs=12, depth=3, d_model=16,
                                          n_heads=4, ablated_heads=((0, (1,)),))
  np.testing.assert_allclose(
      ablated.apply({"params": params}, FEATS, LABELS),
      interventions.forward(MODEL, params, FEATS, LABELS,
                            interventions.parse(ablate="0:1")), rtol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(ablated.apply({"params": p}, FEATS, LABELS) ** 2))(params)
  v_columns = grads["block_0"]["attn"]["qkv"]["kernel"].reshape(16, 3, 4, 4)[:, 2]
  assert (v_columns[:, 1] == 0).all() and (v_columns[:, 0] != 0).any()

  blocked = classifier.SequenceClassifier(
      n_outputs=12, depth=3, d_model=16, n_heads=4,
      label_attention_blocked=((0, "all"), (1, (3,))))
  free = interventions.record(MODEL, params, FEATS, LABELS)["blocks"]
  held = interventions.record(blocked, params, FEATS, LABELS)["blocks"]
  for label, exemplar in ((1, 0), (3, 2)):
    row = np.array(free[0]["pattern"][:, :, label])
    row[:, :, exemplar] = 0.0
    np.testing.assert_allclose(held[0]["pattern"][:, :, label],
                               row / row.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert (held[1]["pattern"][:, 3, label, exemplar] == 0).all()
    assert (held[1]["pattern"][:, :3, label, exemplar] > 0).all()
  for row in (0, 2, 4):  # exemplar and query rows are not touched
    np.testing.assert_allclose(held[0]["pattern"][:, :, row],
                               free[0]["pattern"][:, :, row], rtol=1e-6)


def test_intervention_flags_are_checked():
  with pytest.raises(UserError, match="--ablate"):
    interventions.parse(ablate="zero:1")
  with pytest.raises(UserError, match="--keep"):
    interventions.parse(keep="1:x")
  with pytest.raises(UserError, match="block 5"):
    interventions.check(interventions.parse(ablate="5:all"), 3, 4)


@pytest.fixture(name="source")
def source_run(smoke_run):
  """A finished smoke run (checkpoints at 0, 400 and 800 sequences)."""
  return smoke_run


def test_warm_start_keeps_the_counter_and_resets_adam(source, tmp_path):
  trained = final_state(smoke_config(), source)
  assert int(trained["step"][0]) == 100
  assert any(np.abs(m).sum() > 0 for m in jax.tree.leaves(trained["opt"].mu))

  c = smoke_config(**{"warm_start.workdir": source, "total_sequences": 1600,
                      "data_seed": 9})
  warm = str(tmp_path / "warm")
  loop.train(c, warm)
  start = final_state(c, warm, step=100)
  assert_trees_equal(start["params"], trained["params"])
  adam = start["opt"]
  assert int(adam.count[0]) == 0
  assert all((m == 0).all() for m in jax.tree.leaves((adam.mu, adam.nu)))
  end = final_state(c, warm)
  assert int(end["step"][0]) == 200
  rows = metrics_table.read(warm)
  assert min(r["sequences"] for r in rows) == 800  # the counter carries on

  with pytest.raises(UserError, match="warm_start.sequences"):
    loop.train(smoke_config(**{"warm_start.workdir": source,
                               "warm_start.sequences": 480}), str(tmp_path / "x"))


def test_grafted_training_keeps_the_frozen_model(source, tmp_path):
  frozen = final_state(smoke_config(), source, step=50)["params"]
  c = smoke_config(**{"graft.workdir": source, "graft.mode": "out",
                      "graft.sequences": 400})
  loop.train(c, str(tmp_path / "grafted"))
  end = final_state(c, str(tmp_path / "grafted"))
  assert_trees_equal(end["frozen"], frozen)
  fresh = final_state(c, str(tmp_path / "grafted"), step=0)["params"]
  moved = lambda name: not np.array_equal(end["params"][name]["kernel"],
                                          fresh[name]["kernel"])
  assert moved("input_proj") and not moved("unembed")


def test_ablation_table_and_recording(source, tmp_path):
  workdir = copy_run(source, tmp_path / "run")
  record = str(tmp_path / "rec.npz")
  seen, results, out = ablate.ablate(workdir, sequences=800, record=record,
                                     record_n=16, evaluators=("flip_icl",))
  assert seen == 800 and out == f"{workdir}/ablations/800.json"
  saved = json.loads(open(out).read())["results"]
  assert saved == results and list(saved) == list(interventions.TABLE)
  # no intervention = the training loop's own probes at that checkpoint
  logged = {(r["evaluator"], r["metric"]): r["value"]
            for r in metrics_table.read(workdir) if r["sequences"] == 800}
  for evaluator in ("flip_icl",):
    for metric, value in saved["none"][evaluator].items():
      np.testing.assert_allclose(value, logged[(evaluator, metric)], atol=1e-6)
  assert saved["all_heads_ablated"] != saved["none"]
  with np.load(record, allow_pickle=False) as rec:
    assert rec["block1_pattern"].shape == (16, 2, 5, 5)
    assert rec["residual"].shape == (16, 3, 5, 16)
    np.testing.assert_allclose(rec["block0_pattern"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(rec["classes"].shape, (16, 3))
  with pytest.raises(UserError, match="block 7"):
    ablate.ablate(workdir, ablate_heads="7:all")
  # Fig. 2b: the combination is checked by hand above
  with pytest.raises(UserError, match="--fig2b: sets its own"):
    ablate.ablate(workdir, ablate_heads="0:all", fig2b_head=1)


def test_a_run_trained_under_clamps_keeps_them(tmp_path):
  """The clamps of Singh et al. 2025's nol0h147 and
  disallow_pt_head_attn_on_labels presets, at smoke size with 8 heads: they
  hold throughout training, so the ablated heads' value weights never move,
  and a config with a bad clamp is one line."""
  presets = {**coopetition.VARIANTS["nol0h147"],
             **coopetition.VARIANTS["disallow_pt_head_attn_on_labels"]}
  c = smoke_config(**{k: v for k, v in presets.items() if k.startswith("clamp.")},
                   **{"model.n_heads": 8, "total_sequences": 400})
  loop.train(c, str(tmp_path / "clamped"))
  start, end = (final_state(c, str(tmp_path / "clamped"), step=s)["params"]
                for s in (0, 50))
  part = lambda p, h: p["block_0"]["attn"]["qkv"]["kernel"].reshape(
      -1, 3, 8, 2)[:, 2, h]  # value columns of head h (d 16, 8 heads)
  for head in (1, 4, 7):
    np.testing.assert_array_equal(part(end, head), part(start, head))
  assert not np.array_equal(part(end, 0), part(start, 0))
  for bad, field in (("0:9", "clamp.ablate_heads"), ("x", "clamp.block_label_attention")):
    with pytest.raises(UserError, match=field):
      loop.train(config_lib.override(smoke_config(), {field: bad}), str(tmp_path / bad))
