"""The icl-dynamics sequence sampler (the icl-dynamics code of Singh et al. 2025), pure JAX.

A sequence is K context (exemplar, label) pairs plus a query exemplar. The
sampler returns *indices* (class, exemplar, label); features are gathered
later, so one sampler serves feature tables, images and one-hot classes.

Item types follow the authors' code: OTHER, BURSTY (query class in context),
DISTRACTOR, QUERY. Relabel schemes act on item types, not class identity.
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

OTHER, BURSTY, DISTRACTOR, QUERY = 0, 1, 2, 3
RELABEL_SCHEMES = ("none", "flip", "01", "pairs")


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
  """How to build one family of sequences (hashable: a static jit argument)."""
  context_len: int = 2
  burstiness: int = 1
  distractor: bool = True
  no_support: bool = False
  unique_rest: bool = False
  relabel: str = "none"          # none | flip | 01 | pairs
  fs_relabel: int = 0            # label count for relabel='pairs'
  assign_query_label_random: bool = False
  match_query_and_distractors: bool = False
  zipf_exponent: float = 0.0     # 0 = uniform over classes
  n_classes: int = 12800         # classes [0, n_classes)
  exemplars: tuple[int, int] = (0, 20)  # exemplar indices [lo, hi)

  @property
  def n_rest(self) -> int:
    """Number of "other" context items."""
    if self.burstiness == 0:
      return self.context_len
    return self.context_len - self.burstiness * (2 if self.distractor else 1)

  @property
  def n_excluded(self) -> int:
    """Classes removed from the distribution of the "other" items."""
    if not (self.no_support or self.unique_rest):
      return 0
    return 1 + int(self.burstiness > 0 and self.distractor)


class Sequences(NamedTuple):
  classes: jax.Array     # (..., K+1) int32, query last
  exemplars: jax.Array   # (..., K+1) int32
  item_types: jax.Array  # (..., K+1) int32
  labels: jax.Array      # (..., K) int32 context labels
  target: jax.Array      # (...,) int32 label to predict at the query


def _zipf_logits(spec: SequenceSpec) -> jax.Array:
  ranks = jnp.arange(1, spec.n_classes + 1, dtype=jnp.float32)
  return -spec.zipf_exponent * jnp.log(ranks)


def _shift_past(x: jax.Array, excluded_sorted: jax.Array) -> jax.Array:
  """Maps x in [0, n - m) to the x-th class of [0, n) minus m sorted classes."""
  for i in range(excluded_sorted.shape[0]):
    x = x + (x >= excluded_sorted[i]).astype(x.dtype)
  return x


def _draw(key, spec: SequenceSpec, excluded: jax.Array, n: int) -> jax.Array:
  """n i.i.d. classes from the class distribution with `excluded` removed."""
  if spec.zipf_exponent == 0.0:
    x = jax.random.randint(key, (n,), 0, spec.n_classes - excluded.shape[0])
    return _shift_past(x, jnp.sort(excluded))
  logits = _zipf_logits(spec).at[excluded].set(-jnp.inf)
  return jax.random.categorical(key, logits, shape=(n,)).astype(jnp.int32)


def _draw_unique(key, spec: SequenceSpec, excluded: jax.Array, n: int):
  """n distinct classes (without replacement), none of them in `excluded`."""
  if spec.zipf_exponent == 0.0:
    picked = []
    for k in jax.random.split(key, n):
      taken = jnp.sort(jnp.concatenate([excluded, jnp.array(picked, jnp.int32)]))
      x = jax.random.randint(k, (), 0, spec.n_classes - taken.shape[0])
      picked.append(_shift_past(x, taken))
    return jnp.stack(picked).astype(jnp.int32)
  logits = _zipf_logits(spec).at[excluded].set(-jnp.inf)
  gumbel = jax.random.gumbel(key, logits.shape)
  return jax.lax.top_k(logits + gumbel, n)[1].astype(jnp.int32)


def _sample_classes(key, spec: SequenceSpec):
  """Context classes and item types of one sequence, query last."""
  k_query, k_distractor, k_rest, k_shuffle = jax.random.split(key, 4)
  no_exclusion = jnp.zeros((0,), jnp.int32)
  query = _draw(k_query, spec, no_exclusion, 1)
  has_distractor = spec.burstiness > 0 and spec.distractor
  excluded = query
  parts, types = [], []
  if has_distractor:
    distractor = _draw(k_distractor, spec, query, 1)
    excluded = jnp.concatenate([query, distractor])
  if spec.n_rest > 0:
    if spec.unique_rest:
      rest = _draw_unique(k_rest, spec, excluded, spec.n_rest)
    elif spec.no_support:
      rest = _draw(k_rest, spec, excluded, spec.n_rest)
    else:
      rest = _draw(k_rest, spec, no_exclusion, spec.n_rest)
    parts.append(rest)
    types.append(jnp.full((spec.n_rest,), OTHER))
  if spec.burstiness > 0:
    parts.append(jnp.repeat(query, spec.burstiness))
    types.append(jnp.full((spec.burstiness,), BURSTY))
    if has_distractor:
      parts.append(jnp.repeat(distractor, spec.burstiness))
      types.append(jnp.full((spec.burstiness,), DISTRACTOR))
  classes = jnp.concatenate(parts).astype(jnp.int32)
  item_types = jnp.concatenate(types).astype(jnp.int32)
  if spec.burstiness > 0:
    order = jax.random.permutation(k_shuffle, spec.context_len)
    classes, item_types = classes[order], item_types[order]
  classes = jnp.concatenate([classes, query])
  item_types = jnp.concatenate([item_types, jnp.array([QUERY], jnp.int32)])
  return classes, item_types


def _sample_exemplars(key, spec: SequenceSpec, item_types):
  lo, hi = spec.exemplars
  k_each, k_query, k_distractor = jax.random.split(key, 3)
  exemplars = jax.random.randint(k_each, item_types.shape, lo, hi)
  if spec.match_query_and_distractors:
    query_ex = jax.random.randint(k_query, (), lo, hi)
    distractor_ex = jax.random.randint(k_distractor, (), lo, hi)
    is_query = (item_types == BURSTY) | (item_types == QUERY)
    exemplars = jnp.where(is_query, query_ex, exemplars)
    exemplars = jnp.where(item_types == DISTRACTOR, distractor_ex, exemplars)
  return exemplars.astype(jnp.int32)


def _label_pair(key, spec: SequenceSpec):
  """A random label pair in random order: '01' or two of range(fs_relabel)."""
  if spec.relabel == "01":
    first = jax.random.bernoulli(key).astype(jnp.int32)
    return first, 1 - first
  k_first, k_second = jax.random.split(key)
  first = jax.random.randint(k_first, (), 0, spec.fs_relabel)
  second = jax.random.randint(k_second, (), 0, spec.fs_relabel - 1)
  return first, second + (second >= first)


def _labels(key, spec: SequenceSpec, classes, item_types):
  """Context labels and target after the label post-processing of the
  icl-dynamics code (Singh et al. 2025)."""
  k_assign, k_pair = jax.random.split(key)
  labels, target = classes[:-1], classes[-1]
  types = item_types[:-1]
  if spec.assign_query_label_random:
    position = jax.random.randint(k_assign, (), 0, spec.context_len)
    labels = labels.at[position].set(target)
  if spec.relabel == "flip":
    query_class = target
    distractor_class = jnp.max(jnp.where(types == DISTRACTOR, labels, -1))
    labels = jnp.where(types == BURSTY, distractor_class, labels)
    labels = jnp.where(types == DISTRACTOR, query_class, labels)
    target = distractor_class
  elif spec.relabel in ("01", "pairs"):
    first, second = _label_pair(k_pair, spec)
    labels = jnp.where(types == BURSTY, first, labels)
    labels = jnp.where(types == DISTRACTOR, second, labels)
    target = first
  return labels.astype(jnp.int32), jnp.asarray(target, jnp.int32)


def sample_one(key, spec: SequenceSpec) -> Sequences:
  k_classes, k_exemplars, k_labels = jax.random.split(key, 3)
  classes, item_types = _sample_classes(k_classes, spec)
  exemplars = _sample_exemplars(k_exemplars, spec, item_types)
  labels, target = _labels(k_labels, spec, classes, item_types)
  return Sequences(classes, exemplars, item_types, labels, target)


def sample_sequences(key, spec: SequenceSpec, n: int) -> Sequences:
  """n independent sequences (leading axis n)."""
  return jax.vmap(sample_one, in_axes=(0, None))(jax.random.split(key, n), spec)
