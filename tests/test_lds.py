"""Interleaved-LDS generator, resume prompts, pseudo-inverse baseline.

Daniels et al. 2025, our pseudo-inverse baseline table and our acceptance
checks.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from helpers import zipf_exponent_fit

from icl_transience.proj.lds_recall import lds
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall import lds_baseline
from icl_transience.proj.lds_recall import lds_prompts

SPEC = lds.LDSSpec(n_train_systems=200)
FRESH = lds.LDSSpec(resample_trajectories=True, late_start=3)  # x_3 .. x_250
N_TRACES = 256
KEY = jax.random.PRNGKey(0)
SQRT2 = np.float32(math.sqrt(2))
STATE = slice(SPEC.state_start, None)
NEEDLE = dict(haystack_len=3, n_examples=4, n_trials=8)
# Our baseline table: pseudo-inverse median error of the k-th observation,
# k = 1..8.
PINV_MEDIANS = (0.863, 0.863, 0.673, 0.468, 0.288, 0.099, 0.0, 0.0)

_traces, _batch = helpers.lds_traces, helpers.lds_batch


@pytest.fixture(scope="module")
def pool():
  return helpers.lds_pool(SPEC)


@pytest.fixture(scope="module")
def traces(pool):
  out = _traces(jax.random.split(KEY, N_TRACES), SPEC, pool)
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def prompts():
  """Every variant (and the single-system control) of one example (H = 3)
  at configurations 0 and 2, from one jit."""
  @jax.jit
  def build(key, example, config):
    out = {}
    for name in lds_prompts.VARIANTS:
      spec = lds_prompts.variant(name, **NEEDLE)
      out[name] = (lds_prompts.needle_prompts(key, spec, example, config),
                   lds_prompts.prompt_systems(key, spec, example))
    spec = lds_prompts.NeedleSpec(**NEEDLE)
    out["single_system"] = (
        lds_prompts.single_system_prompts(key, spec, example),
        lds_prompts.prompt_systems(key, spec, example))
    return out
  get = lambda *a: jax.tree.map(np.asarray, build(*a))
  return {"c0": get(KEY, 1, 0), "c2": get(KEY, 1, 2),
          "other_key": get(jax.random.PRNGKey(1), 1, 0),
          "example0": get(KEY, 0, 0)}


def parse(tokens, n_labels=25):
  """[(label, observation rows, end)] of one token sequence, end in closed |
  open (cut by the context end) | lone (a close label alone); asserts the
  open / observations / close grammar."""
  segments, open_segment = [], None
  for row, token in enumerate(tokens[1:], start=1):
    labels = token[:2 * n_labels]
    if token[SPEC.observation_index] == 1:
      assert open_segment is not None, f"observation outside segment: {row}"
      open_segment[1].append(row)
      continue
    (index,) = np.flatnonzero(labels)
    if index % 2 == 0:
      assert open_segment is None, f"open label inside a segment, row {row}"
      open_segment = (index // 2, [])
    elif open_segment is None:
      segments.append((index // 2, [], "lone"))
    else:
      assert open_segment[0] == index // 2, f"close of another label, row {row}"
      segments.append(open_segment + ("closed",))
      open_segment = None
  if open_segment is not None:
    segments.append(open_segment + ("open",))
  return segments


def observations(tokens):
  """Per row: the observation's label (-1: no observation), its index among
  that label's observations and the row of the label's previous observation
  (-1: none); plus how many segments resume a label shown before."""
  n_rows = len(tokens)
  label, index, previous = (np.full(n_rows, -1), np.zeros(n_rows, int),
                            np.full(n_rows, -1))
  count, last, resumed = {}, {}, 0
  for segment_label, rows, _ in parse(tokens):
    resumed += bool(rows) and segment_label in count
    for row in rows:
      label[row], index[row] = segment_label, count.get(segment_label, 0)
      previous[row] = last.get(segment_label, -1)
      count[segment_label], last[segment_label] = index[row] + 1, row
  return label, index, previous, resumed


def check_continuation(tokens, matrix_by_label, trajectory_by_label):
  """Each label's observations, over all its segments, are x_0, x_1, ... of
  its trajectory (exactly) with x_{t+1} = U x_t; returns the resumptions."""
  label, index, previous, resumed = observations(tokens)
  rows = np.flatnonzero(label >= 0)
  states = tokens[:, STATE]
  np.testing.assert_array_equal(
      states[rows], trajectory_by_label[label[rows], index[rows]])
  rows = rows[previous[rows] >= 0]
  np.testing.assert_allclose(
      np.einsum("rij,rj->ri", matrix_by_label[label[rows]],
                states[previous[rows]]), states[rows], atol=2e-5)
  return resumed


def test_trace_token_layout_and_labels(traces):
  tokens = traces.tokens
  assert tokens.shape == (N_TRACES, 251, 57) and tokens.dtype == np.float32
  assert traces.n_systems.dtype == np.int32
  start = np.asarray(lds.start_token(SPEC))
  np.testing.assert_array_equal(tokens[:, 0], np.tile(start, (N_TRACES, 1)))
  assert tokens[0, 0, 50] == SQRT2
  body = tokens[:, 1:]
  is_obs = body[..., 51] == 1
  np.testing.assert_array_equal(body[is_obs][:, :51], 0)
  labels = body[~is_obs]
  np.testing.assert_array_equal(labels[:, 50:], 0)
  assert ((labels[:, :50] != 0).sum(1) == 1).all()  # exactly one label slot
  assert set(np.unique(labels[:, :50])) == {0, SQRT2}
  assert (np.abs(body).sum(-1) > 0).all()  # the cuts fill the whole context
  for trace in range(N_TRACES):
    n = traces.n_systems[trace]
    assert 1 <= n <= 25
    np.testing.assert_array_equal(np.sort(traces.labels[trace]), np.arange(25))
    ids = traces.system_ids[trace]
    assert len(set(ids)) == 25 and ids.min() >= 0 and ids.max() < 200
    used = {label for label, _, _ in parse(tokens[trace])}
    assert used <= set(traces.labels[trace, :n])


def test_segments_continue_their_system_exactly(traces, pool):
  n_resumed = 0
  for trace in range(N_TRACES):
    by_label = traces.system_ids[trace][np.argsort(traces.labels[trace])]
    n_resumed += check_continuation(traces.tokens[trace],
                                    pool.matrices[by_label],
                                    pool.trajectories[by_label])
    np.testing.assert_array_equal(traces.matrices[trace],
                                  pool.matrices[traces.system_ids[trace]])
  assert n_resumed > N_TRACES  # many segments resume an earlier system


def test_pool_systems_are_haar_orthogonal(pool):
  u = pool.matrices
  np.testing.assert_allclose(u @ u.transpose(0, 2, 1),
                             np.broadcast_to(np.eye(5), u.shape), atol=2e-6)
  det = np.linalg.det(u)
  np.testing.assert_allclose(np.abs(det), 1, atol=1e-5)
  assert 0.35 < (det < 0).mean() < 0.65       # both components of O(5)
  assert abs(np.trace(u, axis1=1, axis2=2).mean()) < 0.25  # E tr U = 0
  norms = np.linalg.norm(pool.trajectories, axis=-1)
  assert pool.trajectories.shape == (200, 251, 5)
  np.testing.assert_allclose(norms, norms[:, :1].repeat(251, 1), rtol=1e-4)
  assert 0.85 < (norms[:, 0] ** 2).mean() < 1.15  # x_0 ~ N(0, I/5)
  prefix = jax.jit(lds.make_pool, static_argnums=(1, 2))(
      jax.random.PRNGKey(7), SPEC, 20)
  np.testing.assert_array_equal(prefix.matrices, u[:20])


def test_loss_mask_and_batch(traces, pool):
  batch = jax.tree.map(np.asarray, _batch(KEY, SPEC, pool, N_TRACES))
  assert batch.inputs.shape == (N_TRACES, 250, 57)
  assert batch.targets.shape == (N_TRACES, 250, 5) and batch.mask.dtype == bool
  np.testing.assert_array_equal(batch.inputs, traces.tokens[:, :-1])
  np.testing.assert_array_equal(batch.targets, traces.tokens[:, 1:, STATE])
  next_is_obs = traces.tokens[:, 1:, SPEC.observation_index] == 1
  np.testing.assert_array_equal(batch.mask, next_is_obs)
  np.testing.assert_array_equal(batch.targets[~batch.mask], 0)
  assert (np.abs(batch.targets[batch.mask]).sum(-1) > 0).all()
  assert not batch.mask[np.arange(N_TRACES), 0].any()  # start -> a label
  errors = np.asarray(lds.position_errors(np.zeros_like(batch.targets), batch))
  np.testing.assert_allclose(errors, (batch.targets ** 2).sum(-1), rtol=1e-6)


def test_another_key_samples_other_traces(pool):
  a = jax.tree.map(np.asarray, _batch(KEY, SPEC, pool, N_TRACES))
  c = jax.tree.map(np.asarray,
                   _batch(jax.random.PRNGKey(1), SPEC, pool, N_TRACES))
  assert not np.array_equal(a.inputs, c.inputs)


def test_systems_per_trace_follow_zipf(pool):
  count = jax.jit(jax.vmap(lambda k, p: lds.sample_trace(k, SPEC, p).n_systems,
                           in_axes=(0, None)))
  n_systems = np.asarray(count(jax.random.split(KEY, 20_000), pool))
  exponent, se = zipf_exponent_fit(n_systems, SPEC.max_systems)  # se ~ 0.01
  assert abs(exponent - SPEC.zipf_exponent) < 4 * se, (exponent, se)


def test_resampled_trajectories_continue_exactly():
  out = jax.tree.map(np.asarray,
                     _traces(jax.random.split(KEY, 16), FRESH, None))
  assert (out.system_ids == -1).all()
  assert out.trajectories.shape == (16, 25, 251, 5)
  u = out.matrices
  np.testing.assert_allclose(u @ u.transpose(0, 1, 3, 2),
                             np.broadcast_to(np.eye(5), u.shape), atol=2e-6)
  assert not np.allclose(u[0], u[1])
  for trace in range(16):
    by_label = np.argsort(out.labels[trace])
    check_continuation(out.tokens[trace], u[trace, by_label],
                       out.trajectories[trace, by_label, FRESH.late_start:])


def test_user_errors_name_the_field():
  with pytest.raises(UserError, match="trajectory_len"):
    lds.LDSSpec(late_start=5)
  with pytest.raises(UserError, match="n_train_systems"):
    lds.LDSSpec(n_train_systems=10)
  with pytest.raises(UserError, match="state_dim"):
    lds.LDSSpec(state_dim=0)
  with pytest.raises(UserError, match="pool"):
    lds.sample_trace(KEY, SPEC, None)
  with pytest.raises(UserError, match="query_label"):
    lds_prompts.NeedleSpec(query_label="bogus")
  with pytest.raises(UserError, match="exceeds"):
    lds_prompts.NeedleSpec(haystack_len=20, n_examples=10)
  with pytest.raises(UserError, match="n_test_systems"):
    lds_prompts.NeedleSpec(haystack_len=19, n_examples=90)
  with pytest.raises(UserError, match="unknown needle variant"):
    lds_prompts.variant("nope")
  with pytest.raises(UserError, match="window"):
    lds_baseline.pseudo_inverse_predict(jnp.zeros((3, 57)), window=1)


def blocks(tokens, spec):
  """(H + 1) row blocks [open .. close] of each prompt segment."""
  width = spec.segment_len + 2
  haystack = [tokens[:, 1 + width * j:1 + width * (j + 1)]
              for j in range(spec.haystack_len)]
  return haystack + [tokens[:, spec.query_row:]]


def open_label(block):
  return int(np.flatnonzero(block[0, 0, :50])[0]) // 2


def test_needle_prompts_layout_rotation_and_keys(prompts):
  spec = lds_prompts.variant("normal", **NEEDLE)
  tokens, systems = prompts["c0"]["normal"]
  assert tokens.shape == (8, 1 + 12 * 4, 57) == (8, spec.prompt_len, 57)
  assert not np.allclose(tokens, prompts["other_key"]["normal"][0])
  for trial in range(8):
    shown = [label for label, _, _ in parse(tokens[trial])]
    assert shown == list(systems.labels[[0, 1, 2, 0]])
  u = systems.matrices
  np.testing.assert_array_equal(tokens[:, 2, STATE], systems.anchor_states[0])
  last_needle = tokens[:, spec.needle_row(0) + 10, STATE]
  query = tokens[:, spec.query_row + 1:spec.query_row + 11, STATE]
  np.testing.assert_allclose(last_needle @ u[0].T, query[:, 0], atol=2e-5)
  np.testing.assert_allclose(query[:, :-1] @ u[0].T, query[:, 1:], atol=2e-5)
  rotated = blocks(prompts["c2"]["normal"][0], spec)
  for position, block in enumerate(blocks(tokens, spec)[:3]):
    np.testing.assert_array_equal(rotated[(position + 2) % 3], block)
  np.testing.assert_array_equal(rotated[3], blocks(tokens, spec)[3])


def test_needle_variants(prompts):
  spec = lds_prompts.NeedleSpec(**NEEDLE)
  c0 = prompts["c0"]
  normal, systems = c0["normal"]
  query_obs = lambda t: t[:, spec.query_row + 1:spec.query_row + 11, STATE]
  tokens, _ = c0["misdirected_label"]
  assert open_label(blocks(tokens, spec)[3]) == systems.labels[1]
  assert systems.labels[1] != systems.labels[0]
  np.testing.assert_array_equal(query_obs(tokens), query_obs(normal))
  tokens, _ = c0["unseen_label"]
  assert open_label(blocks(tokens, spec)[3]) not in set(systems.labels[:3])
  np.testing.assert_array_equal(query_obs(tokens), query_obs(normal))
  tokens, _ = c0["shared_labels"]
  assert {label for label, _, _ in parse(tokens[0])} == {systems.labels[0]}
  tokens, unseen = c0["unseen_system"]
  assert open_label(blocks(tokens, spec)[3]) not in set(systems.labels[:3])
  q = query_obs(tokens)
  np.testing.assert_allclose(q[:, :-1] @ unseen.matrices[3].T, q[:, 1:],
                             atol=2e-5)
  assert not np.allclose(q, query_obs(normal), atol=1e-3)
  tokens, sync = c0["synchronised"]
  shared = sync.anchor_states[0]
  for block in blocks(tokens, spec)[:3]:
    slot = list(sync.labels).index(open_label(block))
    np.testing.assert_allclose(block[:, 10, STATE] @ sync.matrices[slot].T,
                               shared, atol=2e-5)
  np.testing.assert_allclose(query_obs(tokens)[:, 0], shared, atol=2e-6)
  _, opposite = c0["opposite_systems"]
  np.testing.assert_allclose(opposite.matrices[1], -opposite.matrices[0])
  np.testing.assert_allclose(opposite.matrices[3], -opposite.matrices[2])
  _, fixed = c0["fix_needle"]
  example0 = prompts["example0"]["normal"][1]
  np.testing.assert_array_equal(fixed.matrices[0], example0.matrices[0])
  np.testing.assert_array_equal(fixed.matrices[1:], systems.matrices[1:])
  tokens, late = c0["late_start"]
  np.testing.assert_allclose(tokens[:, 2, STATE],
                             late.anchor_states[0] @ late.matrices[0].T,
                             atol=2e-6)


def test_single_system_prompts_fill_the_context(prompts):
  tokens, systems = prompts["c0"]["single_system"]
  assert tokens.shape == (8, 251, 57)
  (segment,) = parse(tokens[0])
  assert len(segment[1]) == 248 and segment[2] == "closed"
  np.testing.assert_array_equal(tokens[:, 2, STATE], systems.anchor_states[0])
  obs = tokens[:, 2:250, STATE]
  np.testing.assert_allclose(obs[:, :-1] @ systems.matrices[0].T, obs[:, 1:],
                             atol=2e-5)


def test_step_errors_on_hand_made_predictors(prompts):
  spec = lds_prompts.NeedleSpec(**NEEDLE)
  tokens = prompts["c2"]["normal"][0]
  oracle = tokens[:, 1:, STATE]  # knows every next state
  errors = np.asarray(
      lds_prompts.prediction_errors(oracle, tokens, spec.lds_spec))
  assert errors.shape == (8, spec.prompt_len - 1) and (errors == 0).all()
  delta = np.array([0.3, 0, 0, 0.4, 0], np.float32)  # |delta|^2 = 0.25
  nudged = oracle.copy()
  nudged[:, spec.query_row] += delta             # 1st after final
  nudged[:, spec.needle_row(2) + 1] += delta     # 2nd after initial (config 2)
  errors = lds_prompts.prediction_errors(nudged, tokens, spec.lds_spec)
  final = np.asarray(lds_prompts.after_final(errors, spec))
  initial = np.asarray(lds_prompts.after_initial(errors, spec, config=2))
  np.testing.assert_allclose(final, np.tile([0.25] + [0] * 9, (8, 1)),
                             atol=1e-6)
  np.testing.assert_allclose(initial, np.tile([0, 0.25] + [0] * 8, (8, 1)),
                             atol=1e-6)
  zero = lds_prompts.prediction_errors(np.zeros_like(oracle), tokens,
                                       spec.lds_spec)
  np.testing.assert_allclose(
      lds_prompts.after_final(zero, spec, steps=[1, 3]),
      (tokens[:, [spec.query_row + 1, spec.query_row + 3], STATE] ** 2).sum(-1),
      rtol=1e-6)
  step_errors = np.random.default_rng(0).exponential(size=(6, 7, 4))
  medians = np.asarray(lds_prompts.trial_medians(step_errors))
  np.testing.assert_allclose(medians, np.median(step_errors, axis=1), rtol=1e-6)
  np.testing.assert_allclose(lds_prompts.example_quartiles(medians),
                             np.percentile(medians, [25, 50, 75], axis=0),
                             rtol=1e-5)


def fresh_system_errors(key, n_systems: int, n_steps: int = 8,
                        spec: lds.LDSSpec = lds.LDSSpec(),
                        window: int = lds_baseline.WINDOW,
                        recall_after: int = lds_baseline.RECALL_AFTER) -> jax.Array:
  """(n_systems, n_steps) errors of the k-th observation of a fresh system
  (our pseudo-inverse baseline table): prompts
  [start, open, x_0 .. x_{n_steps - 1}]."""
  _, trajectories = lds.fresh_systems(key, spec, n_systems, n_steps)
  kinds = jnp.array([lds.OPEN] + [lds.OBSERVATION] * n_steps)
  states = jnp.concatenate(
      [jnp.zeros((n_systems, 1, spec.state_dim)), trajectories], axis=1)
  rows = lds.token_rows(spec, kinds, 0, states)
  start = jnp.broadcast_to(lds.start_token(spec),
                           (n_systems, 1, spec.token_dim))
  tokens = jnp.concatenate([start, rows], axis=1)
  return lds_baseline.pseudo_inverse_errors(tokens, spec, window, recall_after)[:, 1:]


def test_pseudo_inverse_medians_match_table():
  fresh = jax.jit(fresh_system_errors, static_argnums=(1, 2))
  errors = np.asarray(fresh(jax.random.PRNGKey(3), 16_000, 8))
  np.testing.assert_allclose(np.median(errors, 0), PINV_MEDIANS, atol=0.03)
  means = [1.0] + [(7 - k) / 5 for k in range(2, 7)] + [0, 0]
  np.testing.assert_allclose(errors.mean(0), means, atol=0.03)
  assert (errors[:, 6:] == 0).all()  # >= 6 observations: recall is perfect


def test_pseudo_inverse_on_training_traces_and_needles(traces):
  errors = np.asarray(
      jax.jit(lds_baseline.pseudo_inverse_errors)(traces.tokens))
  mask = traces.tokens[:, 1:, SPEC.observation_index] == 1
  assert abs(errors[mask].mean() - 0.055) < 0.008  # Daniels et al. 2025's pseudo-inverse baseline
  assert abs(errors.mean() - 0.051) < 0.008
  spec = lds_prompts.NeedleSpec(**NEEDLE)
  stats = lds_prompts.needle_statistics(
      jax.jit(lds_baseline.pseudo_inverse_predict), KEY, spec)
  assert stats.after_final.shape == stats.after_initial.shape == (4, 10)
  assert (stats.after_final < 1e-4).all()      # the needle's system is recalled
  assert (stats.after_initial[:, 6:] < 1e-4).all()
  assert (stats.after_initial[:, :2] > 0.2).all()  # first two: nothing to go on
