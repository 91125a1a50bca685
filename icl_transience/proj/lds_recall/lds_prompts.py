"""Resume ("needle in a haystack") prompts, OOD variants, step errors.

The evaluation prompts and OOD variants of Daniels et al. 2025.

Prompt for haystack length H: the start token; H segments [open(s), 10
observations, close(s)], one per haystack system; then the query segment
[open(needle), 10 observations, close] that resumes the needle, system 0 of
the example, right after its last shown state. Configuration c rotates the
haystack right by c, so the needle's segment sits at haystack position c
(0 = farthest back, H - 1 = just before the query).

Example e uses test systems e, e+1, ..., e+H-1 (and e+H as the unseen
system). Test system i and its trial-j trajectory depend only on (key, i, j);
an example's label permutation is shared by all its trials and configurations,
as in the authors' code.

Errors: the prediction at row r is for row r + 1 (|y_hat - y|^2 summed over the
state). "k after final" is the k-th observation of the query segment (k = 1
is predicted at the query's open label), "k after initial" the k-th
observation of the needle's haystack segment. Statistics: the median over
trials, then the 25/50/75th percentiles over examples.
"""
import dataclasses
import math
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from icl_transience.proj.lds_recall import lds
from icl_transience.errors import UserError

QUERY_LABELS = ("needle", "next", "unseen")
QUERY_SYSTEMS = ("needle", "unseen")


@dataclasses.dataclass(frozen=True)
class NeedleSpec:
  """One family of resume prompts (hashable: a static jit argument)."""
  haystack_len: int = 5          # H
  segment_len: int = 10          # observations per haystack segment
  query_len: int = 10            # observations in the query segment
  n_examples: int = 50
  n_trials: int = 1000           # trajectories per example
  n_test_systems: int = 100
  query_label: str = "needle"    # needle | next (misdirected) | unseen
  query_system: str = "needle"   # needle | unseen (a system not in the trace)
  shared_labels: bool = False    # every haystack system gets one label pair
  synchronised: bool = False     # x_t = U^(t - sync_time) v, v shared per trial
  sync_time: int = 10
  opposite_systems: bool = False  # slot i: (-1)^i U_(e + i // 2), {U, -U} pairs
  fix_needle: bool = False       # the needle is test system 0 in every example
  late_start: int = 0            # first trajectory index shown
  lds_spec: lds.LDSSpec = lds.LDSSpec()  # token layout of the trained model

  def __post_init__(self):
    for name in ("haystack_len", "segment_len", "query_len", "n_examples",
                 "n_trials"):
      if getattr(self, name) < 1:
        raise UserError(
            f"needle.{name} must be >= 1, got {getattr(self, name)}")
    for name in ("sync_time", "late_start"):
      if getattr(self, name) < 0:
        raise UserError(
            f"needle.{name} must be >= 0, got {getattr(self, name)}")
    if self.query_label not in QUERY_LABELS:
      raise UserError(f"needle.query_label must be one of {QUERY_LABELS}, "
                      f"got {self.query_label!r}")
    if self.query_system not in QUERY_SYSTEMS:
      raise UserError(f"needle.query_system must be one of {QUERY_SYSTEMS}, "
                      f"got {self.query_system!r}")
    if self.n_slots > self.lds_spec.max_systems:
      raise UserError(f"needle.haystack_len must be < lds.max_systems "
                      f"({self.lds_spec.max_systems}), got {self.haystack_len}")
    if self.n_examples - 1 + self.n_slots > self.n_test_systems:
      raise UserError(f"needle.n_test_systems ({self.n_test_systems}) must be "
                      f">= n_examples + haystack_len = "
                      f"{self.n_examples + self.haystack_len}")
    if self.prompt_len > self.lds_spec.context_len + 1:
      raise UserError(f"needle prompt of {self.prompt_len} tokens exceeds "
                      f"lds.context_len + 1 = {self.lds_spec.context_len + 1}")

  @property
  def n_slots(self) -> int:
    """Haystack systems plus the unseen system (slot H)."""
    return self.haystack_len + 1

  @property
  def query_row(self) -> int:
    """Row of the query segment's open label."""
    return 1 + (self.segment_len + 2) * self.haystack_len

  @property
  def prompt_len(self) -> int:
    return self.query_row + self.query_len + 2

  def needle_row(self, config: int = 0) -> int:
    """Row of the open label of the needle's haystack segment."""
    return 1 + (self.segment_len + 2) * config


