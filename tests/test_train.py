"""End to end on the smoke config: train, checkpoint, resume, sweep, plot."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

from icl_transience import evaluate
from icl_transience import metrics_table
from icl_transience.analysis import figures
from icl_transience.train import loop
from icl_transience.train import step as step_lib

from helpers import REPO, assert_trees_equal, final_state, run_cli, smoke_config


def eval_rows(rows):
  return {(r["member"], r["step"], r["evaluator"], r["metric"]): r["value"]
          for r in rows if r["evaluator"] != "train_batch"}


def test_train_sweep_evaluate_and_plot(tmp_path):
  workdir = str(tmp_path / "run")
  c = smoke_config()
  loop.train(c, workdir)
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))
  assert steps == [0, 50, 100]
  rows = metrics_table.read(workdir)
  trained = eval_rows(rows)
  assert {k[1] for k in trained} == {0, 50, 100}
  assert {k[2] for k in trained} == set(c.evals.names)
  train_loss = [r for r in rows if r["evaluator"] == "train_batch" and r["metric"] == "loss"]
  assert [r["sequences"] for r in train_loss] == [400, 800]
  assert train_loss[-1]["value"] < np.log(c.train.n_classes)  # it learns
  # The sweep job recomputes exactly what the training loop logged.
  metrics_table.atomic_write_text(metrics_table.path(workdir), "".join(
      json.dumps(r) + "\n" for r in rows if r["evaluator"] == "train_batch"))
  # Two sweep jobs at once, one per shard, appending to the same table.
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
  paths = figures.plot_run(metrics_table.read(workdir), str(tmp_path / "figs"))
  assert len(paths) == 2
  out = str(tmp_path / "figs" / "compare.png")
  compared = run_cli(["-m", "icl_transience.plot", f"--workdir={workdir}",
                      f"--workdir={workdir}@main", "--compare=icl:loss", f"--out={out}"])
  assert compared.returncode == 0 and compared.stdout.strip() == out, compared.stderr
  paths.append(out)
  for p in paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert plt.imread(p).shape[0] > 100


def test_resume_in_a_new_process_is_bit_exact(tmp_path):
  c = smoke_config()
  straight = str(tmp_path / "straight")
  loop.train(c, straight)
  split = str(tmp_path / "split")
  loop.train(smoke_config(total_sequences=400), split)
  result = run_cli(["main.py", "--config=configs/smoke.py", f"--workdir={split}"])
  assert result.returncode == 0, result.stderr[-2000:]
  a, b = final_state(c, straight), final_state(c, split)
  assert int(a["step"][0]) == int(b["step"][0]) == 100
  assert_trees_equal(a, b)


def test_sigterm_saves_and_resume_continues_bit_exact(tmp_path):
  overrides = dict(total_sequences=40_000, **{"ckpt.every": 0})
  workdir = str(tmp_path / "killed")
  args = [sys.executable, "main.py", "--config=configs/smoke.py",
          f"--workdir={workdir}", "--config.total_sequences=40000",
          "--config.ckpt.every=0"]
  proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline:
    rows = metrics_table.read(workdir) if os.path.exists(
        metrics_table.path(workdir)) else []
    if any(r["step"] > 0 for r in rows):
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  stopped = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")))
  assert 0 < stopped < 5000, "the stop saved a checkpoint before the horizon"
  loop.train(smoke_config(**overrides), workdir)
  straight = str(tmp_path / "straight")
  loop.train(smoke_config(**overrides), straight)
  c = smoke_config(**overrides)
  assert_trees_equal(final_state(c, straight), final_state(c, workdir))


def test_population_members_match_single_runs(tmp_path):
  c = smoke_config(population="init_seed=1; init_seed=2,lr=3e-3,data_seed=4")
  loop.train(c, str(tmp_path / "pop"))
  pop = final_state(c, str(tmp_path / "pop"))
  assert json.load(open(tmp_path / "pop" / "config.json"))["population"]
  single = smoke_config(init_seed=2, data_seed=4, **{"optim.lr": 3e-3})
  loop.train(single, str(tmp_path / "one"))
  one = final_state(single, str(tmp_path / "one"))
  for x, y in zip(jax.tree.leaves(pop["params"]), jax.tree.leaves(one["params"])):
    np.testing.assert_allclose(np.asarray(x)[1], np.asarray(y)[0], atol=2e-4)
  names = {r["member"] for r in metrics_table.read(str(tmp_path / "pop"))}
  assert names == {"init_seed1", "init_seed2_lr3e-3_data_seed4"}


def test_l2_penalty_forms_and_effect(tmp_path):
  tree = {"w": np.array([3.0, 4.0]), "b": np.zeros(3)}
  assert float(step_lib.l2_penalty(tree, "norm")) == 5.0
  assert float(step_lib.l2_penalty(tree, "squared")) == 12.5
  grads = jax.grad(lambda t: step_lib.l2_penalty(t, "norm"))(tree)
  assert np.isfinite(grads["b"]).all()  # zero leaves get gradient 0, not NaN
  c = smoke_config(population="l2=0; l2=0.05")
  loop.train(c, str(tmp_path / "l2"))
  params = final_state(c, str(tmp_path / "l2"))["params"]
  norms = sum(np.linalg.norm(np.asarray(x).reshape(2, -1), axis=1)
              for x in jax.tree.leaves(params))
  assert norms[1] < norms[0]


def test_selective_weight_decay_groups():
  one = lambda *shape: np.ones(shape)
  params = {"input_proj": {"kernel": one(4)}, "label_embed": {"embedding": one(9)},
            "block_0": {"attn": {"qkv": {"kernel": one(16)}},
                        "mlp_in": {"kernel": one(25)}, "mlp_out": {"kernel": one(36)}}}
  norm = lambda group: float(step_lib.l2_penalty(params, "norm", group))
  assert norm("embedder") == 2.0 and norm("attention") == 4.0
  assert norm("mlp") == 11.0 and norm("all") == 2 + 3 + 4 + 5 + 6


def test_corrupt_checkpoint_is_skipped(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(smoke_config(), workdir)
  rows = metrics_table.read(workdir)
  metrics_table.atomic_write_text(metrics_table.path(workdir), "".join(
      json.dumps(r) + "\n" for r in rows if r["step"] != 50))
  member_dir = os.path.join(workdir, "checkpoints", "00000050", "main")
  shutil.rmtree(member_dir)
  os.makedirs(member_dir)
  assert evaluate.evaluate_checkpoints(workdir) == 0  # skipped with a warning
  shutil.rmtree(os.path.join(workdir, "checkpoints", "00000050"))
  assert evaluate.evaluate_checkpoints(workdir) == 0
