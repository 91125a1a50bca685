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
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

from icl_transience import config as config_lib
from icl_transience import evaluate
from icl_transience import metrics_table
from icl_transience.train import loop

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


HOST_SHAPE = {"batch_size": 16, "total_sequences": 320, "eval_every": 160,
              "ckpt.every": 160,
              "population": "; ".join(f"init_seed={i}" for i in range(1, 9))}


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def main_args(workdir):
  return (["main.py", "--config=configs/smoke.py", f"--workdir={workdir}"] +
          [f"--config.{k}={v}" for k, v in HOST_SHAPE.items()])


def test_two_processes_of_four_devices_train_a_population_like_one_device(tmp_path):
  """8 members, one on each device of both processes (evaluation results and
  checkpoints gathered from devices of the other process); then the
  checkpoint-sweep job on the checkpoints they saved."""
  two, one = str(tmp_path / "two"), str(tmp_path / "one")
  address = f"localhost:{free_port()}"
  env = dict(fake_devices(4), PYTHONPATH=REPO)
  procs = [subprocess.Popen(
      [sys.executable] + main_args(two) + [
          "--multihost", f"--coordinator_address={address}", "--num_processes=2",
          f"--process_id={i}"], cwd=REPO, env=dict(os.environ, **env),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "process 1 of 2; 4 local of 8 devices" in outs[1][1]
  c = smoke_config(**HOST_SHAPE)
  assert "(members layout)" in outs[0][1]
  loop.train(c, one)  # here: one process, one device
  a, b = final_state(c, two), final_state(c, one)
  assert a["step"].tolist() == [20] * 8
  assert_close(a, b)
  # the metrics table holds the same rows, once each
  key = lambda r: (r["member"], r["step"], r["evaluator"], r["metric"])
  rows = [{key(r): r["value"] for r in metrics_table.read(w)} for w in (two, one)]
  assert rows[0].keys() == rows[1].keys()
  assert len(metrics_table.read(two)) == len(rows[0])
  for k, value in rows[0].items():
    np.testing.assert_allclose(value, rows[1][k], rtol=1e-4, atol=1e-5, err_msg=str(k))
  # the sweep job re-evaluates the checkpoints the two processes saved
  metrics_table.atomic_write_text(metrics_table.path(two), "".join(
      json.dumps(r) + "\n" for r in metrics_table.read(two)
      if r["evaluator"] == "train_batch"))
  assert evaluate.evaluate_checkpoints(two) == 3 * 8
  swept = {key(r): r["value"] for r in metrics_table.read(two)}
  assert swept.keys() == rows[0].keys()
  for k, value in swept.items():
    np.testing.assert_allclose(value, rows[0][k], rtol=1e-4, atol=1e-5, err_msg=str(k))