VARIANTS = {
    "normal": {},
    "misdirected_label": {"query_label": "next"},      # paren_swap
    "unseen_label": {"query_label": "unseen"},         # irrelevant_tokens
    "shared_labels": {"shared_labels": True},          # same_tokens
    "unseen_system": {"query_system": "unseen", "query_label": "unseen"},
    "synchronised": {"synchronised": True},            # ortho_sync
    "opposite_systems": {"opposite_systems": True},    # opposite_ortho
    "fix_needle": {"fix_needle": True},
    "late_start": {"late_start": 1},
}


def variant(name: str, **fields) -> NeedleSpec:
  """The NeedleSpec of a named variant, with further field overrides."""
  if name not in VARIANTS:
    raise UserError(
        f"unknown needle variant {name!r}; choose from {tuple(VARIANTS)}")
  return NeedleSpec(**{**VARIANTS[name], **fields})


class PromptSystems(NamedTuple):
  matrices: jax.Array        # (n_slots, n, n)
  anchor_states: jax.Array   # (n_slots, n_trials, n): x_0, or x_sync_time
  labels: jax.Array          # (n_slots,) label id of each slot
  query_label: jax.Array     # () label id of the query segment


def prompt_systems(key, spec: NeedleSpec, example,
                   pool: Optional[lds.LDSPool] = None) -> PromptSystems:
  """Systems, states and labels of one example (pool: use its systems and
  their own trajectories, identical in every trial, instead of test systems)."""
  k_systems, k_states, k_labels, k_sync = jax.random.split(key, 4)
  dim, slots = spec.lds_spec.state_dim, jnp.arange(spec.n_slots)
  ids = example + slots
  if spec.fix_needle:
    ids = ids.at[0].set(0)
  matrix_ids = example + slots // 2 if spec.opposite_systems else ids
  if pool is None:
    normals = jax.random.normal(k_systems, (spec.n_test_systems, dim, dim))
    matrices = jax.vmap(lds.haar_orthogonal)(normals[matrix_ids])
    states = jax.random.normal(
        k_states, (spec.n_test_systems, spec.n_trials, dim))[ids]
    states = states / math.sqrt(dim)
  else:
    matrices = pool.matrices[matrix_ids]
    states = jnp.broadcast_to(pool.trajectories[ids, 0][:, None],
                              (spec.n_slots, spec.n_trials, dim))
  if spec.opposite_systems:
    matrices = matrices * jnp.where(slots % 2 == 0, 1.0, -1.0)[:, None, None]
  if spec.synchronised:
    shared = jax.random.normal(k_sync, (spec.n_trials, dim)) / math.sqrt(dim)
    states = jnp.broadcast_to(shared, states.shape)
  words = jax.random.bits(k_labels,
                          (spec.n_examples, spec.lds_spec.max_systems))
  order = lds.permutation(words[example])
  labels = order[:spec.n_slots]
  if spec.shared_labels:
    labels = jnp.where(slots < spec.haystack_len, order[0], labels)
  query_label = {"needle": labels[0],
                 "next": labels[1 % spec.haystack_len],
                 "unseen": order[spec.haystack_len]}[spec.query_label]
  return PromptSystems(matrices, states, labels, query_label)


def _trajectories(spec: NeedleSpec, systems: PromptSystems, length: int):
  """(n_slots, n_trials, length, n) states of every slot and trial."""
  anchor = spec.sync_time if spec.synchronised else 0
  length = max(length, anchor + 1)
  per_trial = lambda m, states: jax.vmap(
      lambda x: lds.rollout(m, x, length, anchor))(states)
  return jax.vmap(per_trial)(systems.matrices, systems.anchor_states)


def _layout(spec: NeedleSpec):
  """Static per-row (segment position, kind, time) after the start token."""
  positions, kinds, times = [], [], []
  for position in range(spec.haystack_len + 1):
    is_query = position == spec.haystack_len
    n_obs = spec.query_len if is_query else spec.segment_len
    first = spec.late_start + (spec.segment_len if is_query else 0)
    positions += [position] * (n_obs + 2)
    kinds += [lds.OPEN] + [lds.OBSERVATION] * n_obs + [lds.CLOSE]
    times += [0] + list(range(first, first + n_obs)) + [0]
  return np.array(positions), np.array(kinds), np.array(times)


