"""Data parallelism: 8 fake CPU devices train like 1 device (same batch), and
a population split over the devices trains like a replicated one."""
import textwrap

from helpers import run_cli

SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    sys.path.insert(0, "tests")
    from helpers import smoke_config, final_state
    from icl_transience.train import loop, step
    assert jax.device_count() == 8, jax.devices()

    def train(name, **fields):
      c = smoke_config(batch_size=16, total_sequences=320, eval_every=160,
                       **{"ckpt.every": 160}, **fields)
      loop.train(c, f"{sys.argv[1]}/{name}")
      return c, final_state(c, f"{sys.argv[1]}/{name}")

    def assert_close(a, b, atol=1e-6):
      # Reduction order differs between layouts; Adam amplifies the float
      # noise of near-zero gradients (20 steps of lr 1e-3 move params ~2e-2).
      for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol)

    for i, population in enumerate(("", "init_seed=1; init_seed=2,lr=3e-3")):
      _, eight = train(f"{i}_8", num_devices=8, population=population)
      _, one = train(f"{i}_1", num_devices=1, population=population)
      assert int(eight["step"][0]) == 20
      assert_close(eight, one)
      print("EQUAL")
    population = "; ".join(f"init_seed={s}" for s in range(8))
    c, members = train("members", population=population)
    assert step.population_layout(c, 8) == "members"
    _, batch = train("batch", population=population, population_sharding="batch")
    assert_close(members, batch, atol=5e-5)
    print("EQUAL")
""")


def test_eight_devices_match_one(tmp_path):
  result = run_cli(["-c", SCRIPT, str(tmp_path)], env={
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
      "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  # one member, a population over the batch, a population over the devices
  assert result.stdout.count("EQUAL") == 3
