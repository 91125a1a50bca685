"""End to end on the smoke config: training, the checkpoint-sweep job, figures,
populations, L2 and unreadable checkpoints."""
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np

from icl_transience import config as config_lib
from icl_transience import evaluate
from icl_transience import metrics_table
from icl_transience import plot
from icl_transience import tasks
from icl_transience.analysis import figures
from icl_transience.train import loop
from icl_transience.train import step as step_lib

from helpers import REPO, copy_run, final_state, smoke_config, table_curve


def eval_rows(rows):
  return {(r["member"], r["step"], r["evaluator"], r["metric"]): r["value"]
          for r in rows if r["evaluator"] != "train_batch"}


def keep_rows(workdir, keep):
  """Rewrites the run's table with the rows for which keep(row) holds."""
  rows = metrics_table.read(workdir)
  metrics_table.atomic_write_text(metrics_table.path(workdir), "".join(
      json.dumps(r) + "\n" for r in rows if keep(r)))


def test_training_checkpoints_logs_and_learns(smoke_run):
  c = smoke_config()
  steps = sorted(int(d) for d in os.listdir(os.path.join(smoke_run, "checkpoints")))
  assert steps == [0, 50, 100]
  rows = metrics_table.read(smoke_run)
  trained = eval_rows(rows)
  assert {k[1] for k in trained} == {0, 50, 100}
  assert {k[2] for k in trained} == set(c.evals.names)
  train_loss = [r for r in rows if r["evaluator"] == "train_batch" and r["metric"] == "loss"]
  assert [r["sequences"] for r in train_loss] == [400, 800]
  # it learns: the training distribution's loss falls well below its value
  # at initialisation (3.41 -> 2.80), and the training batches' loss with it
  start, end = (trained[("main", s, "train_eval", "loss")] for s in (0, 100))
  assert end < start - 0.4, (start, end)
  assert train_loss[-1]["value"] < train_loss[0]["value"] - 0.2


def test_sweep_jobs_recompute_the_logged_rows(smoke_run, tmp_path):
  workdir = copy_run(smoke_run, tmp_path / "run")
  trained = eval_rows(metrics_table.read(workdir))
  keep_rows(workdir, lambda r: r["evaluator"] == "train_batch")
  # Two sweep jobs at once, one per shard (one in another process), appending
  # to the same table.
  other = subprocess.Popen([sys.executable, "-m", "icl_transience.evaluate",
                            f"--workdir={workdir}", "--shard=1/2"], cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=REPO),
                           stderr=subprocess.PIPE, text=True)
  assert evaluate.evaluate_checkpoints(workdir, parallel=2, shard=0,
                                       num_shards=2) == 2  # steps 0 and 100
  assert other.wait(timeout=300) == 0, other.stderr.read()[-2000:]
  swept = eval_rows(metrics_table.read(workdir))
  assert swept.keys() == trained.keys()
  for key, value in trained.items():
    np.testing.assert_allclose(swept[key], value, rtol=1e-5, atol=1e-6, err_msg=str(key))
  assert evaluate.evaluate_checkpoints(workdir) == 0  # nothing left to do


def test_figures_draw_the_metrics_rows(smoke_run, tmp_path, monkeypatch):
  drawn = {}
  save = figures.save

  def capture(fig, path):
    drawn[os.path.basename(path)] = [
        (line.get_label(), [list(line.get_xdata()), list(line.get_ydata())])
        for ax in fig.axes for line in ax.get_lines()
        if not line.get_label().startswith("_")]
    save(fig, path)
  monkeypatch.setattr(figures, "save", capture)
  rows = metrics_table.read(smoke_run)
  curves = tasks.curves(smoke_config())
  paths = figures.plot_run(rows, str(tmp_path / "figs"), curves)
  assert sorted(os.path.basename(p) for p in paths) == ["curves_main.png",
                                                        "losses_main.png"]
  assert all(os.path.getsize(p) > 10_000 for p in paths)
  series = lambda evaluator, metric: table_curve(rows, "main", evaluator, metric)
  for curve in curves:  # drawn when run
    x, y = series(curve.evaluator, curve.metric)
    assert dict(drawn["curves_main.png"]).get(curve.label) == ([x, y] if x else None)
  losses = dict(drawn["losses_main.png"])
  assert losses["train (batch)"] == list(series("train_batch", "loss"))
  assert losses["icl"] == list(series("icl", "loss"))
  assert len(losses) == 1 + len(smoke_config().evals.names)
  # comparing two runs (here a run with itself) draws each run's curve
  out = plot.compare([smoke_run, f"{smoke_run}@main"], "icl:loss",
                     str(tmp_path / "compare.png"))
  assert out == str(tmp_path / "compare.png") and os.path.getsize(out) > 10_000
  assert [line for _, line in drawn["compare.png"]] == [list(series("icl", "loss"))] * 2