def needle_prompts(key, spec: NeedleSpec, example, config=0,
                   pool: Optional[lds.LDSPool] = None) -> jax.Array:
  """(n_trials, prompt_len, token_dim) prompts of one example and config."""
  systems = prompt_systems(key, spec, example, pool)
  trajectories = _trajectories(
      spec, systems, spec.late_start + spec.segment_len + spec.query_len)
  positions, kinds, times = _layout(spec)
  haystack = positions < spec.haystack_len
  query_slot = spec.haystack_len if spec.query_system == "unseen" else 0
  slot = jnp.where(haystack, (positions - config) % spec.haystack_len,
                   query_slot)
  label = jnp.where(haystack, systems.labels[slot], systems.query_label)
  return _prompt_tokens(spec, trajectories, slot, kinds, times, label)


def _prompt_tokens(spec: NeedleSpec, trajectories, slot, kinds, times, label):
  """(n_trials, 1 + rows, token_dim): the start token, then per row the
  token of (slot, kind, time, label) in every trial."""
  states = trajectories[slot, :, times]  # (rows, n_trials, n)
  rows = jax.vmap(lambda s: lds.token_rows(spec.lds_spec, kinds, label, s),
                  in_axes=1)(states)
  start = jnp.broadcast_to(lds.start_token(spec.lds_spec),
                           (spec.n_trials, 1, spec.lds_spec.token_dim))
  return jnp.concatenate([start, rows], axis=1)


def extended_final_prompts(key, spec: NeedleSpec, example) -> jax.Array:
  """(n_trials, prompt_len, token_dim) "final segment extended" prompts
  (Daniels et al. 2025, the needle-position figure's label-free control):
  the first H - 1 haystack segments, then haystack system H - 1 shown from
  its first state to the end of the normal prompt's length, without a close
  label. Its observation segment_len + k (extended_steps) is at the same
  trajectory time as "k after final" of the normal prompt."""
  systems = prompt_systems(key, spec, example)
  n_final = spec.prompt_len - 2 - (spec.segment_len + 2) * (spec.haystack_len - 1)
  trajectories = _trajectories(spec, systems, spec.late_start + n_final)
  slots, kinds, times = [], [], []
  for slot in range(spec.haystack_len - 1):
    slots += [slot] * (spec.segment_len + 2)
    kinds += [lds.OPEN] + [lds.OBSERVATION] * spec.segment_len + [lds.CLOSE]
    times += [0] + list(range(spec.late_start, spec.late_start + spec.segment_len)) + [0]
  slots += [spec.haystack_len - 1] * (n_final + 1)
  kinds += [lds.OPEN] + [lds.OBSERVATION] * n_final
  times += [0] + list(range(spec.late_start, spec.late_start + n_final))
  slots, kinds, times = np.array(slots), np.array(kinds), np.array(times)
  return _prompt_tokens(spec, trajectories, slots, kinds, times,
                        systems.labels[slots])


def single_system_prompts(key, spec: NeedleSpec, example,
                          n_observations: Optional[int] = None,
                          pool: Optional[lds.LDSPool] = None) -> jax.Array:
  """Uninterleaved control (zero_cut): [start, open, x_t.., close] of system
  `example` (default: fills the context); its open label is at row 1."""
  n_obs = n_observations
  if n_obs is None:
    n_obs = spec.lds_spec.context_len - 2
  if n_obs + 3 > spec.lds_spec.context_len + 1:
    raise UserError(f"single-system prompt of {n_obs} observations exceeds "
                    f"lds.context_len + 1 = "
                    f"{spec.lds_spec.context_len + 1} tokens")
  systems = prompt_systems(key, spec, example, pool)
  trajectories = _trajectories(spec, systems, spec.late_start + n_obs)[0]
  kinds = np.array([lds.OPEN] + [lds.OBSERVATION] * n_obs + [lds.CLOSE])
  first = spec.late_start
  times = np.array([0] + list(range(first, first + n_obs)) + [0])
  rows = jax.vmap(lambda t: lds.token_rows(
      spec.lds_spec, kinds, systems.labels[0], t[times]))(trajectories)
  start = jnp.broadcast_to(lds.start_token(spec.lds_spec),
                           (spec.n_trials, 1, spec.lds_spec.token_dim))
  return jnp.concatenate([start, rows], axis=1)


