"""The induction-head task (Singh et al. 2024): its sampler, each clamp
against a hand computation on a tiny model, the induction-strength
definition, and a short run through the trainer and its report."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO, final_state  # (REPO: configs/ on the path)
import induction_heads  # pylint: disable=wrong-import-order
from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.errors import UserError
from icl_transience.nn import transformer
from icl_transience.proj.transience import classifier
from icl_transience.proj.transience.induction_heads import circuits
from icl_transience.proj.transience.induction_heads import report
from icl_transience.proj.transience.induction_heads import task as ih_task
from icl_transience.train import loop

MODEL = classifier.SequenceClassifier(n_outputs=5, depth=2, d_model=8, n_heads=2,
                                      positions="rope", pos_timescale=10_000.0,
                                      attention_bias=True)
FEATS = jax.random.normal(jax.random.key(0), (3, 3, 6))
LABELS = jnp.array([[0, 1], [2, 4], [3, 0]])
TARGET = jnp.array([1, 2, 0])
PARAMS = MODEL.init(jax.random.key(1), FEATS, LABELS)["params"]


def record(params, **kwargs):
  _, state = MODEL.apply({"params": params}, FEATS, LABELS, mutable=["intermediates"],
                         **kwargs)
  return state["intermediates"]


def test_the_sampler_labels_the_query_class_from_a_training_pair():
  pairs = np.array([[0, 1], [2, 4], [1, 3]])
  s = ih_task.sample(jax.random.key(3), 4000, (10, 20), (1, 3), pairs)
  classes, labels, slot = map(np.asarray, (s["classes"], s["labels"], s["query_slot"]))
  rows = np.arange(len(slot))
  assert ((classes >= 10) & (classes < 20)).all()
  assert ((np.asarray(s["exemplars"]) >= 1) & (np.asarray(s["exemplars"]) < 3)).all()
  assert (classes[rows, slot] == classes[:, 2]).all()          # query class in its slot
  assert (classes[rows, 1 - slot] != classes[:, 2]).all()      # a distractor class
  assert (labels[rows, slot] == np.asarray(s["target"])).all()
  unordered = {tuple(sorted(p)) for p in labels.tolist()}
  assert unordered == {tuple(p) for p in pairs.tolist()}
  assert 0.45 < slot.mean() < 0.55 and 0.45 < (labels[:, 0] < labels[:, 1]).mean() < 0.55


def test_prev_token_and_match_clamps_set_exactly_those_patterns():
  clamps = circuits.Clamps(prev_token=((0, (1,)),), induction=((1, (0,)),))
  patches = circuits._patches(MODEL, clamps, LABELS, TARGET, 0.8)  # pylint: disable=protected-access
  inter = record(PARAMS, patches=tuple(patches))
  free = record(PARAMS)
  first = inter["block_0"]["attn"]["pattern"][0]
  np.testing.assert_array_equal(first[:, 1], np.broadcast_to(
      np.eye(5)[[0, 0, 1, 2, 3]], (3, 5, 5)))
  np.testing.assert_allclose(first[:, 0], free["block_0"]["attn"]["pattern"][0][:, 0])
  query_row = inter["block_1"]["attn"]["pattern"][0][:, 0, -1]
  # label tokens 1 and 3: 0.8 on the one carrying the target, 0.2 on the other
  want = np.zeros((3, 5))
  for b in range(3):
    want[b, 1] = 0.8 if LABELS[b, 0] == TARGET[b] else 0.2
    want[b, 3] = 0.8 if LABELS[b, 1] == TARGET[b] else 0.2
  np.testing.assert_allclose(query_row, want)
  other = inter["block_1"]["attn"]["pattern"][0][:, 1, -1]
  assert np.allclose(other.sum(-1), 1) and not np.allclose(other, want)


def test_copy_clamp_outputs_the_heads_query_key_scores_on_the_context_labels():
  logits = circuits.forward(MODEL, PARAMS, FEATS, LABELS, TARGET,
                            circuits.Clamps(copy_from=((1, (1,)),)))
  attn = record(PARAMS)["block_1"]["attn"]
  q, k = attn["q"][0], attn["k"][0]
  for b in range(3):
    for slot, token in enumerate((1, 3)):
      want = float(q[b, -1, 1] @ k[b, token, 1]) / math.sqrt(4)
      assert float(logits[b, LABELS[b, slot]]) == pytest.approx(want, rel=1e-5)
    assert set(np.asarray(logits[b]).tolist()) - set(
        np.asarray(logits[b, LABELS[b]]).tolist()) == {-1e9}


def test_ablation_removes_a_heads_value_path_and_keeps_its_output_bias():
  clamps = circuits.Clamps(ablate=((0, "all"), (1, "all")))
  logits = circuits.forward(MODEL, PARAMS, FEATS, LABELS, TARGET, clamps)
  x = MODEL.apply({"params": PARAMS}, FEATS, LABELS, stop=0)
  for i in range(2):  # each block adds its output projection's bias only
    x = x + PARAMS[f"block_{i}"]["attn"]["out"]["bias"]
  ln = transformer.nn.LayerNorm(epsilon=1e-5).apply(
      {"params": PARAMS["ln_final"]}, x[:, -1])
  want = transformer.nn.Dense(5).apply({"params": PARAMS["unembed"]}, ln)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
  # only_head k: every other head of the last block ablated
  only = circuits.forward(MODEL, PARAMS, FEATS, LABELS, TARGET, circuits.Clamps(),
                          only_head=1.0)
  np.testing.assert_allclose(only, circuits.forward(
      MODEL, PARAMS, FEATS, LABELS, TARGET, circuits.Clamps(ablate=((1, (0,)),))),
                             rtol=1e-6)
  assert not np.allclose(only, MODEL.apply({"params": PARAMS}, FEATS, LABELS))


def test_the_layer1_clamp_is_the_three_pass_computation():
  logits = circuits.forward(MODEL, PARAMS, FEATS, LABELS, TARGET,
                            circuits.Clamps(perfect_layer1=True))
  embedded = MODEL.apply({"params": PARAMS}, FEATS, LABELS, stop=0)
  shifted = np.asarray(embedded).copy()
  shifted[:, 1:4] = np.asarray(embedded)[:, 0:3]  # token t carries t - 1
  seen = record(PARAMS, stream=jnp.asarray(shifted), start=1)
  pattern = seen["block_1"]["attn"]["pattern"][0]
  want = MODEL.apply({"params": PARAMS}, FEATS, LABELS, stream=embedded, start=1,
                     patches=(None, transformer.Patch(clean={"pattern": pattern})))
  np.testing.assert_allclose(logits, want, rtol=1e-6)
  assert not np.allclose(logits, MODEL.apply({"params": PARAMS}, FEATS, LABELS))


def test_patterns_under_the_layer1_clamp_are_those_of_the_shifted_pass():
  clamps = circuits.Clamps(perfect_layer1=True)
  got = circuits.attention_patterns(MODEL, PARAMS, FEATS, LABELS, TARGET, clamps)
  embedded = MODEL.apply({"params": PARAMS}, FEATS, LABELS, stop=0)
  shifted = embedded.at[:, 1:4].set(embedded[:, 0:3])
  want = record(PARAMS, stream=shifted, start=1)["block_1"]["attn"]["pattern"][0]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert not np.allclose(got, record(PARAMS)["block_1"]["attn"]["pattern"][0])


def test_clamps_merge_block_by_block():
  assert circuits.merge(((1, (0, 1)),), ((1, (2,)), (0, (2,)))) == (
      (0, (2,)), (1, (0, 1, 2)))
  assert circuits.merge(((0, "all"),), ((0, (2,)), (1, (3,)))) == (
      (0, "all"), (1, (3,)))


def test_induction_strength_is_right_minus_wrong_label_attention():
  pattern = np.zeros((2, 3, 5, 5))
  pattern[0, :, -1, 1], pattern[0, :, -1, 3] = [0.7, 0.2, 0.5], [0.1, 0.6, 0.5]
  pattern[1, :, -1, 1], pattern[1, :, -1, 3] = [0.3, 0.0, 0.5], [0.6, 1.0, 0.5]
  slot = jnp.array([0, 1])  # sequence 0's class is in slot 0 (token 1), 1's in slot 1
  got = ih_task.induction_strength(jnp.asarray(pattern), slot)
  want = [((0.7 - 0.1) + (0.6 - 0.3)) / 2, ((0.2 - 0.6) + (1.0 - 0.0)) / 2, 0.0]
  np.testing.assert_allclose([got[f"head{h}"] for h in range(3)], want, atol=1e-7)


def tiny(**fields):
  c = induction_heads.get_config()
  return config_lib.override(c, {
      "data.dim": 16, "data.rank": 4, "model.d_model": 16, "model.n_heads": 2,
      "ih.eval_sequences": 64, "ih.strength_sequences": 128,
      "total_sequences": 3200, "eval_every": 1600, "ckpt.every": 3200,
      "optim.lr": 1e-3, **fields})


def test_a_clamped_population_trains_evaluates_and_reports(tmp_path, capsys):
  """Per-member clamp numbers hold in training and in evaluation."""
  c = tiny(**{"ih.induction_heads": "1:1", "ih.ablate_heads": "1:0",
              "population": "match_strength=1; match_strength=0.75"})
  config_lib.validate(c)
  loop.train(c, str(tmp_path))
  result = report.report(str(tmp_path), str(tmp_path))
  strengths = {m["member"]: m["strength_end"] for m in result["members"]}
  assert set(strengths) == {"match_strength1", "match_strength0.75"}
  # the clamped head's query row is the clamp's: strength exactly 2s - 1
  assert strengths["match_strength1"]["head1"] == pytest.approx(1.0)
  assert strengths["match_strength0.75"]["head1"] == pytest.approx(0.5)
  assert result["members"][0]["checks"]["K2 loss < 0.05 at 1e6"] is None  # too short
  saved = json.loads((tmp_path / "report.json").read_text())
  assert [m["member"] for m in saved["members"]] == list(strengths)
  assert "ih_fig3a_match_strength1.png" in capsys.readouterr().out


def test_bad_clamps_and_splits_are_one_line():
  for fields, message in (
      ({"ih.copy_from_head": "0:1"}, "^ih.copy_from_head: one head of the last block"),
      ({"hyper.match_strength": 1.5}, "^hyper.match_strength: 1.5 outside"),
      ({"population": "only_head=8"}, "^hyper.only_head: 8.0 is not -1"),
      ({"ih.prev_token_heads": "0:9"}, r"^ih.prev_token_heads: heads \(9,\) outside"),
      ({"ih.test_classes": 140}, "^ih.test_classes: 50 \\+ 140 classes"),
      ({"evals.names": ("fsl_nope",)}, "^evals.names: unknown evaluator 'fsl_nope'"),
      ({"ih.relabel_split": (7, 2, 0)}, "^ih.relabel_split: expected three counts"),
      ({"model.n_heads": 7}, "^model.n_heads: must divide d_model=16"),
      ({"model.positions": "bogus"}, "^model.positions: unknown 'bogus'"),
      ({"ih.perfect_layer1": True, "model.positions": "learned"},
       "^ih.perfect_layer1: shifts whole token embeddings")):
    with pytest.raises(UserError, match=message):
      config_lib.validate(tiny(**fields))


def test_the_analyses_measure_the_whole_training_distribution(tmp_path):
  from icl_transience.proj.transience.induction_heads import analyse  # pylint: disable=g-import-not-at-top
  c = tiny(**{"ckpt.every": 1600, "model.n_heads": 4,  # heads 0:2 and 1:3 exist
              "ih.train_classes": 10})
  loop.train(c, str(tmp_path))
  run = analyse.Run(str(tmp_path))
  assert run.feats.shape[0] == 10 * 9 * 16 * 2
  result = analyse.fig4a(run)
  params, _ = analyse.load(str(tmp_path), -1, "")
  logits = run.task.model.apply({"params": params}, run.feats, run.labels)
  loss = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
      logits, run.target[:, None], -1)[:, 0]
  assert result["full"]["loss"] == pytest.approx(float(jnp.mean(loss)), rel=1e-4)
  assert result["full"]["acc"] == pytest.approx(
      float(jnp.mean(jnp.argmax(logits, -1) == run.target)), abs=1e-6)
  # keeping one head (ablating the others) is the per-member only_head mask
  for h in range(4):
    only = run.measure(params, dict(analyse.hyper_of(run.c, "main"),
                                    only_head=jnp.float32(h)), run.clamps())
    assert result["keep_only"][h] == pytest.approx(only, rel=1e-5)
  assert len({round(a["loss"], 6) for a in result["ablate_one"]}) == 4
  logged = {r["metric"]: r["value"] for r in metrics_table.read(str(tmp_path))
            if r["evaluator"] == "induction_strength" and r["sequences"] == 3200}
  assert result["strength"] == [logged[f"head{h}"] for h in range(4)]
  points = analyse.progress(run)["points"]
  assert [p["sequences"] for p in points] == [0, 1600, 3200]
  assert all(p["composite"] != p["loss"] and p["copy"] != p["loss"] for p in points)


def test_every_figure_names_runs_of_the_config_and_draws_them(tmp_path, monkeypatch):
  from icl_transience.proj.transience.induction_heads import paper  # pylint: disable=g-import-not-at-top
  from icl_transience.analysis import figures  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, "configs", "induction_heads.py")
  for figure, variants in paper.RUNS.items():
    for variant in variants:
      c = paper.load_config(path, variant, str(tmp_path))
      if variant.startswith("graft"):  # on the seeds run's member
        assert (c.graft.workdir, c.graft.member, c.init_seed) == (
            paper.workdir(str(tmp_path), "seeds"), f"init_seed{variant[5:]}", 5)
      else:
        config_lib.validate(c)
    assert len(set(variants)) == len(variants), figure
  labels = {}
  monkeypatch.setattr(figures, "save", lambda fig, path: labels.update(
      {path: [l.get_label() for ax in fig.axes for l in ax.get_lines()]}))
  for i, (variant, _) in enumerate(paper.FIG5B):
    rows = [r for s in (0, 1) for r in metrics_table.rows_from(
        "main", s, s * 32, {"fsl_train": {"loss": 1.0 + i - s}})]
    os.makedirs(paper.workdir(str(tmp_path), variant))
    metrics_table.atomic_write_text(metrics_table.path(paper.workdir(
        str(tmp_path), variant)), "".join(json.dumps(r) + "\n" for r in rows))
  path = paper.draw("5b", str(tmp_path))
  assert [l for l in labels[path] if not l.startswith("_")] == [
      label for _, label in paper.FIG5B]
  with pytest.raises(UserError, match="^--workdir: no metrics in"):
    paper.draw("8", str(tmp_path / "nowhere"))


def test_fig15_colours_each_member_by_its_match_strength(tmp_path, monkeypatch):
  """Fig. 15 draws every member of the strength population in both panels,
  in the colour of its own s (the colour bar's 2s - 1)."""
  from icl_transience.proj.transience.induction_heads import paper  # pylint: disable=g-import-not-at-top
  from icl_transience.analysis import figures  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  c = induction_heads.get_config("fig15")
  run = paper.workdir(str(tmp_path), "fig15")
  os.makedirs(run)
  loop.save_config(c, run)
  members = config_lib.members(c)
  rows = [r for i, m in enumerate(members) for s in (0, 1) for r in metrics_table.rows_from(
      m.name, s, s * 32, {"fsl_train": {"loss": 1.0 + i}, "fsl_val_rl": {"loss": 2.0 + i}})]
  metrics_table.atomic_write_text(metrics_table.path(run),
                                  "".join(json.dumps(r) + "\n" for r in rows))
  drawn = {}
  monkeypatch.setattr(figures, "save", lambda fig, path: drawn.update(fig=fig))
  paper.draw("15", str(tmp_path))
  strength = {m.name: dict(m.extra)["match_strength"] for m in members}
  assert len(set(strength.values())) == 16
  for ax, first in zip(drawn["fig"].axes[:2], (1.0, 2.0)):
    lines = {l.get_label(): l for l in ax.get_lines() if l.get_label() in strength}
    assert set(lines) == set(strength)
    for i, m in enumerate(members):
      np.testing.assert_allclose(lines[m.name].get_color(),
                                 plt.get_cmap("coolwarm")(strength[m.name]))
      assert lines[m.name].get_ydata()[0] == first + i  # its own curve


def test_a_grafted_layer1_is_frozen_and_the_rest_trains(tmp_path):
  trained = str(tmp_path / "trained")
  loop.train(tiny(), trained)
  c = tiny(**{"graft.mode": "in", "graft.workdir": trained})
  config_lib.validate(c)
  loop.train(c, str(tmp_path / "grafted"))
  start = final_state(c, str(tmp_path / "grafted"), step=0)["params"]
  end = final_state(c, str(tmp_path / "grafted"))["params"]
  for name in ("input_proj", "label_embed", "block_0"):  # not used: no gradient
    for x, y in zip(jax.tree.leaves(start[name]), jax.tree.leaves(end[name])):
      np.testing.assert_array_equal(x, y)
  assert not np.allclose(start["block_1"]["attn"]["qkv"]["kernel"],
                         end["block_1"]["attn"]["qkv"]["kernel"])
  for fields, message in (({"graft.layer": 1}, "^graft.mode: this task grafts"),
                          ({"ih.perfect_layer1": True}, "^graft.mode: a grafted layer 1")):
    with pytest.raises(UserError, match=message):
      config_lib.validate(tiny(**{"graft.mode": "in", "graft.workdir": trained,
                                  **fields}))
