"""GPT-2 regressor and the LDS recall task on a smoke training run.

Daniels et al. 2025 (model and parameter counts, loss, evaluators, the
report of a real run, needle positions). Configs and the report's checks on
made-up rows: test_lds_report.py.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.proj.lds_recall import lds_baseline
from icl_transience.proj.lds_recall import report as lds_report
from icl_transience.proj.lds_recall import lds
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall import lds_prompts
from icl_transience.proj.lds_recall import needle_positions
from icl_transience.proj.lds_recall import gpt2
from icl_transience.proj.lds_recall import task as lds_task
from icl_transience.train import loop

import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs"))
import lds_recall  # pylint: disable=g-import-not-at-top,wrong-import-position

# Daniels et al. 2025's sizes, counted exactly: blocks (12 d^2 + 13 d each),
# final LN, read-in, read-out and 250 used position rows | HF: 2048 rows +
# 50257 x d.
COUNTS = {"tiny": (212_117, 3_960_077), "small": (701_285, 5_698_565),
          "medium": (2_419_589, 9_082_629), "big": (10_737_221, 20_731_781),
          "40m": (24_068_453, 39_060_293)}
TABLE = {"tiny": ("212K", "4.0M"), "small": ("701K", "5.7M"),
         "medium": ("2.42M", "9.1M"), "big": ("10.7M", "20.7M"),
         "40m": ("24.1M", "39.1M")}
KEY = jax.random.PRNGKey(0)


def rounded(n: int) -> str:
  if n < 1e6:
    return f"{n / 1e3:.0f}K"
  return f"{n / 1e6:.2f}M" if n < 3e6 else f"{n / 1e6:.1f}M"


def abstract_params(model, length=250, token_dim=57):
  return jax.eval_shape(model.init, KEY, jnp.zeros((1, length, token_dim)))[
      "params"]


@pytest.mark.parametrize("size", list(gpt2.SIZES))
def test_parameter_counts_and_layout_match_the_paper(size):
  d, depth, _ = gpt2.SIZES[size]
  params = abstract_params(gpt2.preset(size))
  counts = gpt2.parameter_counts(params, used_positions=250)
  assert (counts["non_embedding"], counts["hf"]) == COUNTS[size]
  assert (rounded(counts["non_embedding"]), rounded(counts["hf"])) == TABLE[size]
  shapes = jax.tree.map(lambda w: w.shape, params)
  assert sorted(shapes) == sorted(["read_in", "positions", "ln_final",
                                   "read_out"] + [f"block_{i}" for i in
                                                  range(depth)])
  assert shapes["read_in"] == {"kernel": (57, d), "bias": (d,)}
  assert shapes["read_out"] == {"kernel": (d, 5), "bias": (5,)}
  assert shapes["positions"] == (2048, d)
  assert shapes[f"block_{depth - 1}"] == {
      "ln_attn": {"scale": (d,), "bias": (d,)},
      "attn": {"qkv": {"kernel": (d, 3 * d), "bias": (3 * d,)},
               "out": {"kernel": (d, d), "bias": (d,)}},
      "ln_mlp": {"scale": (d,), "bias": (d,)},
      "mlp_in": {"kernel": (d, 4 * d), "bias": (4 * d,)},
      "mlp_out": {"kernel": (4 * d, d), "bias": (d,)}}
  block = sum(np.prod(w) for w in jax.tree.leaves(
      shapes["block_0"], is_leaf=lambda x: isinstance(x, tuple)))
  assert block == 12 * d * d + 13 * d


def smoke_config(**overrides):
  return config_lib.override(lds_recall.get_config("smoke"), overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A smoke training run: (config, workdir, rows, task, {step: params})."""
  c = smoke_config()
  workdir = str(tmp_path_factory.mktemp("lds") / "run")
  loop.train(c, workdir)
  params = {step: jax.tree.map(lambda x: x[0], helpers.final_state(
      c, workdir, step)["params"]) for step in (0, 100)}
  return c, workdir, metrics_table.read(workdir), lds_task.LDSTask(c), params


def eval_keys(task, method="eval_keys"):
  """The task's evaluation keys, or its constants as the training loop
  places them (so the compiled generators are reused)."""
  if method == "eval_keys":
    return task.eval_keys()
  mesh = loop.make_mesh(0)
  with jax.set_mesh(mesh):
    return getattr(task, method)(NamedSharding(mesh, PartitionSpec()))