def prediction_errors(predictions, tokens, lds_spec: lds.LDSSpec) -> jax.Array:
  """(..., L - 1) errors |pred[r] - state[r + 1]|^2; predictions may have L - 1
  or L rows (the last row's prediction has no target)."""
  targets = tokens[..., 1:, lds_spec.state_start:]
  predictions = predictions[..., :targets.shape[-2], :]
  return jnp.sum(jnp.square(predictions - targets), axis=-1)


def steps_after(errors, open_row: int, steps: Sequence[int]) -> jax.Array:
  """(..., K) errors of the k-th observation after the open label at open_row
  (predicted at row open_row + k - 1)."""
  return errors[..., np.asarray(steps) + open_row - 1]


def after_final(errors, spec: NeedleSpec, steps=None) -> jax.Array:
  steps = range(1, spec.query_len + 1) if steps is None else steps
  return steps_after(errors, spec.query_row, steps)


def after_initial(errors, spec: NeedleSpec, config: int = 0, steps=None):
  steps = range(1, spec.segment_len + 1) if steps is None else steps
  return steps_after(errors, spec.needle_row(config), steps)


def extended_steps(errors, spec: NeedleSpec, steps=None) -> jax.Array:
  """Errors of observation segment_len + k of the extended final segment."""
  steps = range(1, spec.query_len + 1) if steps is None else steps
  final_row = 1 + (spec.segment_len + 2) * (spec.haystack_len - 1)
  return steps_after(errors, final_row, np.asarray(steps) + spec.segment_len)


def trial_medians(step_errors) -> jax.Array:
  """(..., n_trials, K) -> (..., K): the median over trials."""
  return jnp.median(step_errors, axis=-2)


def example_quartiles(medians) -> jax.Array:
  """(n_examples, K) -> (3, K): 25th, 50th, 75th percentiles over examples."""
  return jnp.percentile(medians, jnp.array([25.0, 50.0, 75.0]), axis=0)


def prompt_errors(predict, tokens, lds_spec: lds.LDSSpec,
                  batch_size: Optional[int] = None) -> jax.Array:
  """(N, L - 1) errors of predict on (N, L, token_dim) prompts, batch_size
  prompts a call (default: all at once)."""
  chunk = batch_size or tokens.shape[0]
  return jnp.concatenate([
      prediction_errors(predict(part[:, :-1]), part, lds_spec)
      for part in jnp.split(tokens, list(range(chunk, tokens.shape[0], chunk)))])


class NeedleStats(NamedTuple):
  after_final: np.ndarray    # (n_examples, K) median over trials per step
  after_initial: np.ndarray  # (n_examples, K)


_needle_prompts = jax.jit(needle_prompts, static_argnames="spec")


def needle_statistics(predict: Callable[[jax.Array], jax.Array], key,
                      spec: NeedleSpec, config: int = 0,
                      batch_size: Optional[int] = None,
                      pool: Optional[lds.LDSPool] = None) -> NeedleStats:
  """Per-example trial medians of a predictor on one configuration.

  predict(tokens) gets (B, prompt_len - 1, token_dim) prompts without their
  last token and returns (B, prompt_len - 1, state_dim) predictions.
  """
  n_needed = spec.n_examples - 1 + spec.n_slots
  if pool is not None and n_needed > pool.matrices.shape[0]:
    raise UserError(f"needle: the pool has {pool.matrices.shape[0]} systems, "
                    f"fewer than n_examples + haystack_len = {n_needed + 1}")
  final, initial = [], []
  for example in range(spec.n_examples):
    tokens = _needle_prompts(key, spec=spec, example=example, config=config,
                             pool=pool)
    errors = prompt_errors(predict, tokens, spec.lds_spec, batch_size)
    final.append(trial_medians(after_final(errors, spec)))
    initial.append(trial_medians(after_initial(errors, spec, config)))
  return NeedleStats(np.asarray(jnp.stack(final)),
                     np.asarray(jnp.stack(initial)))
