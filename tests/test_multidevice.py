"""Data parallelism on fake CPU devices and local processes: 8 devices train
one member like 1 device (same batch); a population of 3 split over the
members of 4 devices (padded to 4) trains like one split over the batch;
two processes with 4 devices each train a population of 8 in the members
layout like one device.

One file, so that one test worker runs these device-hungry subprocesses one
after another. Each process has more fake devices than the CI machine has
cores (XLA's CPU client sizes its thread pool to the larger of the two):
with 2 devices on 2 busy cores an all-reduce once waited 40 s for the other
device's thread and XLA aborted the process.
"""
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np

from icl_transience import config as config_lib
from icl_transience import evaluate
from icl_transience import metrics_table
from icl_transience.train import loop
from icl_transience.train import multihost

from helpers import REPO, fake_devices, final_state, run_cli, smoke_config

SHAPE = dict(batch_size=16, total_sequences=320, eval_every=320, **{"ckpt.every": 0})
POPULATION = "init_seed=1; init_seed=2,lr=3e-3; init_seed=3"
SCRIPT = textwrap.dedent("""
    import sys, jax
    sys.path.insert(0, "tests")
    from helpers import smoke_config
    from icl_transience import config
    from icl_transience.train import loop
    assert jax.device_count() == int(sys.argv[2]), jax.devices()
    # one member takes one device with num_devices = -1 (the default), all with 0
    assert loop.run_mesh(smoke_config()).devices.size == 1
    assert loop.run_mesh(smoke_config(num_devices=0)).devices.size == jax.device_count()
    for name, fields in eval(sys.argv[3]).items():
      c = smoke_config(**eval(sys.argv[4]), **fields)
      assert config.population_layout(c, jax.device_count()) in name
      loop.train(c, f"{sys.argv[1]}/{name}")
""")


def train_on(n_devices, workdir, runs):
  result = run_cli(["-c", SCRIPT, str(workdir), str(n_devices), repr(runs),
                    repr(SHAPE)], env=fake_devices(n_devices))
  assert result.returncode == 0, result.stderr[-3000:]


def assert_close(a, b):
  # Reduction order differs between layouts; Adam amplifies the float noise
  # of near-zero gradients (20 steps of lr 1e-3 move params ~2e-2).
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_eight_devices_train_one_member_like_one_device(tmp_path):
  train_on(8, tmp_path, {"eight_batch": {"num_devices": 8}})
  c = smoke_config(**SHAPE)
  loop.train(c, str(tmp_path / "one"))  # here: one device
  eight, one = (final_state(c, str(tmp_path / d)) for d in ("eight_batch", "one"))
  assert int(eight["step"][0]) == 20
  assert_close(eight, one)


def test_a_population_padded_over_the_devices_trains_like_one_over_the_batch(
    tmp_path):
  """3 members on 4 devices: auto pads the members layout with a slot that
  writes no checkpoint item and no rows."""
  train_on(4, tmp_path, {"members": {"population": POPULATION},
                         "batch": {"population": POPULATION,
                                   "population_sharding": "batch"}})
  c = smoke_config(population=POPULATION, **SHAPE)
  members, batch = (str(tmp_path / d) for d in ("members", "batch"))
  assert_close(final_state(c, members), final_state(c, batch))
  names = {m.name for m in config_lib.members(c)}
  step_dir = os.path.join(members, "checkpoints", "00000020")
  assert set(os.listdir(step_dir)) - {"meta", "_CHECKPOINT_METADATA",
                                      "commit_success.txt"} == names
  rows = metrics_table.read(members)
  assert {r["member"] for r in rows} == names
  assert len(rows) == len(metrics_table.read(batch))


# Evaluations every call of 5 steps and checkpoints every 10: after a kill,
# the survivor's next collective is more often an evaluation's gather, which
# fails at once, than a save's barrier, which waits for the heartbeat watch.
HOST_SHAPE = {"batch_size": 16, "steps_per_call": 5, "eval_every": 80,
              "ckpt.every": 160,
              "population": "; ".join(f"init_seed={i}" for i in range(1, 9))}


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_two_processes(workdir, total_sequences):
  """main.py --multihost as processes 0 and 1 of one run (4 fake devices
  each); their stderr goes to workdir.<id>.log."""
  address = f"localhost:{free_port()}"
  fields = dict(HOST_SHAPE, total_sequences=total_sequences)
  args = [sys.executable, "main.py", "--config=configs/smoke.py",
          f"--workdir={workdir}", "--multihost", f"--coordinator_address={address}",
          "--num_processes=2", "--lost_process_after_s=20"] + [
              f"--config.{k}={v}" for k, v in fields.items()]
  env = dict(os.environ, PYTHONPATH=REPO, **fake_devices(4))
  procs = []
  for i in range(2):
    with open(f"{workdir}.{i}.log", "w") as log:  # the child keeps its copy
      procs.append(subprocess.Popen(args + [f"--process_id={i}"], cwd=REPO, env=env,
                                    stdout=subprocess.DEVNULL, stderr=log))
  return procs


