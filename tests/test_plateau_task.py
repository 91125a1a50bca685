"""The learning-plateau task of Fu et al.: model, batches, probes, report, training."""
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO, changed_fields  # pylint: disable=unused-import  (REPO: configs/ on the path)
import plateau as plateau_configs  # pylint: disable=wrong-import-order  (configs/)

from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.proj.plateaus import report as plateau_report
from icl_transience.errors import UserError
from icl_transience.proj.plateaus import image_sequence
from icl_transience.proj.plateaus import task as task_lib
from icl_transience.train import loop

quick_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})
POPULATION = "fixed_fraction=0.25; weights_warmup=20,weights_loss=0.5"
MEMBERS = ("fixed_fraction0.25", "weights_warmup20_weights_loss0.5")
EVALUATORS = {"icl", "iwl", "weights_probe", "context_probe", "train_batch"}


def smoke_config(**overrides):
  return config_lib.override(plateau_configs.get_config("smoke"), overrides)


@pytest.fixture(scope="module")
def smoke():
  """The smoke task (one-hots of three 4-valued factors, d 64, two blocks,
  L = 8) and a forward
  pass returning the logits and every residual stream, with attention and
  with every attention output zeroed."""
  task = task_lib.PlateauTask(smoke_config())
  params = quick_jit(task.init_weights)(jax.random.PRNGKey(0))["params"]

  @quick_jit
  def streams(inputs, labels):
    on, off = (task.model.apply({"params": params}, inputs, labels,
                                attention=attention) for attention in (True, False))
    return on["logits"], jnp.stack(on["streams"]), jnp.stack(off["streams"])

  return task, streams


def random_items(seed, n=2, length=8):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((n, length, 12)), jnp.float32),
          jnp.asarray(rng.integers(0, 4, (n, length)), jnp.int32))


def test_shapes_causality_and_factor_heads(smoke):
  task, streams = smoke
  inputs, labels = random_items(0)
  logits, stream, _ = streams(inputs, labels)
  assert logits.shape == (2, 8, 4) and stream.shape == (3, 2, 16, 64)
  out = jax.eval_shape(task.model.init_with_output, jax.random.PRNGKey(0),
                       inputs, labels)[0]
  assert [h.shape for h in out["factor_logits"]] == [(2, 8, 4)] * 3
  # changing item 5 (its image and label) leaves every earlier position alone
  other_inputs, _ = random_items(1)
  changed_inputs = inputs.at[:, 5].set(other_inputs[:, 5])
  changed_labels = labels.at[:, 5].set((labels[:, 5] + 1) % 4)
  logits2, stream2, _ = streams(changed_inputs, changed_labels)
  np.testing.assert_allclose(stream2[:, :, :10], stream[:, :, :10], atol=1e-5)
  np.testing.assert_allclose(logits2[:, :5], logits[:, :5], atol=1e-5)
  assert np.abs(logits2[:, 5:] - logits[:, 5:]).max() > 1e-3


def test_attention_off_makes_image_tokens_context_free(smoke):
  _, streams = smoke
  inputs, labels = random_items(2)
  other_inputs, other_labels = random_items(3)
  keep = 4   # image 4 stays; every other image and every label changes
  mixed = other_inputs.at[:, keep].set(inputs[:, keep])
  _, on, off = streams(inputs, labels)
  _, on_mixed, off_mixed = streams(mixed, other_labels)
  np.testing.assert_allclose(off_mixed[:, :, 2 * keep], off[:, :, 2 * keep],
                             atol=1e-5)
  assert np.abs(on_mixed[1:, :, 2 * keep] - on[1:, :, 2 * keep]).max() > 1e-3


def test_an_image_alone_is_the_first_position_of_any_sequence(smoke):
  _, streams = smoke
  inputs, labels = random_items(4)
  _, on, off = streams(inputs, labels)
  _, on_alone, off_alone = streams(inputs[:, :1], jnp.zeros((2, 0), jnp.int32))
  assert on_alone.shape == off_alone.shape == (3, 2, 1, 64)
  np.testing.assert_allclose(on_alone[:, :, 0], on[:, :, 0], atol=1e-5)
  np.testing.assert_allclose(off_alone[:, :, 0], off[:, :, 0], atol=1e-5)
  assert np.abs(on_alone[1:] - off_alone[1:]).max() > 1e-3   # (a) differs from (b)


@quick_jit
def conv_pair(x, kernel, bias):
  """PatchConv and lax's convolution (zero padding 1), strides 1 and 2."""
  out = []
  for stride in (1, 2):
    conv = image_sequence.PatchConv(kernel.shape[-1], stride)
    expected = jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    out.append((conv.apply({"params": {"kernel": kernel, "bias": bias}}, x),
                expected))
  return out


