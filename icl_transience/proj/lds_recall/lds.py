"""Interleaved linear dynamical systems with symbolic labels (Daniels et al. 2025).

Systems are x_{t+1} = U x_t with U Haar-orthogonal, C = I, no noise and
x_0 ~ N(0, I/n). A trace is `context_len + 1` tokens of size 2M + 2 + n
(57 for the defaults M = 25 labels, n = 5): index 2k / 2k+1 is the open / close
label of label id k, index 2M the start token (all three of value sqrt 2),
index 2M+1 the observation flag (1) and the last n indices the state.

Training trace: the start token, then segments [open(s), x_t .. x_{t+l-1},
close(s)] laid out by Poisson cuts over the context; a segment continues its
system where that system's previous segment stopped. The model sees
tokens[:-1] and is scored on tokens[1:] states where the next token is an
observation (the loss mask).

Masked backstories (the authors' later runs): the trace is laid out on
context_len - backstory_systems * backstory_len positions; then, in segment
order, the first non-empty segment of each of the first backstory_systems
systems gets the backstory_len states that precede its first shown state
(U^T run backwards) right after its open label, formatted as observations
but kept out of the loss; the end is zero-padded to context_len.

The layout is closed-form rather than a scan over positions: a position's
segment is the number of cut points at or before it, and a segment's first
time index is an exclusive cumulative sum of the observations that earlier
segments of its system showed. The authors' "trajectory runs out" and "segment
runs past the context" branches cannot trigger when
late_start + context_len - 2 <= trajectory_len (checked), so they are absent.
"""
import dataclasses
import itertools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from icl_transience.errors import UserError

OPEN, OBSERVATION, CLOSE = 0, 1, 2
HIGHEST = jax.lax.Precision.HIGHEST  # no TF32: trajectories stay orthogonal


@dataclasses.dataclass(frozen=True)
class LDSSpec:
  """The trace generator (hashable: a static jit argument)."""
  state_dim: int = 5
  max_systems: int = 25            # label ids; Zipf support {1..max_systems}
  context_len: int = 250           # model positions; a trace has one more token
  trajectory_len: int = 251        # states x_0 .. x_250 per trajectory
  n_train_systems: int = 40_000    # the fixed pool, one trajectory per system
  zipf_exponent: float = 1.5       # P(N = k) ~ k^-a, N = systems in a trace
  cuts_per_system: float = 2.0     # cut count ~ Poisson(cuts_per_system * N)
  max_cuts: int = 125              # cap on the cut count (context_len / 2)
  label_value: float = math.sqrt(2)
  late_start: int = 0              # first trajectory index a trace shows
  resample_trajectories: bool = False  # fresh systems and states every trace
  backstory_systems: int = 0       # systems given a masked backstory (authors: 10)
  backstory_len: int = 7           # states per backstory

  @property
  def base_len(self) -> int:
    """Positions laid out by the cuts (backstories fill the rest)."""
    return self.context_len - self.backstory_systems * self.backstory_len

  def __post_init__(self):
    for name in ("state_dim", "max_systems", "trajectory_len",
                 "n_train_systems"):
      if getattr(self, name) < 1:
        raise UserError(f"lds.{name} must be >= 1, got {getattr(self, name)}")
    if self.context_len < 2:
      raise UserError(f"lds.context_len must be >= 2, got {self.context_len}")
    for name in ("zipf_exponent", "cuts_per_system", "max_cuts", "late_start",
                 "backstory_systems", "backstory_len"):
      if getattr(self, name) < 0:
        raise UserError(f"lds.{name} must be >= 0, got {getattr(self, name)}")
    if self.n_train_systems < self.max_systems:
      raise UserError(f"lds.n_train_systems ({self.n_train_systems}) must be "
                      f">= lds.max_systems ({self.max_systems})")
    if self.backstory_systems and self.base_len < 2:
      raise UserError(
          f"lds.backstory_systems: {self.backstory_systems} backstories of "
          f"{self.backstory_len} states leave {self.base_len} of the "
          f"{self.context_len} positions for the trace")
    if self.late_start + self.context_len - 2 > self.trajectory_len:
      raise UserError(
          f"lds.trajectory_len ({self.trajectory_len}) must be >= late_start "
          f"+ context_len - 2 = {self.late_start + self.context_len - 2}")

  @property
  def token_dim(self) -> int:
    return 2 * self.max_systems + 2 + self.state_dim

  @property
  def start_index(self) -> int:
    return 2 * self.max_systems

  @property
  def observation_index(self) -> int:
    return 2 * self.max_systems + 1

  @property
  def state_start(self) -> int:
    return 2 * self.max_systems + 2


