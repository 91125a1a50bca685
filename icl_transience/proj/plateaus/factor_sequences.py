"""Hidden-factor ICL sequences of Fu et al., pure JAX.

A sequence is L (image, label) pairs [x_1, y_1, ..., x_L, y_L]. Each sequence
has a hidden factor e, uniform over `hidden_factors`; the label of an image is
the value of factor e for that image, sent through a mapping from value index
to label id:

  D_fix  the identity (the same label ids in every sequence: storable in weights)
  D_rnd  a fresh uniformly random injection {0..n_e-1} -> {0..label_vocab-1}
         per sequence (the first n_e entries of a random permutation)

A batch mixes an exact count round(p * n) of D_fix sequences at random rows
with D_rnd for the rest; p (`fixed_fraction`) may be a traced scalar, so one
compiled step serves mixed training and a D_fix -> D_rnd warm-up switch.

Samplers return factor values and labels only; images are rendered later
(`shapes.render_images`), or replaced by factor one-hots for the "perfect
weights component" control (`factor_one_hots`).

`WordSelection` stand-in (Fu et al.): words are ids carrying 3 categorical
attributes fixed by a seeded table; sequences label words by one hidden
attribute through the same mappings; the weights component is the
id -> attribute table.
"""
import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_transience.proj.plateaus import shapes
from icl_transience.errors import UserError


@dataclasses.dataclass(frozen=True)
class FactorSequenceSpec:
  """How to build hidden-factor sequences (hashable: a static jit argument)."""
  context_len: int = 48                                  # L (image, label) pairs
  label_vocab: int = 15                                  # label ids 0..14
  factor_sizes: tuple[int, ...] = shapes.FACTOR_SIZES
  hidden_factors: tuple[int, ...] = (0, 1, 2, 3, 4, 5)   # e is uniform over these

  def validate(self) -> None:
    if self.context_len < 1:
      raise UserError(f"sequence.context_len: must be >= 1, got {self.context_len}")
    if not self.hidden_factors or len(set(self.hidden_factors)) != len(
        self.hidden_factors):
      raise UserError(f"sequence.hidden_factors: need distinct factor indices, "
                      f"got {self.hidden_factors}")
    bad = [f for f in self.hidden_factors
           if not 0 <= f < len(self.factor_sizes)]
    if bad:
      raise UserError(f"sequence.hidden_factors: {bad} out of range "
                      f"[0, {len(self.factor_sizes)})")
    largest = max(self.factor_sizes[f] for f in self.hidden_factors)
    if self.label_vocab < largest:
      raise UserError(f"sequence.label_vocab: {self.label_vocab} is smaller "
                      f"than the largest hidden factor ({largest} values)")


class FactorSequences(NamedTuple):
  factors: jax.Array        # (..., L, n_factors) int32 factor values of each image
  hidden_factor: jax.Array  # (...,) int32 index of the labelled factor
  mapping: jax.Array        # (..., label_vocab) int32 value index -> label id
  labels: jax.Array         # (..., L) int32 label of each image
  is_fixed: jax.Array       # (...,) bool: a D_fix sequence


def fixed_rows(key, n: int, fixed_fraction) -> jax.Array:
  """(n,) bool with exactly round(fixed_fraction * n) True at random rows."""
  n_fixed = jnp.round(jnp.asarray(fixed_fraction, jnp.float32) * n)
  return jax.random.permutation(key, jnp.arange(n) < n_fixed)


def _label_one(key, factors, is_fixed, spec: FactorSequenceSpec):
  k_factor, k_mapping = jax.random.split(key)
  choice = jax.random.randint(k_factor, (), 0, len(spec.hidden_factors))
  hidden = jnp.asarray(spec.hidden_factors, jnp.int32)[choice]
  random_mapping = jax.random.permutation(k_mapping, spec.label_vocab)
  identity = jnp.arange(spec.label_vocab)
  mapping = jnp.where(is_fixed, identity, random_mapping).astype(jnp.int32)
  labels = mapping[factors[:, hidden]]
  return FactorSequences(factors, hidden, mapping, labels, is_fixed)


def label_sequences(key, factors: jax.Array, spec: FactorSequenceSpec,
                    fixed_fraction=0.0) -> FactorSequences:
  """Labels factor rows (n, L, n_factors) by a hidden factor per sequence."""
  k_rows, k_each = jax.random.split(key)
  n = factors.shape[0]
  is_fixed = fixed_rows(k_rows, n, fixed_fraction)
  return jax.vmap(_label_one, in_axes=(0, 0, 0, None))(
      jax.random.split(k_each, n), factors.astype(jnp.int32), is_fixed, spec)


