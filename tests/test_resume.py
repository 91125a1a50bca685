"""Interrupted runs resume bit for bit: in a new process, after SIGTERM, after
a SIGKILL in the middle of a checkpoint save, with another steps_per_call;
and a workdir accepts only the changes a resumed run may make."""
import os
import signal
import textwrap
import time

import numpy as np
import pytest

from icl_transience import config as config_lib
from icl_transience import evaluate
from icl_transience import metrics_table
from icl_transience.errors import UserError
from icl_transience.train import loop
from icl_transience.proj.transience.omniglot import task as omniglot_task

from helpers import (assert_trees_equal, copy_run, final_state, run_cli,
                     smoke_config, start_smoke_trainer)


def checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                if d.isdigit())


def test_resume_in_a_new_process_is_bit_exact(smoke_run, tmp_path):
  split = str(tmp_path / "split")
  loop.train(smoke_config(total_sequences=400), split)
  result = run_cli(["main.py", "--config=configs/smoke.py", f"--workdir={split}"])
  assert result.returncode == 0, result.stderr[-2000:]
  assert "resumed from step 50" in result.stderr
  c = smoke_config()
  a, b = final_state(c, smoke_run), final_state(c, split)
  assert int(a["step"][0]) == int(b["step"][0]) == 100
  assert_trees_equal(a, b)
  # the evaluator sets and metrics of two processes agree with one's
  assert metrics_table.read(split) == metrics_table.read(smoke_run)


def test_sigterm_saves_and_resume_continues_bit_exact(tmp_path):
  """SIGTERM mid-run saves a checkpoint and exits 0; resuming a few calls
  past the stop matches a run that was never stopped."""
  workdir = str(tmp_path / "killed")
  horizon = {"total_sequences": 400_000, "eval_every": 400_000, "ckpt.every": 0}
  proc = start_smoke_trainer(workdir, horizon)
  time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert "saving a checkpoint and stopping" in err
  stopped = checkpoint_steps(workdir)[-1]
  assert 0 < stopped < 50_000, "the stop saved a checkpoint before the horizon"
  past = {"total_sequences": (stopped + 30) * 8,
          "eval_every": (stopped + 30) * 8}
  loop.train(smoke_config(**past, **{"ckpt.every": 0}), workdir)
  straight = str(tmp_path / "straight")
  c = smoke_config(**past, **{"ckpt.every": 0})
  loop.train(c, straight)
  assert_trees_equal(final_state(c, straight), final_state(c, workdir))


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, "tests")
    from helpers import smoke_config
    from icl_transience.train import checkpoints, loop
    save = checkpoints.save

    def save_then_die(mngr, state, names, meta):
      save(mngr, state, names, meta)  # asynchronous: still being written
      if meta["step"] == 50:
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.save = save_then_die
    loop.train(smoke_config(), sys.argv[1])