def test_initialisation_and_causal_predictions(run):
  _, _, _, task, params = run
  params = params[0]  # the smoke model: d 16, one block, 15-d tokens
  block = params["block_0"]
  for w, std in ((block["attn"]["qkv"]["kernel"], 0.02),
                 (block["mlp_in"]["kernel"], 0.02),
                 (params["positions"], 0.02),
                 (block["mlp_out"]["kernel"], 0.02 / np.sqrt(2)),
                 (block["attn"]["out"]["kernel"], 0.02 / np.sqrt(2))):
    assert abs(float(np.std(w)) / std - 1) < 0.1
  for name in ("qkv", "out"):
    np.testing.assert_array_equal(block["attn"][name]["bias"], 0)
  np.testing.assert_array_equal(block["mlp_out"]["bias"], 0)
  for name, fan_in in (("read_in", 15), ("read_out", 16)):
    for w in params[name].values():  # torch Linear: U(+-1/sqrt(fan_in))
      assert np.abs(w).max() <= 1 / np.sqrt(fan_in)
      assert np.abs(w).max() > 0.7 / np.sqrt(fan_in)
  tokens = jax.random.normal(KEY, (2, 12, 15))
  apply = jax.jit(task.model.apply)
  out = apply({"params": params}, tokens)
  assert out.shape == (2, 12, 5)
  changed = apply({"params": params}, tokens.at[:, 7].add(1.0))
  np.testing.assert_array_equal(out[:, :7], changed[:, :7])
  assert (np.abs(np.asarray(out - changed)[:, 7:]).sum(-1) > 1e-4).all()


def pretrain_traces(task):
  """Both pre-training error sets, as the evaluator reads them."""
  return task.pretrain_traces(eval_keys(task), eval_keys(task, "constants"))