class LDSPool(NamedTuple):
  matrices: jax.Array      # (S, n, n) orthogonal system matrices
  trajectories: jax.Array  # (S, T, n) states x_0 .. x_{T-1}


class LDSTrace(NamedTuple):
  tokens: jax.Array        # (context_len + 1, token_dim) float32
  hidden: jax.Array        # (context_len + 1,) bool: a backstory state (no loss)
  n_systems: jax.Array     # () int32: the trace uses slots [0, n_systems)
  system_ids: jax.Array    # (max_systems,) int32 pool index (-1: fresh)
  labels: jax.Array        # (max_systems,) int32 label id per slot
  matrices: jax.Array      # (max_systems, n, n) the system of each slot
  trajectories: jax.Array  # (max_systems, T, n) if fresh, else (0, T, n)


class LDSBatch(NamedTuple):
  inputs: jax.Array        # (..., context_len, token_dim)
  targets: jax.Array       # (..., context_len, state_dim)
  mask: jax.Array          # (..., context_len) bool: next token is observed


def haar_orthogonal(normal) -> jax.Array:
  """U = Q diag(sign diag R) from the QR of a standard normal matrix."""
  q, r = jnp.linalg.qr(normal)
  return q * jnp.sign(jnp.diag(r))[None, :]


def system_from_normals(normal) -> tuple[jax.Array, jax.Array]:
  """(U, x_0) from an (n + 1, n) standard normal draw: x_0 ~ N(0, I/n)."""
  dim = normal.shape[-1]
  return haar_orthogonal(normal[:dim]), normal[dim] / math.sqrt(dim)


def _iterate(matrix, state, steps: int) -> jax.Array:
  """[state, M state, ..., M^(steps-1) state]."""
  def step(x, _):
    return jnp.dot(matrix, x, precision=HIGHEST), x
  return jax.lax.scan(step, state, None, length=steps)[1]


def rollout(matrix, state, length: int, anchor_time: int = 0) -> jax.Array:
  """x_0 .. x_{length-1} of x_{t+1} = U x_t where x_{anchor_time} = state."""
  forward = _iterate(matrix, state, length - anchor_time)
  if anchor_time == 0:
    return forward
  backward = _iterate(matrix.T, state, anchor_time + 1)[1:][::-1]
  return jnp.concatenate([backward, forward])


def fresh_systems(key, spec: LDSSpec, n_systems: int,
                  length: Optional[int] = None) -> LDSPool:
  """n_systems new systems with one trajectory each (one threefry call)."""
  normals = jax.random.normal(
      key, (n_systems, spec.state_dim + 1, spec.state_dim))
  return _pool(jax.vmap(system_from_normals)(normals),
               spec.trajectory_len if length is None else length)


def make_pool(key, spec: LDSSpec, n_systems: Optional[int] = None,
              length: Optional[int] = None) -> LDSPool:
  """The training pool: n_systems (default n_train_systems) systems.

  System i depends only on (key, i), so a smaller pool is a prefix of a larger.
  """
  n = spec.n_train_systems if n_systems is None else n_systems
  normals = jax.vmap(lambda i: jax.random.normal(
      jax.random.fold_in(key, i), (spec.state_dim + 1, spec.state_dim)))(
          jnp.arange(n))
  return _pool(jax.vmap(system_from_normals)(normals),
               spec.trajectory_len if length is None else length)


def _pool(systems, length: int) -> LDSPool:
  matrices, states = systems
  trajectories = jax.vmap(lambda m, x: rollout(m, x, length))(matrices, states)
  return LDSPool(matrices, trajectories)


def start_token(spec: LDSSpec) -> jax.Array:
  return jnp.zeros((spec.token_dim,)).at[spec.start_index].set(spec.label_value)


def token_rows(spec: LDSSpec, kind, label, states) -> jax.Array:
  """Token rows from per-row kind (OPEN/OBSERVATION/CLOSE), label id and state
  (kind and label broadcast against the leading axes of states)."""
  kind = jnp.broadcast_to(kind, states.shape[:-1])
  label = jnp.broadcast_to(label, states.shape[:-1])
  is_observation = kind == OBSERVATION
  label_index = 2 * label + (kind == CLOSE)
  labels = jax.nn.one_hot(label_index, 2 * spec.max_systems) * spec.label_value
  labels = labels * (~is_observation)[..., None]
  flag = is_observation[..., None].astype(jnp.float32)
  states = jnp.where(is_observation[..., None], states, 0.0)
  return jnp.concatenate([labels, jnp.zeros_like(flag), flag, states], axis=-1)


def permutation(bits) -> jax.Array:
  """A uniformly random permutation of range(len(bits)) from uint32 words."""
  return jnp.argsort(bits).astype(jnp.int32)