def sample_factor_sequences(key, spec: FactorSequenceSpec, n: int,
                            fixed_fraction=0.0) -> FactorSequences:
  """n sequences of i.i.d. uniform images; D_fix in a fraction of the rows."""
  k_factors, k_labels = jax.random.split(key)
  factors = shapes.sample_factors(k_factors, spec.factor_sizes,
                                  (n, spec.context_len))
  return label_sequences(k_labels, factors, spec, fixed_fraction)


def chance_accuracy(spec: FactorSequenceSpec) -> float:
  """Mean over hidden factors of 1 / n_e: the ICL accuracy of guessing (Fu et al.)."""
  return sum(1 / spec.factor_sizes[f] for f in spec.hidden_factors) / len(
      spec.hidden_factors)


def hidden_values(seqs: FactorSequences) -> jax.Array:
  """(..., L) value of the hidden factor at every position."""
  index = jnp.broadcast_to(seqs.hidden_factor[..., None, None],
                           seqs.factors.shape[:-1] + (1,))
  return jnp.take_along_axis(seqs.factors, index, axis=-1)[..., 0]


def value_seen_before(seqs: FactorSequences) -> jax.Array:
  """(..., L) bool: the hidden value of position i occurred at a position < i.

  Under D_rnd only these labels are inferable from the context, so the mean
  of this mask bounds ICL accuracy.
  """
  values = hidden_values(seqs)
  same = values[..., :, None] == values[..., None, :]
  earlier = jnp.tril(jnp.ones(same.shape[-2:], bool), k=-1)
  return (same & earlier).any(axis=-1)


def factor_one_hots(factors: jax.Array, factor_sizes: tuple[int, ...]) -> jax.Array:
  """Concatenated one-hots (..., sum(factor_sizes)) float32 of factor values.

  The "perfect weights component" control: fed in place of image embeddings.
  """
  return jnp.concatenate(
      [jax.nn.one_hot(factors[..., i], n, dtype=jnp.float32)
       for i, n in enumerate(factor_sizes)], axis=-1)


@dataclasses.dataclass(frozen=True)
class WordSelectionSpec:
  """Token-level stand-in: every combination of 3 attributes is one word id."""
  sequence: FactorSequenceSpec = FactorSequenceSpec(
      label_vocab=8, factor_sizes=(8, 8, 8), hidden_factors=(0, 1, 2))
  table_seed: int = 0        # fixes which word id carries which attributes

  def validate(self) -> None:
    self.sequence.validate()

  @property
  def n_words(self) -> int:
    return math.prod(self.sequence.factor_sizes)

  @property
  def vocab_size(self) -> int:
    """Word ids, then label ids (offset by n_words)."""
    return self.n_words + self.sequence.label_vocab


def word_attribute_table(spec: WordSelectionSpec) -> np.ndarray:
  """(n_words, n_attributes) int32: attributes of each word id (a seeded bijection)."""
  sizes = spec.sequence.factor_sizes
  grid = np.stack(np.unravel_index(np.arange(spec.n_words), sizes), axis=-1)
  order = np.random.default_rng(spec.table_seed).permutation(spec.n_words)
  return grid[order].astype(np.int32)


class WordSequences(NamedTuple):
  words: jax.Array              # (..., L) int32 word ids
  labelled: FactorSequences     # attributes as factors, labels, mapping


def sample_word_sequences(key, spec: WordSelectionSpec, n: int,
                          fixed_fraction=0.0) -> WordSequences:
  """n WordSelection sequences of i.i.d. uniform words."""
  k_words, k_labels = jax.random.split(key)
  words = jax.random.randint(k_words, (n, spec.sequence.context_len), 0,
                             spec.n_words)
  attributes = jnp.asarray(word_attribute_table(spec))[words]
  return WordSequences(words, label_sequences(k_labels, attributes,
                                              spec.sequence, fixed_fraction))


def word_tokens(seqs: WordSequences, spec: WordSelectionSpec) -> jax.Array:
  """(..., 2L) int32 token stream [w_1, y_1, ..., w_L, y_L], labels offset."""
  labels = seqs.labelled.labels + spec.n_words
  pairs = jnp.stack([seqs.words, labels], axis=-1)
  return pairs.reshape(pairs.shape[:-2] + (-1,))