def test_patch_conv_is_a_padded_convolution():
  rng = np.random.default_rng(0)
  x, kernel = rng.standard_normal((2, 8, 8, 3)), rng.standard_normal((3, 3, 3, 5))
  (same, same_ref), (half, half_ref) = conv_pair(
      jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32),
      jnp.arange(5.0))
  assert same.shape == (2, 8, 8, 5) and half.shape == (2, 4, 4, 5)
  np.testing.assert_allclose(same, same_ref, atol=1e-4)
  np.testing.assert_allclose(half, half_ref, atol=1e-4)


@pytest.mark.parametrize("field, value, match", [
    ("plateau.input", "audio", "plateau.input"),
    ("plateau.label_vocab", 3, "plateau.label_vocab"),
    ("plateau.hidden_factors", (0, 6), "plateau.hidden_factors"),
    ("plateau.context_probe_position", 8, "plateau.context_probe_position"),
    ("plateau.probe_layers", (3,), "plateau.probe_layers"),
    ("model.max_len", 12, "model.max_len"),
    ("population", "fixed_fraction=2", "hyper.fixed_fraction"),
    ("plateau.source", "shapes3d", "plateau.source"),
    ("plateau.context_probe_target", "task", "plateau.context_probe_target"),
    ("plateau.hidden_factors", (1,), "plateau.context_probe_target"),
])
def test_bad_fields_are_user_errors(field, value, match):
  with pytest.raises(UserError, match=match):
    config_lib.validate(smoke_config(**{field: value}))


@pytest.mark.parametrize("target", ["factor", "label"])
def test_context_probe_target_is_the_hidden_factor_or_the_label(
    smoke, monkeypatch, target):
  task = task_lib.PlateauTask(smoke_config(**{
      "plateau.context_probe_target": target}))
  params = quick_jit(task.init_weights)(jax.random.PRNGKey(0))
  record = quick_jit(task._sequence_set("context_probe"))(jax.random.PRNGKey(1))
  seen = {}

  def capture(train_x, train_y, test_x, test_y):
    seen["train"], seen["test"] = train_y, test_y
    return 0.0

  monkeypatch.setattr(task, "_context_probe", capture)
  task._context_probe_eval(params, None, record)
  p, seqs = task.p, record
  want = (seqs["hidden"] if target == "factor"
          else seqs["labels"][:, p.context_probe_position])
  np.testing.assert_array_equal(seen["test"], want[:p.icl_sequences])
  np.testing.assert_array_equal(
      seen["train"], want[p.icl_sequences:p.icl_sequences + p.context_probe_train])
  # the label target varies within one hidden factor: it needs the mapping
  assert target == "factor" or len(np.unique(seen["test"])) == p.label_vocab


def test_missing_shapes3d_names_how_to_provide_it(tmp_path):
  c = plateau_configs.get_config()
  c.plateau.source, c.plateau.shapes3d_dir = "shapes3d", str(tmp_path)
  with pytest.raises(UserError, match=r"plateau.shapes3d_dir: Shapes3D is not "
                     r"prepared in .*download_and_prepare") as error:
    task_lib.PlateauTask(c).validate(1)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("variant", sorted(plateau_configs.VARIANTS))
def test_every_variant_validates(variant):
  c = plateau_configs.get_config(variant)
  config_lib.validate(c)
  if variant == "":
    assert (c.model.depth, c.model.d_model, c.plateau.context_len) == (8, 256, 48)
    assert c.total_sequences // c.batch_size == 100_000
    assert (c.optim.lr, c.optim.warmup_steps, c.optim.clip_norm) == (1e-4, 1000, 1.0)
  if variant in ("strategies", "cpu", "cpu_onehot"):
    hypers = [m.hyper for m in config_lib.members(c)]
    assert len(hypers) == 4 and [h["weights_loss"] for h in hypers] == [0, 0, 0, 0.1]
  # what makes each variant that variant (Fu et al.), written out
  expected = {"": {}, "warmup": {"hyper.weights_warmup": 5000.0},
              "mixed": {"hyper.fixed_fraction": 0.25},
              "weights_loss": {"hyper.weights_loss": 0.1},
              "onehot": {"plateau.input": "onehot"}, "noisy": {"plateau.noise_std": 0.3},
              "words": {"plateau.input": "words", "plateau.factor_sizes": (8, 8, 8),
                        "plateau.hidden_factors": (0, 1, 2), "plateau.label_vocab": 8}}
  main = plateau_configs.get_config()
  if variant in expected:
    assert changed_fields(c, main) == expected[variant]
  elif variant == "strategies":
    assert changed_fields(c, main).keys() == {"population"}
  else:  # cpu, cpu_onehot, smoke: smaller and shorter, same task
    assert c.model.d_model < main.model.d_model and c.total_sequences < main.total_sequences
    assert variant != "cpu_onehot" or c.plateau.input == "onehot"


