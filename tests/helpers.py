"""Shared test helpers: the smoke config, runs, and checkpoint reading."""
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OMNIGLOT = os.path.join(os.path.dirname(REPO), "shared", "data", "omniglot")
sys.path.insert(0, os.path.join(REPO, "configs"))

import smoke  # pylint: disable=wrong-import-position

from icl_transience import config as config_lib  # pylint: disable=wrong-import-position
from icl_transience.proj.lds_recall import lds  # pylint: disable=wrong-import-position
from icl_transience.train import checkpoints  # pylint: disable=wrong-import-position
from icl_transience.train import loop  # pylint: disable=wrong-import-position
from icl_transience.train import step as step_lib  # pylint: disable=wrong-import-position


def smoke_config(**overrides):
  return config_lib.override(smoke.get_config(), overrides)


def changed_fields(config, base, free=()) -> dict:
  """{dotted field: value} of config that differ from base, less the fields
  starting with one of `free`."""
  def flat(c, prefix=""):
    out = {}
    for key, value in c.items():
      if hasattr(value, "items"):
        out.update(flat(value, f"{prefix}{key}."))
      else:
        out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out
  mine, theirs = flat(config), flat(base)
  return {k: v for k, v in mine.items()
          if theirs.get(k) != v and not k.startswith(tuple(free))}


def table_curve(rows, member: str, evaluator: str, metric: str):
  """What a figure should draw for one curve, read off the table here (not
  through the plotting helpers): [sequences], [values] by sequences."""
  by_x = {r["sequences"]: r["value"] for r in rows if (
      r["member"], r["evaluator"], r["metric"]) == (member, evaluator, metric)}
  return sorted(by_x), [by_x[x] for x in sorted(by_x)]


def copy_run(workdir, dst):
  """A copy of a finished run, for a test that changes it."""
  shutil.copytree(workdir, dst)
  return str(dst)


def final_state(c, workdir, step=None):
  """The population state of the run in workdir at `step` (default: newest)."""
  members = config_lib.members(c)
  mesh = loop.run_mesh(c)
  with jax.set_mesh(mesh), checkpoints.manager(workdir, read_only=True) as mngr:
    step = mngr.latest_step() if step is None else step
    trainer = step_lib.Trainer(c, mesh)
    state = checkpoints.restore_population(
        mngr, step, trainer.abstract_state(members), [m.name for m in members])
  return jax.device_get(state)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def fake_devices(n: int) -> dict:
  """Environment for a subprocess whose JAX sees n CPU devices."""
  flags = os.environ.get("XLA_FLAGS", "")
  return {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n}".strip(),
          "JAX_PLATFORMS": "cpu"}


def start_smoke_trainer(workdir, fields: dict):
  """main.py on the smoke config in the background, returned once it has
  saved its step-0 checkpoint (its signal handlers and lock are in place)."""
  proc = subprocess.Popen(
      [sys.executable, "main.py", "--config=configs/smoke.py", f"--workdir={workdir}"]
      + [f"--config.{k}={v}" for k, v in fields.items()], cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not os.path.isdir(os.path.join(workdir, "checkpoints", "00000000")):
    if time.time() > deadline or proc.poll() is not None:
      proc.kill()
      raise AssertionError(f"the trainer did not start: {proc.communicate()[1]}")
    time.sleep(0.05)
  return proc


def run_cli(args, env=None, timeout=600):
  """Runs a command-line entry point of the repo; returns CompletedProcess."""
  full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
  return subprocess.run([sys.executable] + args, cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout,
                        check=False)


def zipf_exponent_fit(ranks, n_ranks: int):
  """Maximum-likelihood exponent s of P(k) ~ k^-s on {1..n_ranks} from
  1-based ranks, and its standard error (from the Fisher information)."""
  counts = np.bincount(np.asarray(ranks).ravel(), minlength=n_ranks + 1)[1:]
  log_k = np.log(np.arange(1, n_ranks + 1))
  grid = np.linspace(0.0, 3.0, 30_001)
  log_z = np.log(np.exp(-np.outer(grid, log_k)).sum(1))
  s = grid[np.argmax(-grid * (counts @ log_k) - counts.sum() * log_z)]
  p = np.exp(-s * log_k)
  p /= p.sum()
  return s, 1 / np.sqrt(counts.sum() * (p @ log_k ** 2 - (p @ log_k) ** 2))


# LDS traces of a batch of keys, and training batches (one compile per spec).
lds_traces = jax.jit(jax.vmap(lds.sample_trace, in_axes=(0, None, None)),
                     static_argnums=1)
lds_batch = jax.jit(lds.sample_batch, static_argnums=(1, 3))


def lds_pool(spec, seed: int = 7):
  """A training pool of spec's n_train_systems systems, as numpy arrays."""
  return jax.tree.map(np.asarray, jax.jit(lds.make_pool, static_argnums=1)(
      jax.random.PRNGKey(seed), spec))
