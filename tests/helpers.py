"""Shared test helpers: the smoke config, runs, and checkpoint reading."""
import os
import subprocess
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))

import smoke  # pylint: disable=wrong-import-position

from icl_transience import config as config_lib  # pylint: disable=wrong-import-position
from icl_transience.train import checkpoints  # pylint: disable=wrong-import-position
from icl_transience.train import loop  # pylint: disable=wrong-import-position
from icl_transience.train import step as step_lib  # pylint: disable=wrong-import-position


def smoke_config(**overrides):
  return config_lib.override(smoke.get_config(), overrides)


def final_state(c, workdir, step=None):
  """The population state of the run in workdir at `step` (default: newest)."""
  members = config_lib.members(c)
  mesh = loop.make_mesh(c.num_devices)
  with jax.set_mesh(mesh), checkpoints.manager(workdir, read_only=True) as mngr:
    step = mngr.latest_step() if step is None else step
    trainer = step_lib.Trainer(c, mesh)
    state = checkpoints.restore_population(
        mngr, step, trainer.abstract_state(members), [m.name for m in members])
  return jax.device_get(state)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def run_cli(args, env=None, timeout=600):
  """Runs a command-line entry point of the repo; returns CompletedProcess."""
  full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
  return subprocess.run([sys.executable] + args, cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout,
                        check=False)
