"""Data parallelism on fake CPU devices: 8 devices train one member like 1
device (same batch); on 2 devices a population split over the members trains
like one split over the batch."""
import textwrap

import jax
import numpy as np

from icl_transience.train import loop

from helpers import fake_devices, final_state, run_cli, smoke_config

SHAPE = dict(batch_size=16, total_sequences=320, eval_every=320, **{"ckpt.every": 0})
POPULATION = "init_seed=1; init_seed=2,lr=3e-3"
SCRIPT = textwrap.dedent("""
    import sys, jax
    sys.path.insert(0, "tests")
    from helpers import smoke_config
    from icl_transience.train import loop, step
    assert jax.device_count() == int(sys.argv[2]), jax.devices()
    for name, fields in eval(sys.argv[3]).items():
      c = smoke_config(**eval(sys.argv[4]), **fields)
      if name == "members":
        assert step.population_layout(c, 2) == "members"
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
  train_on(8, tmp_path, {"eight": {"num_devices": 8}})
  c = smoke_config(**SHAPE)
  loop.train(c, str(tmp_path / "one"))  # here: one device
  eight, one = final_state(c, str(tmp_path / "eight")), final_state(c, str(tmp_path / "one"))
  assert int(eight["step"][0]) == 20
  assert_close(eight, one)


def test_a_population_over_the_devices_trains_like_one_over_the_batch(tmp_path):
  train_on(2, tmp_path, {
      "members": {"num_devices": 2, "population": POPULATION},
      "batch": {"num_devices": 2, "population": POPULATION,
                "population_sharding": "batch"}})
  c = smoke_config(population=POPULATION, **SHAPE)
  assert_close(final_state(c, str(tmp_path / "members")),
               final_state(c, str(tmp_path / "batch")))