def sigmoid(steps, midpoint, chance, final=0.95, width=300.0):
  return chance + (final - chance) / (1 + np.exp(-(steps - midpoint) / width))


# the base member's context-probe rise: halfway from chance (1/2 for the
# hidden factor of two, 1/4 for a label of four) to the final 1.0
@pytest.mark.parametrize("variant, context_rise", [("cpu", 4250),
                                                   ("cpu_onehot", 4000)])
def test_report_reads_plateau_lengths_from_a_metrics_table(
    tmp_path, variant, context_rise):
  c = plateau_configs.get_config(variant)
  loop.save_config(c, str(tmp_path))
  steps = np.arange(0, 8001, 250)
  chance = 0.25                   # two hidden factors of 4 values
  rows = []
  for member, midpoint in (("base", 4100), ("fast", 2100)):
    curves = {("icl", "acc"): sigmoid(steps, midpoint, chance),
              ("weights_probe", "a"): sigmoid(steps, midpoint - 1000, 0.25, 0.9),
              ("weights_probe", "b"): sigmoid(steps, midpoint - 1000, 0.25, 0.9),
              ("context_probe", "acc"): sigmoid(steps, midpoint, 0.5, 1.0),
              ("iwl", "acc"): sigmoid(steps, 500, chance)}
    for (evaluator, metric), values in curves.items():
      rows += [dict(member=member, step=int(s), sequences=int(s) * 32,
                    evaluator=evaluator, metric=metric, value=float(v))
               for s, v in zip(steps, values)]
  metrics_table.atomic_write_text(metrics_table.path(str(tmp_path)), "".join(
      json.dumps(r) + "\n" for r in rows))
  summary = plateau_report.report(str(tmp_path), str(tmp_path))
  base, fast = summary["members"]
  assert summary["chance"] == 0.25
  assert base["context_probe_rise"] == context_rise
  # the midpoint of the rise, rounded up to the evaluation grid
  assert (base["plateau_length"], fast["plateau_length"]) == (4250, 2250)
  assert base["icl_above_half"] == 4000 and fast["plateau_vs_first"] == 2250 / 4250
  assert base["weights_probe_a_half"] == 3000 and base["weights_probe_a_rise"] == 3250
  assert base["near_chance_fraction"] == 3500 / 8000
  assert json.loads((tmp_path / "report.json").read_text()) == summary
  assert (tmp_path / "figures" / "plateau.png").stat().st_size > 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A smoke training run of two members whose strategy knobs differ."""
  c = smoke_config(population=POPULATION, **{"ckpt.every": 0})
  workdir = str(tmp_path_factory.mktemp("plateau") / "run")
  loop.train(c, workdir)
  return workdir, metrics_table.read(workdir)


def test_training_run_logs_every_evaluator_for_every_member(run):
  _, rows = run
  for member in MEMBERS:
    mine = [r for r in rows if r["member"] == member]
    assert {r["evaluator"] for r in mine} == EVALUATORS
    assert sorted({r["step"] for r in mine if r["evaluator"] == "icl"}) == [0, 20, 40]
    # one-hot inputs: the probes read every factor off the embedding exactly
    assert all(r["value"] == 1.0 for r in mine if r["evaluator"] == "weights_probe"
               and r["metric"] in ("a", "b", "a_L0", "b_L0", "a_factor0", "b_factor2"))
  train = {(r["member"], r["step"], r["metric"]): r["value"] for r in rows
           if r["evaluator"] == "train_batch"}
  # D_fix share per step from hyper and step: 2 of 8 rows, or all rows for
  # the 20 warm-up steps and none after
  for step, shares in ((20, (0.25, 1.0)), (40, (0.25, 0.0))):
    for member, share, weight in zip(MEMBERS, shares, (0.0, 0.5)):
      assert train[member, step, "fixed_share"] == share
      extra = train[member, step, "loss"] - train[member, step, "label_loss"]
      assert math.isclose(extra, weight * train[member, step, "factor_loss"],
                          rel_tol=1e-4, abs_tol=1e-6)


def test_report_of_the_training_run(run):
  workdir, _ = run
  summary = plateau_report.report(workdir, workdir)
  assert tuple(m["member"] for m in summary["members"]) == MEMBERS
  _, rows = run
  for m in summary["members"]:  # the last logged ICL accuracy of each member
    icl = sorted((r["step"], r["value"]) for r in rows if r["member"] == m["member"]
                 and (r["evaluator"], r["metric"]) == ("icl", "acc"))
    assert m["final_icl"] == icl[-1][1]
