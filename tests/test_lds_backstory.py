"""Masked backstories (the authors' later LDS training traces, Daniels et
al. 2025): the generator and the loss mask."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_transience import config as config_lib
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall import lds
from icl_transience.proj.lds_recall import task as lds_task

import helpers  # puts configs/ on the path
import lds_recall  # pylint: disable=wrong-import-order

SPEC = lds.LDSSpec(n_train_systems=200)
KEY = jax.random.PRNGKey(0)
SQRT2 = np.float32(math.sqrt(2))
STATE = slice(SPEC.state_start, None)

_traces, _batch = helpers.lds_traces, helpers.lds_batch


@pytest.fixture(scope="module")
def pool():
  return helpers.lds_pool(SPEC)


def test_masked_backstories(pool):
  """The authors' later training traces: the first 10 systems to show an
  observation get, right after that open label, the 7 states before their
  first shown state (U^T backwards), out of the loss; removing them leaves
  the trace the cuts lay out on the 180 remaining positions."""
  spec = lds.LDSSpec(n_train_systems=200, backstory_systems=10, late_start=2)
  base = lds.LDSSpec(n_train_systems=200, context_len=180, late_start=2)
  keys = jax.random.split(KEY, 64)
  story = jax.tree.map(np.asarray, _traces(keys, spec, pool))
  plain = jax.tree.map(np.asarray, _traces(keys, base, pool))
  batch = jax.tree.map(np.asarray, _batch(KEY, spec, pool, 64))
  np.testing.assert_array_equal(batch.inputs, story.tokens[:, :-1])
  np.testing.assert_array_equal(
      batch.mask, (story.tokens[:, 1:, spec.observation_index] == 1) & ~story.hidden[:, 1:])
  n_stories = []
  for t in range(64):
    tokens, hidden = story.tokens[t], story.hidden[t]
    kept = tokens[~hidden]
    np.testing.assert_array_equal(kept[:181], plain.tokens[t])
    np.testing.assert_array_equal(kept[181:], 0)  # zero padding
    label = lambda row: int(np.argmax(row[:50])) // 2
    starts = [r + 1 for r in range(len(tokens) - 1) if hidden[r + 1] and not hidden[r]]
    n_stories.append(len(starts))
    for r in starts:
      assert tokens[r - 1, :50].max() == SQRT2  # after an open label:
      assert int(np.argmax(tokens[r - 1, :50])) % 2 == 0
      assert hidden[r:r + 7].all() and not hidden[r + 7]
      slot = list(story.labels[t]).index(label(tokens[r - 1]))
      u, first = pool.matrices[story.system_ids[t, slot]], tokens[r + 7, STATE]
      np.testing.assert_allclose(first, pool.trajectories[story.system_ids[t, slot], 2],
                                 atol=1e-6)  # the system's first shown state
      states = tokens[r:r + 8, STATE]
      np.testing.assert_allclose(states[1:], states[:-1] @ u.T, atol=1e-5)
      np.testing.assert_array_equal(tokens[r:r + 7, spec.observation_index], 1)
      assert batch.mask[t, r + 6] and not batch.mask[t, r:r + 6].any()
    # the systems so marked are the first to show an observation, in order
    shown = []
    for r in np.flatnonzero(plain.tokens[t, 1:-1, base.observation_index] == 0) + 1:
      nxt = plain.tokens[t, r + 1]
      if plain.tokens[t, r, :50].max() > 0 and nxt[base.observation_index] == 1:
        lab = int(np.argmax(plain.tokens[t, r, :50]))
        if lab % 2 == 0 and lab // 2 not in shown:
          shown.append(lab // 2)
    assert [label(tokens[r - 1]) for r in starts] == shown[:10]
  assert max(n_stories) == 10 and min(n_stories) < 10
  with pytest.raises(UserError, match="lds.backstory_systems"):
    lds.LDSSpec(backstory_systems=40)


def test_backstory_batches_keep_the_backstories_out_of_the_loss():
  """The backstory option at smoke size (2 backstories of 7 states in a
  40-position trace): training batches carry them, out of the loss."""
  c = config_lib.override(lds_recall.get_config("smoke"),
                          {"lds.backstory_systems": 2})
  task = lds_task.LDSTask(c)
  consts = task.constants(None)
  batch = jax.jit(task.sample_batch, static_argnums=3)(KEY, consts, {}, 0)
  observed = np.asarray(batch.inputs[:, 1:, task.spec.observation_index] == 1)
  hidden_targets = observed & ~np.asarray(batch.mask[:, :-1])
  assert hidden_targets.sum() >= 7 * 8  # every trace has at least one backstory
  weights = task.init_weights(KEY)
  loss = jax.jit(lambda b: task.loss(weights, b, {}, 0)[0])
  moved = batch._replace(targets=batch.targets.at[:, :-1].add(
      5.0 * jnp.asarray(hidden_targets)[..., None]))  # the backstory states
  assert np.isfinite(float(loss(batch)))
  np.testing.assert_allclose(loss(moved), loss(batch), rtol=1e-6)
