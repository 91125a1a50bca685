"""Two processes with 4 CPU devices each train like one device."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from icl_transience import metrics_table

from icl_transience.train import loop

from helpers import REPO, fake_devices, final_state, smoke_config

SHAPE = {"batch_size": 16, "total_sequences": 320, "eval_every": 160,
         "ckpt.every": 160}


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def main_args(workdir):
  return (["main.py", "--config=configs/smoke.py", f"--workdir={workdir}"] +
          [f"--config.{k}={v}" for k, v in SHAPE.items()])


def test_two_processes_of_four_devices_train_like_one_device(tmp_path):
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
  c = smoke_config(**SHAPE)
  loop.train(c, one)  # here: one process, one device
  a, b = final_state(c, two), final_state(c, one)
  assert int(a["step"][0]) == 20
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  # the metrics table holds the same rows, once each
  rows = [{(r["step"], r["evaluator"], r["metric"]): r["value"]
           for r in metrics_table.read(w)} for w in (two, one)]
  assert rows[0].keys() == rows[1].keys()
  assert len(metrics_table.read(two)) == len(rows[0])
  for key, value in rows[0].items():
    np.testing.assert_allclose(value, rows[1][key], rtol=1e-4, atol=1e-5, err_msg=str(key))
