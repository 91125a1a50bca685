"""The label-pair split and the whole training distribution of Singh et al.
(ICML 2024), Sec 2 and Appendix C.

Every training sequence is x1 l1 x2 l2 xq: one exemplar of the query class and
one of a distractor class, in either order, then the query. Labels are
arbitrary: each sequence draws an unordered label pair from the training
split and an order; the query class (and the query) gets the first label, the
distractor the second. So the model can only answer from context.

The L labels form L(L-1)/2 unordered pairs, split into train / val / test by
count; the paper's runs use (8, 2, 0), (36, 9, 0) and (84, 21, 0) for 5, 10
and 15 labels. The held-out (val) pairs give the "test (relabel)" evaluator.

With one exemplar per class (the paper trains on exemplar 0 only), the
training distribution is finite: for C classes and P training pairs there are
C(C-1) ordered class pairs x 2P ordered label pairs x 2 query slots distinct
sequences, 50 * 49 * 16 * 2 = 78,400 in the paper (Appendix C).
"""
from typing import NamedTuple

import jax
import numpy as np

from icl_transience.errors import UserError

# The paper's (train, val, test) pair counts for 5, 10 and 15 labels.
PAPER_SPLITS = {5: (8, 2, 0), 10: (36, 9, 0), 15: (84, 21, 0)}


class TrainingSequences(NamedTuple):
  """One row per distinct training sequence (int arrays, N rows)."""
  context_classes: np.ndarray  # (N, 2): the classes of slots 1 and 2
  context_labels: np.ndarray   # (N, 2): their labels
  query_class: np.ndarray      # (N,)
  query_label: np.ndarray      # (N,): the label of the slot holding the query class
  query_slot: np.ndarray       # (N,): that slot, 0 or 1


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def all_label_pairs(n_labels: int) -> np.ndarray:
  """The unordered pairs (i, j), i < j, in lexicographic order: (n, 2)."""
  if not _is_int(n_labels) or n_labels < 2:
    raise UserError(f"n_labels: expected an integer >= 2, got {n_labels!r}")
  return np.stack(np.triu_indices(n_labels, k=1), axis=1)


def label_pair_split(n_labels: int, split, seed: int = 20):
  """(train, val, test) unordered label pairs, each (n, 2).

  As the authors do: the lexicographic pairs are permuted with
  jax.random.permutation(PRNGKey(seed)) (seed 20 is theirs) under JAX's
  non-partitionable threefry, their JAX's default, which reproduces their
  draw exactly; the first split[2] pairs are test, the next split[1] val, the
  rest train. Every label must appear in a training pair, or the model would
  never be trained to output it.
  """
  pairs = all_label_pairs(n_labels)
  counts = tuple(split)
  if (len(counts) != 3 or not all(_is_int(c) and c >= 0 for c in counts)
      or sum(counts) != len(pairs)):
    raise UserError(f"split: expected three counts (train, val, test) summing to "
                    f"the {len(pairs)} label pairs, got {split!r}")
  if not _is_int(seed):
    raise UserError(f"seed: expected an integer, got {seed!r}")
  with jax.threefry_partitionable(False):
    order = jax.random.permutation(jax.random.PRNGKey(seed), len(pairs))
  shuffled = pairs[np.asarray(order)]
  n_train, n_val, n_test = counts
  test, val, train = np.split(shuffled, [n_test, n_test + n_val])
  missing = sorted(set(range(n_labels)) - set(train.ravel().tolist()))
  if missing:
    raise UserError(f"split: the training pairs of seed {seed} leave out "
                    f"label(s) {missing}")
  return train, val, test


def ordered_pairs(pairs) -> np.ndarray:
  """Both orders of each unordered pair: the pairs, then the reversed pairs."""
  pairs = np.asarray(pairs)
  if pairs.ndim != 2 or pairs.shape[1] != 2:
    raise UserError(f"pairs: expected shape (n, 2), got {pairs.shape}")
  return np.concatenate([pairs, pairs[:, ::-1]])


def _check_train_pairs(train_pairs) -> np.ndarray:
  pairs = np.asarray(train_pairs)
  if (pairs.ndim != 2 or pairs.shape[1] != 2 or not len(pairs)
      or not np.issubdtype(pairs.dtype, np.integer)):
    raise UserError(f"train_pairs: expected integer pairs of shape (n, 2), n >= 1, "
                    f"got {pairs.dtype} {pairs.shape}")
  if (pairs < 0).any() or (pairs[:, 0] == pairs[:, 1]).any():
    raise UserError("train_pairs: expected two distinct non-negative labels per pair")
  if len(np.unique(np.sort(pairs, axis=1), axis=0)) != len(pairs):
    raise UserError("train_pairs: a pair appears twice (in either order)")
  return pairs


def enumerate_training_sequences(train_pairs, n_classes: int = 50) -> TrainingSequences:
  """Every distinct training sequence, rows in the order of the authors'
  analysis notebook: query slot (0, then 1), then ordered label pair
  (ordered_pairs order), then ordered class pair (lexicographic)."""
  if not _is_int(n_classes) or n_classes < 2:
    raise UserError(f"n_classes: expected an integer >= 2, got {n_classes!r}")
  label_pairs = ordered_pairs(_check_train_pairs(train_pairs))
  first, second = np.nonzero(~np.eye(n_classes, dtype=bool))
  class_pairs = np.stack([first, second], axis=1)
  n_c, n_l = len(class_pairs), len(label_pairs)
  context_classes = np.tile(class_pairs, (2 * n_l, 1))
  context_labels = np.tile(np.repeat(label_pairs, n_c, axis=0), (2, 1))
  query_slot = np.repeat(np.arange(2), n_l * n_c)
  rows = np.arange(len(query_slot))
  return TrainingSequences(
      context_classes=context_classes,
      context_labels=context_labels,
      query_class=context_classes[rows, query_slot],
      query_label=context_labels[rows, query_slot],
      query_slot=query_slot)
