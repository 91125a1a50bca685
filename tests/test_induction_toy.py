"""The rank-1 tensor toy model of Singh et al. (ICML 2024), Fig 5a and Fig 9,
in the paper's setup (dim 20, seed 1, lr 1, 1000 steps)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_transience.errors import UserError
from icl_transience.proj.transience.induction_heads import tensor_toy as toy

NONE, C, BC = range(3)  # rows of a run, in toy.CONDITIONS order


@pytest.fixture(scope="module")
def run():
  return toy.solve()


def log_fall(losses, window):
  """The fall in log loss over each window of steps."""
  log = np.log(losses)
  return log[:-window] - log[window:]


def test_clamping_shortens_then_removes_the_plateau(run):
  steps = [toy.steps_to_fraction(run.losses[i]) for i in (NONE, C, BC)]
  assert None not in steps, steps  # every condition reaches 1% within 1000 steps
  assert steps[BC] < steps[C] < steps[NONE], steps
  assert steps[C] < 0.5 * steps[NONE]


def test_unclamped_loss_sits_on_the_saddle_then_drops_faster_than_it_started(run):
  losses = run.losses[NONE]
  # The flat stretch: a (x) b (x) c near zero, where the loss is that of
  # predicting the zero tensor.
  zero_tensor_loss = 0.5 * np.mean(np.einsum("i,j,k->ijk", *run.truth) ** 2)
  np.testing.assert_allclose(losses[100:501], zero_tensor_loss, rtol=0.02)
  # Then the drop, steeper on the plateau's scale (100 steps) than the start.
  # (Per single step the first is the steepest: the random initial tensor
  # decays onto the saddle in a few tens of steps.)
  fall = log_fall(losses, 100)
  assert fall[500:].max() > 2 * fall[0]
  assert losses[-1] < 1e-3 * zero_tensor_loss


def test_clamped_c_stays_true_from_the_start(run):
  with jax.threefry_partitionable(False):
    start, truth = toy.init(toy.TensorToyConfig())
  np.testing.assert_array_equal(run.truth, truth)
  clamped_start = start.at[2].set(truth[2])
  np.testing.assert_allclose(run.losses[C, 0], toy.loss(clamped_start, truth), rtol=1e-6)
  np.testing.assert_array_equal(run.final[C, 2], truth[2])
  np.testing.assert_array_equal(run.final[BC, 1:], truth[1:])
  assert not np.any(run.final[NONE] == truth)
  assert not np.any(run.final[C, :2] == truth[:2])


def test_bc_clamped_loss_decays_geometrically_at_every_step(run):
  # With b = b*, c = c* at every step, a - a* shrinks by (1 - eta) per step,
  # eta = |b*|^2 |c*|^2 / dim^3, so the loss by (1 - eta)^2: any step where b
  # or c left the truth would bend the curve.
  _, b, c = run.truth
  eta = (b @ b) * (c @ c) / b.size ** 3
  t = np.arange(301)
  np.testing.assert_allclose(run.losses[BC, t], run.losses[BC, 0] * (1 - eta) ** (2 * t),
                             rtol=1e-3)


def test_gd_step_overwrites_exactly_the_clamped_vectors():
  key_v, key_t = jax.random.split(jax.random.PRNGKey(0))
  vectors = jax.random.normal(key_v, (3, 4))
  truth = jax.random.normal(key_t, (3, 4))
  step = jax.jit(toy.gd_step)
  for mask in toy.CONDITIONS.values():
    new = np.asarray(step(vectors, truth, jnp.asarray(mask), 1.0))
    for row, clamped in enumerate(mask):
      if clamped:
        np.testing.assert_array_equal(new[row], truth[row])
      else:
        assert not np.allclose(new[row], vectors[row])  # it took a step
        assert not np.allclose(new[row], truth[row])


def test_loss_and_progress_measures_equal_hand_values():
  # a* = (1, 1), b* = c* = (1, 0): T* is 1 at [0,0,0] and [1,0,0], else 0.
  truth = jnp.array([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
  e0 = jnp.array([1.0, 0.0])
  far_bc = jnp.array([5.0, -3.0])
  half = jnp.stack([e0, far_bc, far_bc])            # a at 45 degrees to a*
  flipped = jnp.stack([-truth[0], far_bc, far_bc])  # a = -a*
  loss, misalignment, loss_true_bc = (
      jax.jit(f) for f in (toy.loss, toy.misalignment, toy.loss_true_bc))
  assert float(loss(truth, truth)) == 0
  assert float(loss(jnp.stack([e0, e0, e0]), truth)) == pytest.approx(1 / 16)
  assert float(misalignment(half, truth)) == pytest.approx(0.5)
  assert float(misalignment(flipped, truth)) == pytest.approx(0.0, abs=1e-7)
  # loss at b = b*, c = c*: 1/16 with a = e0, 5/16 with a = -e0: the minimum
  assert float(loss_true_bc(half, truth)) == pytest.approx(1 / 16)
  # a = -a* fits exactly once b (or c) flips sign; at +b*, +c* the loss is 1/2
  assert float(loss_true_bc(flipped, truth)) == pytest.approx(0.0, abs=1e-7)
  assert float(loss(truth.at[0].set(-truth[0]), truth)) == pytest.approx(0.5)


def test_steps_to_fraction():
  assert toy.steps_to_fraction([4.0, 2.0, 0.05, 0.03, 0.01]) == 3
  assert toy.steps_to_fraction([4.0, 2.0, 1.0], fraction=0.25) == 2  # <= counts
  assert toy.steps_to_fraction([1.0, 0.5, 0.2]) is None
  with pytest.raises(UserError, match="^fraction:"):
    toy.steps_to_fraction([1.0, 0.5], fraction=0)
  with pytest.raises(UserError, match="^losses:"):
    toy.steps_to_fraction([])


def test_bad_config_is_one_line_naming_the_argument():
  for kwargs, name in (({"dim": 0}, "dim"), ({"steps": 2.5}, "steps"), ({"lr": -1.0}, "lr")):
    with pytest.raises(UserError, match=f"^{name}: "):
      toy.TensorToyConfig(**kwargs)


def test_write_records_the_run_and_both_figures(run, tmp_path):
  paths = toy.write(run, toy.TensorToyConfig(), str(tmp_path / "out"))
  assert [p.rsplit("/", 1)[1] for p in paths] == [
      toy.RESULT_FILE, toy.LOSS_FIGURE, toy.PROGRESS_FIGURE]
  record = json.loads(open(paths[0]).read())
  assert list(record["conditions"]) == list(toy.CONDITIONS)
  for i, name in enumerate(toy.CONDITIONS):
    entry = record["conditions"][name]
    assert entry["steps_to_1pct"] == toy.steps_to_fraction(run.losses[i])
    assert entry["loss"] == pytest.approx(run.losses[i].tolist())
    assert len(entry["misalignment"]) == len(entry["loss_true_bc"]) == 1001
  assert record["conditions"]["bc"]["clamped"] == ["b", "c"]
  for path in paths[1:]:
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp")]