def test_loss_is_the_masked_mean_of_summed_squares(run):
  _, _, _, task, params = run
  batch = pretrain_traces(task)["pretrain_train"]
  assert batch.inputs.shape == (8, 40, 15) and batch.mask.shape == (8, 40)

  @jax.jit
  def loss_and_predictions(weights, batch):
    return (task.loss(weights, batch, {}, 0),
            task.model.apply(weights, batch.inputs))

  weights = {"params": params[100]}
  (loss, (metrics, state)), predictions = loss_and_predictions(weights, batch)
  assert state is None
  errors = ((np.asarray(predictions) - np.asarray(batch.targets)) ** 2).sum(-1)
  mask = np.asarray(batch.mask)
  np.testing.assert_allclose(loss, errors[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["mse"], (errors * mask).mean(), rtol=1e-5)
  # Targets behind the mask (label / padding rows) never enter the loss.
  masked = batch._replace(targets=jnp.where(batch.mask[..., None],
                                            batch.targets, 7.0))
  np.testing.assert_allclose(loss_and_predictions(weights, masked)[0][0],
                             loss, rtol=1e-6)


def test_eval_sets_follow_the_eval_seed(run):
  _, _, _, task, _ = run
  first, traces = eval_keys(task), pretrain_traces(task)
  other_task = lds_task.LDSTask(smoke_config(eval_seed=9))
  other = eval_keys(other_task)
  assert not np.array_equal(traces["pretrain_test"].inputs,
                            pretrain_traces(other_task)["pretrain_test"].inputs)
  assert not np.array_equal(first["needle"], other["needle"])
  # pretrain_train shows the training trajectories (the smoke config's
  # pretrain_systems is the whole pool), pretrain_test none of them.
  trajectories = np.asarray(eval_keys(task, "constants").trajectories)
  test, train = (np.asarray(traces[n].targets)[np.asarray(traces[n].mask)]
                 for n in ("pretrain_test", "pretrain_train"))
  seen = lambda x, pool: (np.abs(pool - x).max(-1) < 1e-5).any()
  assert all(seen(x, trajectories.reshape(-1, 5)) for x in train)
  assert not any(seen(x, trajectories.reshape(-1, 5)) for x in test)


def test_training_run_logs_every_evaluator(run):
  c, _, rows, task, params = run
  final = {(r["evaluator"], r["metric"]): r["value"] for r in rows
           if r["step"] == 100}
  needle = [f"after_{kind}_{k}_{q}" for kind in ("final", "initial")
            for k in c.lds[f"{kind}_steps"] for q in lds_task.QUARTILES]
  expected = ([("needle_h2", m) for m in needle] +
              [(e, m) for e in ("pretrain_test", "pretrain_train", "train_batch")
               for m in ("mse", "loss")])
  assert set(expected) <= set(final)
  test_error = dict(lds_report.ood_report.points(rows, "main", "pretrain_test", "mse"))
  assert sorted(test_error) == [0, 400, 800]
  assert test_error[800] < 0.8 * test_error[0]
  # recomputed from the step-100 parameters: the needle quartiles over
  # examples of per-trial medians, and both pre-training errors
  predict = jax.jit(lambda x: task.model.apply({"params": params[100]}, x))
  sets = eval_keys(task)
  stats = lds_prompts.needle_statistics(
      predict, sets["needle"], lds_task.needle_spec(c, 2, "normal", task.spec),
      c.lds.needle_config)
  for kind, medians in (("final", stats.after_final),
                        ("initial", stats.after_initial)):
    for k in c.lds[f"{kind}_steps"]:
      quartiles = np.percentile(medians[:, k - 1], [25, 50, 75])
      for q, value in zip(lds_task.QUARTILES, quartiles):
        np.testing.assert_allclose(final[("needle_h2", f"after_{kind}_{k}_{q}")],
                                   value, rtol=1e-5, atol=1e-7)
  # memorisation: needles on the training systems and their own
  # trajectories, from time k on, one trial per example
  pool = eval_keys(task, "constants")
  for late in c.lds.train_needle_late_starts:  # smoke: (2,)
    spec = lds_task.train_needle_spec(c, 2, late, task.spec)
    stats = lds_prompts.needle_statistics(predict, sets["needle"], spec,
                                          c.lds.needle_config, pool=pool)
    median = np.percentile(stats.after_final[:, 0], 50)
    np.testing.assert_allclose(
        final[(f"train_needle_h2_late{late}", "after_final_1_median")], median,
        rtol=1e-5, atol=1e-7)
    tokens = np.asarray(lds_prompts.needle_prompts(sets["needle"], spec, 5, 0, pool))
    assert tokens.shape[0] == 1  # example 5: training systems 5, 6 (needle 5)
    np.testing.assert_allclose(tokens[0, 2:12, -5:],
                               np.asarray(pool.trajectories)[5, late:late + 10], atol=1e-5)
    np.testing.assert_allclose(tokens[0, 14:24, -5:],
                               np.asarray(pool.trajectories)[6, late:late + 10], atol=1e-5)
  traces = pretrain_traces(task)
  for name in ("pretrain_test", "pretrain_train"):
    batch = jax.tree.map(np.asarray, traces[name])
    errors = ((np.asarray(predict(batch.inputs)) - batch.targets) ** 2).sum(-1)
    np.testing.assert_allclose(final[(name, "mse")], (errors * batch.mask).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(final[(name, "loss")], errors[batch.mask].mean(),
                               rtol=1e-5)


def test_report_of_the_training_run(run):
  c, workdir, rows, _, _ = run
  summary = lds_report.report(workdir, workdir)
  (member,) = summary["members"]
  assert member["member"] == "main"
  value = lambda step, evaluator, metric: next(
      r["value"] for r in rows if (r["step"], r["evaluator"], r["metric"]) ==
      (step, evaluator, metric))
  assert member["final"] == {f"after_final_{k}": value(100, "needle_h2",
                                                       f"after_final_{k}_median")
                             for k in c.lds.final_steps}
  test = {s: value(s, "pretrain_test", "mse") for s in (0, 50, 100)}
  best = min(test, key=test.get)
  assert member["pretrain"] == {
      "test_final": test[100], "test_min": test[best], "test_min_at": best * 8,
      "train_final": value(100, "pretrain_train", "mse")}
  # the baseline line is the pseudo-inverse on this run's own test traces,
  # which it predicts better than the untrained model does
  task = lds_task.LDSTask(c)
  traces = pretrain_traces(task)["pretrain_test"]
  predictions = lds_baseline.pseudo_inverse_predict(traces.inputs, task.spec)
  pinv = float(lds.position_errors(predictions, traces).mean())
  assert summary["pseudo_inverse_pretrain_mse"] == pytest.approx(pinv, rel=1e-5)
  assert 0 < pinv < test[0]
  # each needle curve's dotted line: the baseline on the evaluator's own
  # prompts (median over examples of the trial medians)
  stats = lds_prompts.needle_statistics(
      lambda x: lds_baseline.pseudo_inverse_predict(x, task.spec),
      task.eval_keys()["needle"], lds_task.needle_spec(c, 2, "normal", task.spec),
      c.lds.needle_config)
  needle = summary["pseudo_inverse_needle"]
  assert sorted(needle) == sorted([f"after_final_{k}" for k in c.lds.final_steps] +
                                  [f"after_initial_{k}" for k in c.lds.initial_steps])
  for k in c.lds.initial_steps:
    assert needle[f"after_initial_{k}"] == pytest.approx(
        float(np.median(stats.after_initial[:, k - 1])), rel=1e-5)
  # the least-squares continuation improves as the segment goes on
  assert needle["after_initial_6"] < needle["after_initial_2"]
  # memorisation: the last medians of the training-system needles beside
  # the test-system ones, and their figure
  assert member["memorisation"] == {
      name: {f"after_final_{k}": value(100, name, f"after_final_{k}_median")
             for k in (1, 2)}
      for name in ("train_needle_h2_late2", "needle_h2")}
  assert member["figures"][-1].endswith("lds_memorisation_main.png")
  saved = json.loads(open(os.path.join(workdir, "report.json")).read())
  assert saved == json.loads(json.dumps(summary))
  assert all(os.path.getsize(p) > 10_000 for p in member["figures"])


def test_needle_positions_and_the_extended_control(run):
  """Daniels et al. 2025's needle-position figure: every rotation at one
  checkpoint (position = segments between the needle and the query) and
  the label-free "final segment extended" control at -2."""
  c, workdir, rows, task, params = run
  result = needle_positions.run(workdir, -1, "", 2, (1, 2), 0, 0, False)
  assert result["sequences"] == 800 and sorted(result["positions"]) == [-2, 0, 1]
  logged = {(r["metric"]): r["value"] for r in rows
            if r["step"] == 100 and r["evaluator"] == "needle_h2"}
  for k in (1, 2):  # position 1 = configuration 0, as the evaluator reads it
    np.testing.assert_allclose(
        result["positions"][1][str(k)],
        [logged[f"after_final_{k}_{q}"] for q in lds_task.QUARTILES], rtol=1e-5)
  predict = jax.jit(lambda x: task.model.apply({"params": params[100]}, x))
  key, spec = eval_keys(task)["needle"], lds_task.needle_spec(c, 2)
  stats = lds_prompts.needle_statistics(predict, key, spec, 1)
  np.testing.assert_allclose(result["positions"][0]["2"][1],
                             np.median(stats.after_final[:, 1]), rtol=1e-5)
  # the control: segment of the needle, then system 1 from x_0 without a
  # break to the prompt's end; observation 10 + k sits 2 rows before the
  # normal prompt's k-th query observation, at the same trajectory time
  normal = np.asarray(lds_prompts.needle_prompts(key, spec, 0))
  extended = np.asarray(lds_prompts.extended_final_prompts(key, spec, 0))
  assert extended.shape == normal.shape
  np.testing.assert_array_equal(extended[:, :13], normal[:, :13])
  np.testing.assert_array_equal(extended[:, 13], normal[:, 13])  # system 1's open label
  states = extended[:, 14:, -5:]
  assert states.shape[1] == 23 and (extended[:, 14:, 9] == 1).all()  # no close
  u = np.asarray(lds_prompts.prompt_systems(key, spec, 0).matrices[1])
  np.testing.assert_allclose(states[:, 1:], states[:, :-1] @ u.T, atol=1e-5)
  np.testing.assert_allclose(states[:, :10], normal[:, 14:24, -5:], atol=1e-6)
  errors = np.arange(normal.shape[1] - 1)[None]
  assert list(np.asarray(lds_prompts.extended_steps(errors, spec, (1, 2)))[0]) == [
      v - 2 for v in lds_prompts.after_final(errors, spec, (1, 2))[0]]
  best = needle_positions.best_checkpoint(workdir, c, "main", 2)
  at_saved = {r["sequences"]: r["value"] for r in rows
              if r["evaluator"] == "needle_h2" and r["metric"] == "after_final_2_median"}
  assert at_saved[best] == min(at_saved.values())
  assert os.path.getsize(os.path.join(workdir, "needle_positions",
                                      "800_main_h2.png")) > 10_000
  with pytest.raises(UserError, match="haystack_len"):
    needle_positions.run(workdir, -1, "", 9, (1,), 0, 0, False)
  with pytest.raises(UserError, match="--steps"):
    needle_positions.run(workdir, -1, "", 2, (11,), 0, 0, False)
