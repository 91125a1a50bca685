"""Data parallelism: 8 fake CPU devices train like 1 device (same batch)."""
import textwrap

from helpers import run_cli

SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    sys.path.insert(0, "tests")
    from helpers import smoke_config, final_state
    from icl_transience.train import loop
    assert jax.device_count() == 8, jax.devices()
    for population in ("", "init_seed=1; init_seed=2,lr=3e-3"):
      out = {}
      for n in (8, 1):
        c = smoke_config(num_devices=n, batch_size=16, total_sequences=320,
                         eval_every=160, population=population,
                         **{"ckpt.every": 160})
        workdir = f"{sys.argv[1]}/{len(population)}_{n}"
        loop.train(c, workdir)
        out[n] = final_state(c, workdir)
      assert int(out[8]["step"][0]) == 20
      for a, b in zip(jax.tree.leaves(out[8]["params"]),
                      jax.tree.leaves(out[1]["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
      print("EQUAL")
""")


def test_eight_devices_match_one(tmp_path):
  result = run_cli(["-c", SCRIPT, str(tmp_path)], env={
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
      "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.count("EQUAL") == 2  # one member, and a population