""")


def test_sigkill_during_a_checkpoint_save_resumes_from_the_last_complete_one(
    smoke_run, tmp_path):
  workdir = str(tmp_path / "killed")
  result = run_cli(["-c", KILL_DURING_SAVE, workdir])
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  left = os.listdir(os.path.join(workdir, "checkpoints"))
  assert checkpoint_steps(workdir) == [0]
  assert any(d.startswith("00000050.") for d in left), left  # the partial save
  loop.train(smoke_config(), workdir)
  assert checkpoint_steps(workdir) == [0, 50, 100]
  c = smoke_config()
  assert_trees_equal(final_state(c, smoke_run), final_state(c, workdir))
  assert metrics_table.read(workdir) == metrics_table.read(smoke_run)


def test_steps_per_call_and_eval_batch_size_change_no_result(smoke_run, tmp_path):
  """Parameters do not depend on steps_per_call, also when it changes on
  resume; evaluator metrics do not depend on evals.batch_size."""
  c = smoke_config()
  other = str(tmp_path / "k25")
  loop.train(smoke_config(steps_per_call=25), other)
  assert_trees_equal(final_state(c, smoke_run)["params"],
                     final_state(c, other)["params"])
  # stopped at step 30 with 10 steps per call, resumed with 25 per call
  resumed = str(tmp_path / "resumed")
  loop.train(smoke_config(total_sequences=240, eval_every=80, **{"ckpt.every": 80}),
             resumed)
  loop.train(smoke_config(steps_per_call=25, **{"ckpt.every": 0}), resumed)
  assert checkpoint_steps(resumed) == [0, 10, 20, 30, 100]
  assert_trees_equal(final_state(c, smoke_run)["params"],
                     final_state(c, resumed)["params"])
  # the checkpoint-sweep job with another evaluation batch size
  rows = {(r["step"], r["evaluator"], r["metric"]): r["value"]
          for r in metrics_table.read(smoke_run) if r["evaluator"] != "train_batch"}
  regrouped = copy_run(smoke_run, tmp_path / "regrouped")
  os.remove(metrics_table.path(regrouped))
  config = config_lib.load_run_config(regrouped)
  config.evals.batch_size = 16
  loop.save_config(config, regrouped)
  assert evaluate.evaluate_checkpoints(regrouped) == 3
  again = metrics_table.read(regrouped)
  assert len(again) == len(rows)
  for r in again:
    np.testing.assert_allclose(r["value"], rows[r["step"], r["evaluator"], r["metric"]],
                               rtol=1e-5, atol=1e-6)


def test_an_explicit_checkpoint_off_the_call_grid_changes_no_result(
    smoke_run, tmp_path):
  """ckpt.at lands on any step (Singh et al. 2025 graft from 9,750,016
  sequences, off a 20,000-sequence grid) by shortening one call."""
  c = smoke_config()
  landed = str(tmp_path / "landed")
  loop.train(smoke_config(**{"ckpt.at": (13 * c.batch_size, 57 * c.batch_size)}),
             landed)
  assert {13, 57} <= set(checkpoint_steps(landed))
  assert_trees_equal(final_state(c, smoke_run)["params"],
                     final_state(c, landed)["params"])
  assert final_state(c, landed, step=13)["step"] == 13
  with pytest.raises(UserError, match=r"^ckpt.at: \(100,\): sequence counts"):
    config_lib.validate(smoke_config(**{"ckpt.at": (100,)}))


def test_workdir_refuses_another_run_and_accepts_resumable_changes(tmp_path):
  workdir = str(tmp_path)
  loop.save_config(smoke_config(), workdir)
  for field, value in (("model.depth", 3), ("train.burstiness", 0),
                       ("optim.lr", 2e-3), ("population", "l2=0.1"),
                       ("data.spread", 0.5), ("batch_size", 16)):
    with pytest.raises(UserError, match=f"^{field}: workdir .* holds a run"):
      loop.save_config(smoke_config(**{field: value}), workdir)
  loop.save_config(smoke_config(**{
      "total_sequences": 1600, "eval_every": 800, "ckpt.every": 0,
      "ckpt.keep": 2, "steps_per_call": 20, "evals.batch_size": 16,
      "num_devices": 1, "population_sharding": "batch"}), workdir)
  assert config_lib.load_run_config(workdir).steps_per_call == 20


def test_a_block_the_task_does_not_read_does_not_block_resuming(tmp_path):
  """A transience config on synthetic features carries the omniglot block
  (for --config.data.source=omniglot); its run must resume."""
  workdir = str(tmp_path)
  with_omniglot = lambda **kw: config_lib.override(
      smoke_config(**kw), {"omniglot": omniglot_task.default_config()})
  loop.save_config(with_omniglot(), workdir)
  loop.save_config(with_omniglot(total_sequences=1600), workdir)
  with pytest.raises(UserError, match="^data.spread: workdir"):
    loop.save_config(with_omniglot(**{"data.spread": 0.5}), workdir)
