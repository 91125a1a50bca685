"""Data parallelism on fake CPU devices: 8 devices train one member like 1
device (same batch); on 2 devices a population split over the members trains
like one split over the batch."""
import textwrap

from helpers import fake_devices, run_cli

SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    sys.path.insert(0, "tests")
    from helpers import smoke_config, final_state
    from icl_transience.train import loop, step
    assert jax.device_count() == 8, jax.devices()

    def train(name, **fields):
      c = smoke_config(batch_size=16, total_sequences=320, eval_every=320,
                       **{"ckpt.every": 0}, **fields)
      loop.train(c, f"{sys.argv[1]}/{name}")
      return c, final_state(c, f"{sys.argv[1]}/{name}")

    def assert_close(a, b, atol=1e-6):
      # Reduction order differs between layouts; Adam amplifies the float
      # noise of near-zero gradients (20 steps of lr 1e-3 move params ~2e-2).
      for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol)

    _, eight = train("one_8", num_devices=8)
    _, one = train("one_1", num_devices=1)
    assert int(eight["step"][0]) == 20
    assert_close(eight, one)
    print("EQUAL")
    population = "init_seed=1; init_seed=2,lr=3e-3"
    c, members = train("members", num_devices=2, population=population)
    assert step.population_layout(c, 2) == "members"
    _, batch = train("batch", num_devices=2, population=population,
                     population_sharding="batch")
    assert_close(members, batch)
    print("EQUAL")
""")


def test_fake_devices_train_like_one(tmp_path):
  result = run_cli(["-c", SCRIPT, str(tmp_path)], env=fake_devices(8))
  assert result.returncode == 0, result.stderr[-3000:]
  # one member over 8 devices; a population over the batch and over members
  assert result.stdout.count("EQUAL") == 2