def test_population_members_are_independent(tmp_path):
  """Member A of {A, B, C} trains exactly as in {A, B}, and as alone to
  float rounding (on CPU members train one after another, each on the
  single-member program: the same code under XLA's default flags, bit for
  bit, but under this suite's compile flags (conftest) the map's body
  rounds differently, ~1e-7); to float rounding the same metrics rows;
  members vmapped together agree to float precision. (An L2 member would
  switch every member onto the program with the penalty term, which rounds
  differently: ~3e-7.)"""
  a, b, cc = "init_seed=1", "init_seed=2,lr=3e-3,data_seed=4", "init_seed=3,lr=2e-3"
  runs = {}
  for name, population, fields in (
      ("abc", f"{a}; {b}; {cc}", {}), ("ab", f"{a}; {b}", {}), ("a", a, {}),
      ("abc_vmap", f"{a}; {b}; {cc}", {"population_map": "vmap"})):
    c = smoke_config(population=population, **{"ckpt.every": 0}, **fields)
    loop.train(c, str(tmp_path / name))
    runs[name] = (final_state(c, str(tmp_path / name)),
                  metrics_table.read(str(tmp_path / name)))
  names = {r["member"] for r in runs["abc"][1]}
  assert names == {"init_seed1", "init_seed2_lr3e-3_data_seed4", "init_seed3_lr2e-3"}
  member = lambda rows, m: [r for r in rows if r["member"] == m]
  for other, n in (("ab", 2), ("a", 1)):
    for i, m in enumerate(["init_seed1", "init_seed2_lr3e-3_data_seed4"][:n]):
      for x, y in zip(jax.tree.leaves(runs["abc"][0]), jax.tree.leaves(runs[other][0])):
        if other == "ab":
          np.testing.assert_array_equal(np.asarray(x)[i], np.asarray(y)[i])
        else:
          np.testing.assert_allclose(np.asarray(x)[i], np.asarray(y)[i], rtol=0, atol=1e-6)
      # evaluation is vmapped over the population: its reductions round
      # differently for another population size
      mine, theirs = member(runs["abc"][1], m), member(runs[other][1], m)
      assert [dict(r, value=0) for r in mine] == [dict(r, value=0) for r in theirs]
      np.testing.assert_allclose([r["value"] for r in mine],
                                 [r["value"] for r in theirs], rtol=1e-4, atol=1e-5)
  for x, y in zip(jax.tree.leaves(runs["abc"][0]["params"]),
                  jax.tree.leaves(runs["abc_vmap"][0]["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-6)
  assert [dict(r, value=0) for r in runs["abc"][1]] == [
      dict(r, value=0) for r in runs["abc_vmap"][1]]


def test_l2_penalty_forms_and_groups():
  tree = {"w": np.array([3.0, 4.0]), "b": np.zeros(3)}
  assert float(step_lib.l2_penalty(tree, "norm")) == 5.0
  assert float(step_lib.l2_penalty(tree, "squared")) == 12.5
  grads = jax.grad(lambda t: step_lib.l2_penalty(t, "norm"))(tree)
  assert np.isfinite(grads["b"]).all()  # zero leaves get gradient 0, not NaN
  np.testing.assert_allclose(grads["w"], [0.6, 0.8])
  one = lambda *shape: np.ones(shape)
  params = {"input_proj": {"kernel": one(4)}, "label_embed": {"embedding": one(9)},
            "block_0": {"attn": {"qkv": {"kernel": one(16)}},
                        "mlp_in": {"kernel": one(25)}, "mlp_out": {"kernel": one(36)}}}
  spec = tasks.spec(smoke_config())
  norm = lambda group: float(step_lib.l2_penalty(
      params, "norm", step_lib.group_modules(spec, group)))
  assert norm("embedder") == 2.0 + 3.0 and norm("attention") == 4.0  # + label table
  assert norm("mlp") == 11.0 and norm("all") == 2 + 3 + 4 + 5 + 6


def test_unreadable_checkpoint_is_skipped_and_the_rest_evaluated(
    smoke_run, tmp_path, caplog):
  workdir = copy_run(smoke_run, tmp_path / "run")
  logged = eval_rows(metrics_table.read(workdir))
  keep_rows(workdir, lambda r: r["step"] == 100)
  member_dir = os.path.join(workdir, "checkpoints", "00000050", "main")
  shutil.rmtree(member_dir)
  os.makedirs(member_dir)
  with caplog.at_level(logging.WARNING):
    assert evaluate.evaluate_checkpoints(workdir) == 1  # step 0; 50 skipped
  assert "skipping unreadable checkpoint 50/main" in caplog.text
  swept = eval_rows(metrics_table.read(workdir))
  assert {k[1] for k in swept} == {0, 100}
  for key, value in swept.items():
    np.testing.assert_allclose(value, logged[key], rtol=1e-5, atol=1e-6)


MLP_MODULES = ("mlp_in", "mlp_out", "ln_mlp")  # Singh et al. 2023's MLP group


def test_an_l2_mlp_member_gets_exactly_the_mlp_group_penalty_gradient():
  """population 'l2_mlp=0.5; l2=0': same init and batch, so the members'
  gradients differ by 0.5 d/dw sum ||w|| = 0.5 w / ||w|| on each MLP leaf
  (written out here) and by nothing elsewhere."""
  c = smoke_config(population="l2_mlp=0.5; l2=0", **{"model.mlp_ratio": 2})
  mesh = loop.run_mesh(c)
  with jax.set_mesh(mesh):
    trainer = step_lib.Trainer(c, mesh)
    members = config_lib.members(c)
    assert [m.hyper for m in members] == [dict(lr=1e-3, l2=0.0, l2_mlp=0.5),
                                          dict(lr=1e-3, l2=0.0, l2_mlp=0.0)]
    states = trainer.init(members)
    table = trainer.task.constants(trainer.replicated)
    grads = []
    for i in range(2):
      state = jax.tree.map(lambda x, i=i: x[i], states)
      batch = trainer.task.sample_batch(state["data_key"], table, state["hyper"], 0)
      grads.append(jax.grad(lambda p, s=state, b=batch: trainer._loss(p, s, b)[0])(  # pylint: disable=protected-access
          state["params"]))
  flat = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
  n_mlp = 0
  for (path, g0), (_, g1), (_, w) in zip(flat(grads[0]), flat(grads[1]),
                                        flat(jax.tree.map(lambda x: x[0], states["params"]))):
    w = np.asarray(w, np.float64)
    in_mlp = any(getattr(k, "key", None) in MLP_MODULES for k in path)
    n_mlp += in_mlp
    norm = np.linalg.norm(w)  # a zero leaf (a bias at init): gradient 0
    expected = 0.5 * w / norm if in_mlp and norm > 0 else np.zeros_like(w)
    np.testing.assert_allclose(np.asarray(g0) - np.asarray(g1), expected, atol=2e-6,
                               err_msg=jax.tree_util.keystr(path))
  assert n_mlp == 2 * 6  # two blocks: mlp_in, mlp_out, ln_mlp (2 leaves each)


def test_a_selective_l2_population_equals_its_members_run_alone(tmp_path):
  """'l2_mlp=a; l2_attention=a; l2=a' in one program: each member trains as
  it does alone (to the rounding of the penalty terms the others add, 0 x
  a penalty, ~1e-7), and the three members differ from each other."""
  lam = "0.05"
  entries = [f"l2_mlp={lam}", f"l2_attention={lam}", f"l2={lam}"]
  zeros = ",l2_mlp=0,l2_attention=0"  # alone: the population's groups (one program)
  shape = {"ckpt.every": 0, "model.mlp_ratio": 2, "total_sequences": 80,
           "eval_every": 80}
  together = smoke_config(population="; ".join(entries), **shape)
  loop.train(together, str(tmp_path / "all"))
  population = final_state(together, str(tmp_path / "all"))["params"]
  for i, entry in enumerate(entries):
    alone = smoke_config(population=entry + zeros.replace(f",{entry.split('=')[0]}=0", ""),
                         **shape)
    loop.train(alone, str(tmp_path / str(i)))
    params = final_state(alone, str(tmp_path / str(i)))["params"]
    for x, y in zip(jax.tree.leaves(population), jax.tree.leaves(params)):
      np.testing.assert_allclose(np.asarray(x)[i], np.asarray(y)[0], atol=1e-6)
  leaves = [np.asarray(x) for x in jax.tree.leaves(population)]
  assert not np.allclose(leaves[-1][0], leaves[-1][1])  # the groups differ
