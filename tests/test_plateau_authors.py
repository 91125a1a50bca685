"""Fu et al.'s plateau setup as their code runs it: frozen items, map pool,
fixed set with epochs, the read-in model, pass-through probe, extra losses."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO, changed_fields  # pylint: disable=unused-import  (REPO: configs/ on the path)
import plateau as plateau_configs  # pylint: disable=wrong-import-order  (configs/)

from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.errors import UserError
from icl_transience.nn import transformer
from icl_transience.proj.plateaus import authors_task
from icl_transience.proj.plateaus import embeddings
from icl_transience.proj.plateaus import pool_sequences as pool
from icl_transience.proj.plateaus import report as plateau_report
from icl_transience.proj.plateaus import shapes
from icl_transience.train import loop

quick_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})
SPEC = pool.PoolSpec(factor_sizes=(4, 4, 10), hidden_factors=(0, 1, 2),
                     context_len=8, n_maps=5)


def smoke_config(**overrides):
  return config_lib.override(plateau_configs.get_config("authors,smoke"), overrides)


@pytest.fixture(scope="module")
def drawn():
  """A split, a pool of 5 maps and 200 training sequences of SPEC."""
  train_rows, test_rows = pool.image_split(jax.random.PRNGKey(0), SPEC)
  maps = pool.map_pool(jax.random.PRNGKey(1), SPEC)
  seqs = pool.sample_sequences(jax.random.PRNGKey(2), train_rows, 200, SPEC)
  return (np.asarray(train_rows), np.asarray(test_rows), maps, seqs,
          np.asarray(pool.labels(seqs, maps, SPEC)))


def test_sequences_respect_the_split_and_never_repeat_an_image(drawn):
  train_rows, test_rows, _, seqs, _ = drawn
  assert (len(train_rows), len(test_rows)) == (128, 32)      # 80 / 20 of 160
  assert not set(train_rows) & set(test_rows)
  assert set(train_rows) | set(test_rows) == set(range(160))
  rows = np.asarray(seqs.rows)
  assert rows.shape == (200, 8) and set(rows.ravel()) <= set(train_rows)
  assert all(len(set(r)) == 8 for r in rows)
  test = pool.sample_sequences(jax.random.PRNGKey(3), jnp.asarray(test_rows),
                               50, SPEC)
  assert set(np.asarray(test.rows).ravel()) <= set(test_rows)
  assert all(len(set(r)) == 8 for r in np.asarray(test.rows))


def test_labels_are_a_permutation_of_the_hidden_factors_ids(drawn):
  _, _, maps, seqs, labels = drawn
  maps = np.asarray(maps)
  for m in range(5):
    for f, n in enumerate(SPEC.factor_sizes):
      assert sorted(maps[m, f, :n]) == list(range(n))
  factors = np.stack(np.unravel_index(np.asarray(seqs.rows), SPEC.factor_sizes), -1)
  for i in range(200):
    e, k = int(seqs.hidden[i]), int(seqs.map_id[i])
    values = factors[i, :, e]
    np.testing.assert_array_equal(labels[i], maps[k, e, values])
    assert set(labels[i]) <= set(range(SPEC.factor_sizes[e]))
  # pool sampling: every map and every hidden factor is used
  assert set(np.asarray(seqs.map_id)) == set(range(5))
  assert set(np.asarray(seqs.hidden)) == {0, 1, 2}
  # a sequence's labels are that map's: the same value, the same label
  for i in range(200):
    e = int(seqs.hidden[i])
    pairs = set(zip(factors[i, :, e], labels[i]))
    assert len({v for v, _ in pairs}) == len(pairs)


def test_one_map_is_d_fix_and_the_fixed_share_is_map_zero(drawn):
  train_rows, _, _, seqs, _ = drawn
  spec = pool.PoolSpec(factor_sizes=SPEC.factor_sizes, context_len=8, n_maps=1,
                       hidden_factors=(0, 1, 2))
  maps = pool.map_pool(jax.random.PRNGKey(1), spec)
  fixed = pool.sample_sequences(jax.random.PRNGKey(4), jnp.asarray(train_rows),
                                100, spec)
  assert set(np.asarray(fixed.map_id)) == {0}
  factors = np.stack(np.unravel_index(np.asarray(fixed.rows), spec.factor_sizes), -1)
  labels = np.asarray(pool.labels(fixed, maps, spec))
  seen = {}
  for i in range(100):   # the same (factor, value) gets the same label everywhere
    e = int(fixed.hidden[i])
    for v, y in zip(factors[i, :, e], labels[i]):
      assert seen.setdefault((e, v), y) == y
  ones = seqs._replace(map_id=jnp.ones_like(seqs.map_id))
  after = np.asarray(pool.with_fixed_map(jax.random.PRNGKey(5), ones, 0.25).map_id)
  assert int((after == 0).sum()) == 50 and set(after) == {0, 1}   # a quarter of 200


def test_each_epoch_reads_the_fixed_set_once_in_a_new_order():
  n, batch = 10, 4                  # batches straddle epochs
  orders = pool.epoch_orders(jax.random.PRNGKey(0), 5, n)
  read = np.concatenate([np.asarray(pool.batch_index(orders, s, batch))
                         for s in range(10)])        # 40 = 4 epochs
  epochs = read.reshape(4, n)
  for e in epochs:
    assert sorted(e) == list(range(n))
  assert len({tuple(e) for e in epochs}) == 4
  np.testing.assert_array_equal(epochs, np.asarray(orders)[:4])


def test_standin_has_the_authors_shape_and_additive_factors():
  spec = embeddings.StandInSpec(entangle=0.0, noise=0.0)
  rows = jnp.arange(480_000, step=4001)
  assert embeddings.standin(rows, spec).shape == (rows.size, 768)
  sizes = spec.factor_sizes
  a, b = np.array([1, 2, 3, 4, 1, 5]), np.array([7, 8, 9, 0, 2, 11])
  c, d = a.copy(), b.copy()
  c[3], d[3] = b[3], a[3]           # swap one factor between two images
  x = embeddings.standin(jnp.asarray([np.ravel_multi_index(v, sizes)
                                      for v in (a, b, c, d)]), spec)
  np.testing.assert_allclose(x[0] + x[1], x[2] + x[3], atol=1e-4)
  tangled = embeddings.standin(jnp.asarray([np.ravel_multi_index(v, sizes)
                                            for v in (a, b, c, d)]),
                               embeddings.StandInSpec(entangle=1.0, noise=0.0))
  assert float(jnp.abs(tangled[0] + tangled[1] - tangled[2] - tangled[3]).max()) > 0.5
  noisy = embeddings.StandInSpec(noise=0.5)
  again = embeddings.standin(jnp.asarray([5, 5, 6]), noisy)
  np.testing.assert_array_equal(again[0], again[1])      # frozen per image
  assert float(jnp.abs(again[0] - again[2]).max()) > 0.1


SIZES = (2, 3)


def test_pixel_items_are_the_renderers_images():
  c = smoke_config(**{"plateau.item_source": "pixels", "plateau.image_size": 8,
                      "plateau.factor_sizes": (2, 2, 2, 2, 4, 3),
                      "plateau.hidden_factors": (0, 4)})
  config_lib.validate(c)
  task = authors_task.AuthorsPlateauTask(c)
  consts = task.constants(None)
  rows = jnp.asarray([[0, 5], [191, 7]])
  items = task.items(rows, consts)
  assert items.shape == (2, 2, 192) == rows.shape + (task.item_dim(),)
  factors = embeddings.row_factors(rows[1, 0], (2, 2, 2, 2, 4, 3))
  np.testing.assert_array_equal(items[1, 0], shapes.render(
      factors, task.shapes_spec).reshape(-1))


@pytest.mark.parametrize("content, match", [
    (None, r"no file"),
    ("text", r"not a readable npz"),
    ("bare", r"bare array"),
    ({"other": np.zeros((6, 4), np.float32)}, r"no key 'repre' \(keys: other\)"),
    ({"repre": np.zeros((5, 4), np.float32)}, r"shape \(5, 4\); need \(6, dim\)"),
    ({"repre": np.zeros((6, 4), np.int32)}, r"dtype int32; need floats"),
    ({"repre": np.array([[0.0] * 4] * 3 + [[np.nan] * 4] + [[0.0] * 4] * 2,
                        np.float32)}, r"NaN or Inf, first in row 3"),
    ({"repre": np.array([object()] * 6, dtype=object)}, r"not a numeric array"),
])
def test_embedding_file_errors_are_one_line(tmp_path, content, match):
  path = tmp_path / "repre.npz"
  if content == "text":
    path.write_text("not an archive")
  elif content == "bare":
    path = tmp_path / "repre.npy"
    np.save(path, np.zeros((6, 4), np.float32))
  elif content is not None:
    with open(path, "wb") as f:
      np.savez(f, **content)
  with pytest.raises(UserError, match=r"^plateau.embeddings: .*" + match) as e:
    embeddings.load_file(str(path), SIZES)
  assert "\n" not in str(e.value)


def test_an_embedding_file_in_the_authors_layout_is_what_training_reads(tmp_path):
  table = np.random.default_rng(0).standard_normal((160, 20)).astype(np.float16)
  np.savez(tmp_path / "repre_vae.npz", repre=table)
  c = smoke_config(**{"plateau.embeddings": str(tmp_path / "repre_vae.npz")})
  config_lib.validate(c)
  task = authors_task.AuthorsPlateauTask(c)        # as the trainer builds it
  consts = task.constants(None)
  batch = task.sample_batch(jax.random.PRNGKey(0), consts, {
      "weights_warmup": 0.0, "fixed_fraction": 0.0}, 3)
  assert batch["items"].shape[-1] == 20 == task.item_dim()
  want = table.astype(np.float32)[np.ravel_multi_index(
      tuple(np.moveaxis(np.asarray(batch["factors"]), -1, 0)), (4, 4, 10))]
  np.testing.assert_array_equal(batch["items"], want)


@pytest.fixture(scope="module")
def smoke():
  task = authors_task.AuthorsPlateauTask(smoke_config())
  params = quick_jit(task.init_weights)(jax.random.PRNGKey(0))["params"]
  consts = task.constants(None)
  batch = quick_jit(task.sample_batch)(jax.random.PRNGKey(1), consts, {
      "weights_warmup": 0.0, "fixed_fraction": 0.0}, 0)
  return task, params, consts, batch


def test_pass_through_equals_attention_returning_its_normalised_input(smoke):
  task, params, _, batch = smoke
  k = 1
  def identity_attention(next_fun, args, kwargs, context):
    if isinstance(context.module, transformer.Attention):
      return args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(identity_attention):
    want = task.model.apply({"params": params}, batch["items"], batch["labels"])
  got = task.model.apply({"params": params}, batch["items"], batch["labels"],
                         attention="pass", stop_after=k)
  np.testing.assert_allclose(got["streams"][k + 1], want["streams"][k + 1],
                             rtol=1e-5, atol=1e-5)
  normal = task.model.apply({"params": params}, batch["items"], batch["labels"])
  assert float(jnp.abs(normal["streams"][k + 1] - want["streams"][k + 1]).max()) > 1e-3
  # a later item token then depends only on its own item and position
  j = 5
  other = batch["items"].at[:, :j].set(0.0).at[:, j + 1:].set(0.0)
  alone = task.model.apply({"params": params}, other, batch["labels"] * 0,
                           attention="pass", stop_after=k)
  np.testing.assert_allclose(alone["streams"][k + 1][:, 2 * j],
                             got["streams"][k + 1][:, 2 * j], rtol=1e-5, atol=1e-5)
  attending = task.model.apply({"params": params}, other, batch["labels"] * 0,
                               stop_after=k)
  assert float(jnp.abs(attending["streams"][k + 1][:, 2 * j]
                       - normal["streams"][k + 1][:, 2 * j]).max()) > 1e-3


def log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max(-1, keepdims=True) - np.log(
      np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))


@pytest.mark.parametrize("hyper", [
    {"context_loss": 0.3, "weights_loss": 0.0},
    {"context_loss": 0.0, "weights_loss": 0.7},
    {"context_loss": 0.0, "weights_loss": 0.0}])
def test_extra_losses_match_a_hand_computation(smoke, hyper):
  """The authors' code reads both extra losses off the one read-out: labels
  over dims ..E (every dim when no extra loss is on), the hidden factor
  over dims E.., factor f over dims E + 10 f .. E + 10 (f + 1)."""
  task, params, _, batch = smoke
  total, (metrics, _) = task.loss({"params": params}, batch, hyper, 0)
  logits = np.asarray(task.model.apply({"params": params}, batch["items"],
                                       batch["labels"])["logits"], np.float64)
  assert logits.shape[-1] == 64 and task.extra == 16     # smoke sizes
  labels, hidden = np.asarray(batch["labels"]), np.asarray(batch["hidden"])
  factors = np.asarray(batch["factors"])
  n, length = labels.shape
  extra_on = hyper["context_loss"] > 0 or hyper["weights_loss"] > 0
  lp = log_softmax(logits[..., :16] if extra_on else logits)
  label = -np.mean([lp[b, i, labels[b, i]] for b in range(n) for i in range(length)])
  lc = log_softmax(logits[..., 16:])
  context = -np.mean([lc[b, i, hidden[b]] for b in range(n) for i in range(length)])
  factor = -np.mean([log_softmax(logits[b, i, 16 + 10 * f:26 + 10 * f])[factors[b, i, f]]
                     for b in range(n) for i in range(length) for f in range(3)])
  assert math.isclose(metrics["label_loss"], label, rel_tol=1e-5)
  assert math.isclose(metrics["context_loss"], context, rel_tol=1e-5)
  assert math.isclose(metrics["factor_loss"], factor, rel_tol=1e-5)
  want = label + hyper["context_loss"] * context + hyper["weights_loss"] * factor
  assert math.isclose(float(total), want, rel_tol=1e-5)


@pytest.mark.parametrize("field, value, match", [
    ("plateau.item_source", "voxels", r"plateau.item_source: unknown 'voxels'"),
    ("plateau.context_len", 9, r"plateau.context_len: must be in \[1, 8\] for 32"),
    ("plateau.n_maps", 0, r"plateau.n_maps: must be >= 1"),
    ("plateau.standin_entangle", 1.5, r"plateau.standin_entangle: must be in"),
    ("plateau.weights_probe_block", 2, r"plateau.weights_probe_block: must be"),
    ("plateau.weights_probe_variants", ("pass", "x"),
     r"plateau.weights_probe_variants: choose from"),
    ("plateau.n_classes", 40, r"plateau.extra_dims_start: 16: the labels need"),
    ("plateau.extra_dims_start", 8, r"plateau.extra_dims_start: 8: the labels"),
    ("population", "context_loss=0.1,weights_loss=0.1", r"hyper: context_loss and"),
    ("plateau.weights_probe_sequences", 65, r"exceeds plateau.train_sequences"),
    ("plateau.embeddings", "/nonexistent.npz", r"plateau.embeddings: no file"),
])
def test_bad_fields_are_user_errors(field, value, match):
  with pytest.raises(UserError, match=match):
    config_lib.validate(smoke_config(**{field: value}))


@pytest.mark.parametrize("variant", sorted(plateau_configs.AUTHORS_VARIANTS))
def test_every_authors_variant_validates(variant):
  c = plateau_configs.get_config(",".join(["authors", variant]).rstrip(","))
  config_lib.validate(c)
  if variant == "":
    assert (c.model.depth, c.model.d_model, c.model.n_heads) == (12, 128, 4)
    assert c.total_sequences // c.batch_size == 46_920
    assert (c.optim.lr, c.optim.warmup_steps, c.optim.clip_norm) == (1e-4, 0, 0)
    p = c.plateau
    assert (p.context_len, p.n_maps, p.train_sequences, p.test_sequences) == (
        40, 20_000, 100_000, 40_000)
  main = plateau_configs.get_config("authors")
  expected = {"": {}, "fresh": {"plateau.train_sequences": 0},
              "dfix": {"plateau.n_maps": 1}}
  if variant in expected:
    assert changed_fields(c, main) == expected[variant]
  elif variant == "strategies":
    assert changed_fields(c, main).keys() == {"population"}
    assert len(config_lib.members(c)) == 5
  else:  # cpu, smoke: smaller and shorter
    assert c.model.d_model < main.model.d_model and c.total_sequences < main.total_sequences


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Two members (the authors' extra losses) of the smoke setup."""
  c = smoke_config(population="context_loss=0.5; weights_loss=0.5,"
                   "fixed_fraction=0.25", population_map="vmap",
                   **{"ckpt.every": 0})
  workdir = str(tmp_path_factory.mktemp("authors") / "run")
  loop.train(c, workdir)
  return workdir, metrics_table.read(workdir)