def finish(procs, workdir, timeout=400):
  """[(return code, stderr)] of both processes once they end."""
  for p in procs:
    p.wait(timeout=timeout)
  return [(p.returncode, open(f"{workdir}.{i}.log").read())
          for i, p in enumerate(procs)]


def test_two_processes_of_four_devices_lose_one_resume_and_train_like_one_device(
    tmp_path):
  """8 members, one on each device of both processes. Process 1 is killed
  with kill -9 after a checkpoint: process 0 stops with one line naming it
  and the newest complete checkpoint. Restarted, both resume from it, and
  the run equals one on one device (evaluation results and checkpoints
  gathered from devices of the other process); then the checkpoint-sweep
  job on the checkpoints they saved."""
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  procs = start_two_processes(two, 16 * 10**6)
  first = os.path.join(two, "checkpoints", "00000010")
  deadline = time.monotonic() + 400
  while not os.path.isdir(first) and procs[1].poll() is None:
    assert time.monotonic() < deadline, "no checkpoint after 400 s"
    time.sleep(0.2)
  procs[1].kill()
  (rc, err), _ = finish(procs, two, timeout=120)
  assert rc == multihost.LOST_PROCESS_EXIT, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  line = err.strip().splitlines()[-1]
  found = re.fullmatch(
      r"error: process 0 of 2: lost contact with process 1 \(.+\); the newest "
      r"complete checkpoint is step (\d+) \((\d+) sequences\) in .+: restart "
      r"every process to resume", line)
  assert found, line
  saved = int(found.group(1))
  assert saved >= 10 and os.path.isdir(os.path.join(two, "checkpoints", f"{saved:08d}"))
  total = 16 * (saved + 10)
  outs = finish(start_two_processes(two, total), two)
  for rc, err in outs:
    assert rc == 0, err[-3000:]
  assert f"resumed from step {saved}" in outs[1][1]
  assert "process 1 of 2; 4 local of 8 devices" in outs[1][1]
  c = smoke_config(**HOST_SHAPE, total_sequences=total)
  assert "(members layout)" in outs[0][1]
  loop.train(c, one)  # here: one process, one device
  a, b = final_state(c, two), final_state(c, one)
  assert a["step"].tolist() == [saved + 10] * 8
  assert_close(a, b)
  # the metrics table holds the same rows, once each (the first launch may
  # have evaluated steps past the restart's horizon before it stopped)
  key = lambda r: (r["member"], r["step"], r["evaluator"], r["metric"])
  in_run = lambda rows: [r for r in rows if r["step"] <= saved + 10]
  rows = [{key(r): r["value"] for r in in_run(metrics_table.read(w))}
          for w in (two, one)]
  assert rows[0].keys() == rows[1].keys()
  assert len(in_run(metrics_table.read(two))) == len(rows[0])
  for k, value in rows[0].items():
    np.testing.assert_allclose(value, rows[1][k], rtol=1e-4, atol=1e-5, err_msg=str(k))
  # the sweep job re-evaluates the checkpoints the two processes saved
  metrics_table.atomic_write_text(metrics_table.path(two), "".join(
      json.dumps(r) + "\n" for r in in_run(metrics_table.read(two))
      if r["evaluator"] == "train_batch"))
  assert evaluate.evaluate_checkpoints(two) == (saved // 10 + 2) * 8
  swept = {key(r): r["value"] for r in metrics_table.read(two)}
  at_checkpoints = {k for k in rows[0] if k[2] == "train_batch" or k[1] % 10 == 0}
  assert swept.keys() == at_checkpoints
  for k, value in swept.items():
    np.testing.assert_allclose(value, rows[0][k], rtol=1e-4, atol=1e-5, err_msg=str(k))