def _unit(bits) -> jax.Array:
  """Uniform [0, 1) floats from uint32 words (24 bits each)."""
  return (bits >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def _below(bits, n) -> jax.Array:
  """Uniform integers in [0, n) from uint32 words (bias <= n / 2^32)."""
  return (bits % jnp.asarray(n).astype(jnp.uint32)).astype(jnp.int32)


def _inverse_cdf(weights, u) -> jax.Array:
  """Index k with probability weights[k] / sum(weights), by inversion."""
  cdf = jnp.cumsum(weights) / jnp.sum(weights)
  return jnp.sum(cdf[:-1] <= u).astype(jnp.int32)


def _capped_poisson(rate, cap: int, u) -> jax.Array:
  """min(Poisson(rate), cap) by inverting the CDF on {0..cap-1}."""
  k = jnp.arange(cap, dtype=jnp.float32)
  log_pmf = jax.scipy.special.xlogy(k, rate) - rate - jax.lax.lgamma(k + 1)
  return jnp.sum(jnp.cumsum(jnp.exp(log_pmf)) <= u).astype(jnp.int32)


def _distinct_indices(bits, n_total: int) -> jax.Array:
  """len(bits) distinct indices of [0, n_total), in uniformly random order.

  The i-th pick is uniform over the n_total - i free indices: a draw x is
  mapped to the x-th free index, x + #{k : e_k - k <= x} for the taken
  indices e_0 < e_1 < ... (e_k - k free indices lie below e_k).
  """
  n_pick = bits.shape[0]
  rank = jnp.arange(n_pick)
  draws = _below(bits, n_total - rank)

  def pick(taken, i):
    free_below = jnp.sort(taken) - rank
    return taken.at[i].set(draws[i] + jnp.sum(free_below <= draws[i])), None

  unset = jnp.full((n_pick,), n_total + n_pick, jnp.int32)
  return jax.lax.scan(pick, unset, rank)[0]


class _Words(NamedTuple):
  """The random words of one trace, one slice per draw."""
  n_systems: jax.Array   # (1,)
  n_cuts: jax.Array      # (1,)
  labels: jax.Array      # (max_systems,)
  system_ids: jax.Array  # (max_systems,)
  cuts: jax.Array        # (max_cuts,)
  choices: jax.Array     # (max_cuts + 1,)


def _draw_words(key, spec: LDSSpec) -> _Words:
  """All discrete randomness of a trace from one threefry call (jits fast)."""
  sizes = (1, 1, spec.max_systems, spec.max_systems, spec.max_cuts,
           spec.max_cuts + 1)
  bits = jax.random.bits(key, (sum(sizes),))
  parts = jnp.split(bits, list(itertools.accumulate(sizes))[:-1])
  return _Words(*parts)


def _segment_layout(words: _Words, spec: LDSSpec, n_systems):
  """Per laid-out position: (slot, kind, time) of the training layout."""
  length = spec.base_len
  n_cuts = _capped_poisson(spec.cuts_per_system * n_systems, spec.max_cuts,
                           _unit(words.n_cuts[0]))
  drawn = _below(words.cuts, length)
  drawn = jnp.where(jnp.arange(spec.max_cuts) < n_cuts, drawn, length)
  zero = jnp.where(jnp.any(drawn == 0), length, 0)  # 0 is added if not drawn
  bounds = jnp.sort(jnp.concatenate([drawn, jnp.stack([zero, length])]))
  starts, gaps = bounds[:-1], jnp.diff(bounds)
  slot = _below(words.choices, n_systems)  # each segment's system, i.i.d.
  shown = jnp.maximum(gaps - 2, 0)  # observations of each segment
  per_slot = jax.nn.one_hot(slot, spec.max_systems, dtype=jnp.int32)
  per_slot = per_slot * shown[:, None]
  shown_before = jnp.cumsum(per_slot, axis=0) - per_slot
  first_time = spec.late_start + jnp.take_along_axis(
      shown_before, slot[:, None], axis=1)[:, 0]

  positions = jnp.arange(length)
  segment = jnp.sum(bounds[None, :] <= positions[:, None], axis=1) - 1
  offset = positions - starts[segment]
  gap = gaps[segment]
  kind = jnp.where((gap == 1) | (offset == gap - 1), CLOSE,
                   jnp.where(offset == 0, OPEN, OBSERVATION))
  return slot[segment], kind, first_time[segment] + offset - 1


def sample_trace(key, spec: LDSSpec, pool: Optional[LDSPool]) -> LDSTrace:
  """One training trace; `pool` is ignored (may be None) when resampling."""
  if not spec.resample_trajectories and (
      pool is None or pool.matrices.shape[0] < spec.max_systems):
    raise UserError("lds: a pool of >= max_systems systems is required "
                    "unless resample_trajectories is set")
  k_words, k_fresh = jax.random.split(key)
  words = _draw_words(k_words, spec)
  ranks = jnp.arange(1, spec.max_systems + 1, dtype=jnp.float32)
  n_systems = 1 + _inverse_cdf(ranks ** -spec.zipf_exponent,
                               _unit(words.n_systems[0]))
  labels = permutation(words.labels)
  slot, kind, time = _segment_layout(words, spec, n_systems)
  time = jnp.where(kind == OBSERVATION, time, 0)
  if spec.resample_trajectories:
    matrices, trajectories = fresh_systems(k_fresh, spec, spec.max_systems)
    system_ids = jnp.full((spec.max_systems,), -1, jnp.int32)
    states, first_states = trajectories[slot, time], trajectories[:, spec.late_start]
  else:
    system_ids = _distinct_indices(words.system_ids, pool.matrices.shape[0])
    matrices = pool.matrices[system_ids]
    trajectories = jnp.zeros((0,) + pool.trajectories.shape[1:])
    states = pool.trajectories[system_ids[slot], time]
    first_states = pool.trajectories[system_ids, spec.late_start]
  rows = token_rows(spec, kind, labels[slot], states)
  tokens = jnp.concatenate([start_token(spec)[None], rows])
  hidden = jnp.zeros(tokens.shape[0], bool)
  if spec.backstory_systems:
    tokens, hidden = _insert_backstories(spec, tokens, slot, kind, time,
                                         matrices, first_states)
  return LDSTrace(tokens, hidden, n_systems, system_ids, labels, matrices,
                  trajectories)


def _insert_backstories(spec: LDSSpec, tokens, slot, kind, time, matrices,
                        first_states):
  """(context_len + 1 tokens, hidden) of a laid-out trace with backstories
  after the open label of each system's first non-empty segment (the first
  backstory_systems such segments)."""
  n = spec.backstory_len
  opens_segment = (kind[:-1] == OPEN) & (kind[1:] == OBSERVATION)
  first_shown = opens_segment & (time[1:] == spec.late_start)
  first_shown = jnp.append(first_shown, False)
  chosen = first_shown & (jnp.cumsum(first_shown) <= spec.backstory_systems)
  chosen = jnp.concatenate([jnp.array([False]), chosen])  # token coordinates
  shift = n * (jnp.cumsum(chosen) - chosen)
  new_index = jnp.arange(tokens.shape[0]) + shift
  out = jnp.zeros((spec.context_len + 1, tokens.shape[1])).at[new_index].set(tokens)
  # x_{t0-n} .. x_{t0-1} of every slot, t0 its first shown time
  back = jax.vmap(lambda m, x: _iterate(m.T, x, n + 1)[1:][::-1])(
      matrices, first_states)
  slot_of_token = jnp.concatenate([jnp.zeros(1, slot.dtype), slot])
  story = token_rows(spec, OBSERVATION, 0, back[slot_of_token])  # (T, n, D)
  rows = new_index[:, None] + 1 + jnp.arange(n)[None, :]
  rows = jnp.where(chosen[:, None], rows, spec.context_len + 1)  # dropped
  out = out.at[rows].set(story, mode="drop")
  hidden = jnp.zeros(spec.context_len + 1, bool).at[rows].set(True, mode="drop")
  return out, hidden


def split_tokens(spec: LDSSpec, tokens, hidden=None) -> LDSBatch:
  """Model inputs tokens[:-1], target states tokens[1:] and the loss mask
  (next token an observation, not a hidden backstory state)."""
  mask = tokens[..., 1:, spec.observation_index] == 1
  if hidden is not None:
    mask = mask & ~hidden[..., 1:]
  return LDSBatch(inputs=tokens[..., :-1, :],
                  targets=tokens[..., 1:, spec.state_start:], mask=mask)


def sample_batch(key, spec: LDSSpec, pool: Optional[LDSPool],
                 batch_size: int) -> LDSBatch:
  """batch_size independent training traces, split for the model."""
  traces = jax.vmap(sample_trace, in_axes=(0, None, None))(
      jax.random.split(key, batch_size), spec, pool)
  return split_tokens(spec, traces.tokens, traces.hidden)


def position_errors(predictions, batch: LDSBatch) -> jax.Array:
  """|y_hat - y|^2 summed over the state at every position, 0 where masked.

  The loss averages these over unmasked positions; the pre-training error of
  Daniels et al. 2025 averages them over all positions.
  """
  errors = jnp.sum(jnp.square(predictions - batch.targets), axis=-1)
  return jnp.where(batch.mask, errors, 0.0)