def test_a_tiny_run_logs_per_position_accuracy_and_the_probes(run):
  workdir, rows = run
  members = sorted({r["member"] for r in rows})
  assert len(members) == 2
  for member in members:
    mine = {(r["evaluator"], r["metric"]) for r in rows if r["member"] == member}
    assert {("icl", f"acc_pos{i}") for i in range(8)} <= mine
    assert {("iwl", "acc"), ("weights_probe", "pass"), ("weights_probe", "a"),
            ("weights_probe", "b")} <= mine
  train = {(r["member"], r["metric"]): r["value"] for r in rows
           if r["evaluator"] == "train_batch" and r["step"] == 40}
  # D_fix is map 0 of 6: a share 1/6 of a batch, and 0.25 + 0.75 / 6 with
  # fixed_fraction 0.25 (measured 0.181 and 0.406 over the call's 80 sequences)
  assert abs(train["context_loss0.5", "fixed_share"] - 1 / 6) < 0.1
  assert abs(train["weights_loss0.5_fixed_fraction0.25", "fixed_share"]
             - (0.25 + 0.75 / 6)) < 0.1
  summary = plateau_report.report(workdir, workdir)
  assert [m["member"] for m in summary["members"]] == [
      "context_loss0.5", "weights_loss0.5_fixed_fraction0.25"]
  passes = {r["member"]: r["value"] for r in rows if r["evaluator"] == "weights_probe"
            and r["metric"] == "pass" and r["step"] == max(x["step"] for x in rows)}
  assert [m["final_weights_probe_pass"] for m in summary["members"]] == [
      passes[m["member"]] for m in summary["members"]]
