"""Right on every backend: full-precision matmuls where configured,
deterministic GPU kernels requested before JAX starts, and evaluation memory
bounded whatever the population size."""
import os
import re

import jax
import numpy as np
import pytest

from icl_transience import config as config_lib
from icl_transience.proj.transience import sources
from icl_transience.train import loop
from icl_transience.train import step as step_lib

from helpers import run_cli, smoke_config


def dot_precisions(lowered) -> set[str]:
  """The precision of every dot_general of a lowered program."""
  return set(re.findall(r"dot_general.*precision = \[(\w+), \w+\]", lowered.as_text()))


def test_the_synthetic_table_is_full_precision_whatever_the_default():
  make = lambda: sources.synthetic_table(0, 30, 10, 64, 4, 0.7, 0.1)
  with jax.default_matmul_precision("bfloat16"):
    lowered = jax.jit(make).lower()
    table = np.asarray(make())
  assert dot_precisions(lowered) == {"HIGHEST"}
  with jax.default_matmul_precision("highest"):
    np.testing.assert_array_equal(table, np.asarray(make()))


@pytest.mark.parametrize("precision,expected", [("highest", {"HIGHEST"}),
                                                ("default", {"DEFAULT"})])
def test_training_and_evaluation_use_the_configured_precision(precision, expected):
  c = smoke_config(matmul_precision=precision)
  mesh = loop.make_mesh(1)
  with jax.set_mesh(mesh), jax.default_matmul_precision("bfloat16"):
    trainer = step_lib.Trainer(c, mesh)
    members = config_lib.members(c)
    state = trainer.init(members)
    table = trainer.task.constants(trainer.replicated)
    alive = trainer.alive([True])
    train = trainer.train_chunk.lower(state, table, alive)
    sets = trainer.eval_sets()
    evaluate = trainer.population_eval().lower(trainer.weights(state), table, sets)
  assert dot_precisions(train) == expected
  assert dot_precisions(evaluate) == expected


def test_the_package_asks_for_deterministic_gpu_kernels_unless_told_otherwise():
  # this process imported the package before JAX started a backend
  assert "--xla_gpu_deterministic_ops=true" in os.environ["XLA_FLAGS"]
  opted_out = run_cli(["-c", "import os, icl_transience, jax; jax.devices(); "
                             "print(os.environ['XLA_FLAGS'])"],
                      env={"XLA_FLAGS": "--xla_gpu_deterministic_ops=false"})
  assert opted_out.returncode == 0, opted_out.stderr
  assert opted_out.stdout.split() == ["--xla_gpu_deterministic_ops=false"]


def test_profile_traces_fused_calls_where_tensorboard_looks(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(smoke_config(), workdir, profile_dir=loop.profile_dir(workdir))
  # a run of the workdir's TensorBoard folder, where the profile plugin looks
  root = tmp_path / "run" / "tensorboard" / "profile" / "plugins" / "profile"
  (run,) = os.listdir(root)
  traces = os.listdir(root / run)
  assert any(name.endswith(".xplane.pb") for name in traces), traces


def test_evaluation_memory_is_bounded_by_the_members_per_pass():
  """8 members evaluated 2 per pass need far less scratch memory than all 8
  at once, and give the same numbers."""
  population = "; ".join(f"init_seed={i}" for i in range(8))
  mesh = loop.make_mesh(1)
  results, scratch = [], []
  with jax.set_mesh(mesh):
    for per_pass in (2, 8):
      c = smoke_config(population=population, eval_members_per_pass=per_pass)
      trainer = step_lib.Trainer(c, mesh)
      state = trainer.init(config_lib.members(c))
      table = trainer.task.constants(trainer.replicated)
      sets = trainer.eval_sets()
      compiled = trainer.population_eval().lower(
          trainer.weights(state), table, sets).compile()
      scratch.append(compiled.memory_analysis().temp_size_in_bytes)
      results.append(trainer.fetch(compiled(trainer.weights(state), table, sets)))
  assert scratch[0] < scratch[1] / 2, scratch
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
    assert a.shape[0] == 8
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
