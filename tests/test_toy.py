"""The minimal coopetition model reproduces the published dynamics exactly."""
import numpy as np

from icl_transience.proj.transience import toy_model as toy


def test_seed_7_stops_at_9620_with_the_transient_pattern():
  stops, history = toy.solve([7])
  assert stops[0] == 9620
  h = history[0]
  np.testing.assert_allclose(h[0, :3], [0.558, 0.750, 0.567], atol=1e-3)
  np.testing.assert_allclose(h[2000, :3], [0.105, 0.2257, 0.322], atol=1e-3)
  l1, l2 = h[:, 1], h[:, 2]
  assert 5600 < np.argmin(l1[:9620]) < 5700 and l1[5658] < 0.003  # ICL learned...
  assert abs(l1[9620] - 0.216) < 0.002                            # ...then lost
  divot = l2[4500:4900]
  assert divot.argmin() < divot.argmax()  # L2 dips, then rises, while L1 falls
  assert 0.308 < divot.min() < 0.311 and 0.319 < divot.max() < 0.322
  # after the stop the trajectory is frozen
  np.testing.assert_array_equal(h[-1], h[9620])


def test_default_threefry_mode_is_left_alone():
  import jax  # pylint: disable=g-import-not-at-top
  before = jax.config.jax_threefry_partitionable
  toy.solve([0], toy.ToyConfig(max_steps=10))
  assert jax.config.jax_threefry_partitionable == before
