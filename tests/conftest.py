"""Suite-wide setup and shared fixtures.

Set here, before JAX is first imported, and inherited through the
environment by every subprocess a test starts:
- a persistent XLA compilation cache: the suite compiles each program once;
- no XLA backend (LLVM) optimisation, and XLA:CPU's older loop emitters in
  place of its fusion emitters: the tests' programs are tiny and run in
  milliseconds, so optimising them only lengthens their compilation (each
  flag about halves it). Every comparison a test makes is between programs
  compiled alike.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
for _flag in ("--xla_backend_optimization_level=0",
              "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # pylint: disable=wrong-import-position

import helpers  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
  """A finished smoke run (checkpoints at steps 0, 50, 100). Read it only:
  a test that changes a run works on `helpers.copy_run` of it."""
  from icl_transience.train import loop  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("smoke") / "run")
  loop.train(helpers.smoke_config(), workdir)
  return workdir


@pytest.fixture(scope="session")
def omniglot_dir():
  """The Omniglot subsets beside the repository (CI always has them)."""
  if not os.path.isfile(os.path.join(helpers.OMNIGLOT, "images_background_small1.zip")):
    pytest.fail(f"the Omniglot test subsets are missing: expected "
                f"{helpers.OMNIGLOT}/images_background_small{{1,2}}.zip "
                "(the shared/ folder beside the repository)")
  return helpers.OMNIGLOT


@pytest.fixture(scope="session")
def omniglot_subsets(omniglot_dir):  # pylint: disable=redefined-outer-name
  """Both small subsets, decoded once for the whole suite."""
  from icl_transience.proj.transience.omniglot import data as omniglot  # pylint: disable=g-import-not-at-top
  return omniglot.load_archives(omniglot_dir)


# Files whose tests take longest start first, so that the two test workers
# (pytest-xdist, one file each at a time) finish together.
SLOW_FIRST = ("test_multidevice.py", "test_omniglot_task.py",
              "test_reliability.py", "test_resume.py", "test_train.py",
              "test_interventions.py", "test_plateau_task.py", "test_lds_task.py",
              "test_induction_task.py", "test_toy.py", "test_sweep.py",
              "test_monitoring.py", "test_example_task.py", "test_optimizer.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
