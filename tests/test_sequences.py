"""Invariants of every sequence type of the icl-dynamics sampler."""
import dataclasses

import jax
import numpy as np
import pytest

from icl_transience.proj.transience import sequences as seq
from icl_transience.proj.transience.sequences import BURSTY, DISTRACTOR, OTHER, QUERY

from helpers import zipf_exponent_fit

N = 2000
TRAIN = seq.SequenceSpec(context_len=2, burstiness=1, distractor=True,
                         n_classes=50, exemplars=(0, 20))


def draw(spec, n=N, seed=0):
  out = jax.jit(seq.sample_sequences, static_argnums=(1, 2))(
      jax.random.PRNGKey(seed), spec, n)
  return jax.tree.map(np.asarray, out)


def test_training_sequences_k2_burst1():
  s = draw(TRAIN)
  assert s.classes.shape == (N, 3) and s.labels.shape == (N, 2)
  q = s.classes[:, -1]
  types = s.item_types[:, :-1]
  assert (s.item_types[:, -1] == QUERY).all()
  # exactly one query-class item and one distractor item, in random order
  assert ((types == BURSTY).sum(1) == 1).all()
  assert ((types == DISTRACTOR).sum(1) == 1).all()
  assert 0.45 < (types[:, 0] == BURSTY).mean() < 0.55
  bursty_class = np.where(types == BURSTY, s.classes[:, :-1], -1).max(1)
  distractor = np.where(types == DISTRACTOR, s.classes[:, :-1], -1).max(1)
  np.testing.assert_array_equal(bursty_class, q)
  assert (distractor != q).all()
  # labels are class indices; the target is the query's class
  np.testing.assert_array_equal(s.labels, s.classes[:, :-1])
  np.testing.assert_array_equal(s.target, q)
  # uniform classes, exemplars i.i.d. in range (query equals context 1/20)
  assert s.classes.min() >= 0 and s.classes.max() < 50
  assert s.exemplars.min() >= 0 and s.exemplars.max() < 20
  same = s.exemplars[:, -1] == np.where(types == BURSTY, s.exemplars[:, :-1], -1).max(1)
  assert 0.02 < same.mean() < 0.09


def test_no_support_never_shows_query_class():
  spec = dataclasses.replace(TRAIN, context_len=8, burstiness=0, no_support=True)
  s = draw(spec)
  assert (s.classes[:, :-1] != s.classes[:, -1:]).all()
  assert (s.item_types[:, :-1] == OTHER).all()


def test_unique_rest_distinct_and_excludes_burst_classes():
  spec = dataclasses.replace(TRAIN, context_len=8, burstiness=2, unique_rest=True)
  s = draw(spec)
  q, ctx, types = s.classes[:, -1], s.classes[:, :-1], s.item_types[:, :-1]
  for row, t, qq in zip(ctx, types, q):
    rest = row[t == OTHER]
    assert len(rest) == 4 and len(set(rest)) == 4
    assert qq not in rest and row[t == DISTRACTOR][0] not in rest


def test_ciwl_sets_hold_query_label_once_never_beside_query_exemplar():
  spec = dataclasses.replace(TRAIN, burstiness=0, no_support=True,
                             unique_rest=True, assign_query_label_random=True)
  s = draw(spec)
  q = s.classes[:, -1]
  assert ((s.labels == q[:, None]).sum(1) == 1).all()
  assert (s.classes[:, :-1] != q[:, None]).all()  # no query-class exemplar
  np.testing.assert_array_equal(s.target, q)
  position = np.argmax(s.labels == q[:, None], 1)
  assert 0.45 < position.mean() < 0.55  # either slot, uniformly


def test_flip_targets_are_the_distractors_label():
  spec = dataclasses.replace(TRAIN, relabel="flip")
  s = draw(spec)
  types, ctx = s.item_types[:, :-1], s.classes[:, :-1]
  q = s.classes[:, -1]
  distractor = np.where(types == DISTRACTOR, ctx, -1).max(1)
  np.testing.assert_array_equal(s.target, distractor)
  np.testing.assert_array_equal(np.where(types == BURSTY, s.labels, -1).max(1),
                                distractor)
  np.testing.assert_array_equal(np.where(types == DISTRACTOR, s.labels, -1).max(1), q)


def test_01_labels_are_a_random_order_of_0_and_1():
  spec = dataclasses.replace(TRAIN, relabel="01")
  s = draw(spec)
  assert (np.sort(s.labels, 1) == [0, 1]).all()
  bursty_label = np.where(s.item_types[:, :-1] == BURSTY, s.labels, -1).max(1)
  np.testing.assert_array_equal(s.target, bursty_label)
  assert 0.45 < s.target.mean() < 0.55


def test_pairs_relabel_uses_all_label_pairs():
  spec = dataclasses.replace(TRAIN, relabel="pairs", fs_relabel=7)
  s = draw(spec)
  assert (s.labels[:, 0] != s.labels[:, 1]).all()
  assert s.labels.min() == 0 and s.labels.max() == 6
  assert len({tuple(r) for r in s.labels}) == 42  # every ordered pair occurs


def test_match_exemplars():
  spec = dataclasses.replace(TRAIN, context_len=8, burstiness=3,
                             match_query_and_distractors=True)
  s = draw(spec)
  for ex, t in zip(s.exemplars, s.item_types):
    assert len(set(ex[(t == BURSTY) | (t == QUERY)])) == 1
    assert len(set(ex[t == DISTRACTOR])) == 1
  others = s.exemplars[:, :-1][s.item_types[:, :-1] == OTHER]
  assert len(set(others)) > 1  # "other" items stay independent


def test_zipf_query_classes_have_the_exponent():
  spec = dataclasses.replace(TRAIN, zipf_exponent=1.0, n_classes=100)
  q = draw(spec, n=20_000).classes[:, -1]
  exponent, se = zipf_exponent_fit(q + 1, 100)  # se ~ 0.006
  assert abs(exponent - 1.0) < 4 * se, (exponent, se)


# The transience paper's training sequences: K = 8 with 3 query-class items,
# 3 of one distractor class and 2 others (Zipf 1 here over 100 classes).
TRANSIENCE = seq.SequenceSpec(context_len=8, burstiness=3, distractor=True,
                              zipf_exponent=1.0, n_classes=100)


def test_transience_sequences_placement_labels_and_zipf_frequencies():
  n = 20_000
  s = draw(TRANSIENCE, n=n)
  types, ctx, q = s.item_types[:, :-1], s.classes[:, :-1], s.classes[:, -1]
  for kind, count in ((BURSTY, 3), (DISTRACTOR, 3), (OTHER, 2)):
    assert ((types == kind).sum(1) == count).all()
    share = count / 8  # each slot holds each type equally often
    se = np.sqrt(share * (1 - share) / n)
    assert np.abs((types == kind).mean(0) - share).max() < 5 * se
  assert (np.where(types == BURSTY, ctx, q[:, None]) == q[:, None]).all()
  distractor = np.where(types == DISTRACTOR, ctx, -1).max(1)
  assert (np.where(types == DISTRACTOR, ctx, distractor[:, None]) ==
          distractor[:, None]).all() and (distractor != q).all()
  np.testing.assert_array_equal(s.labels, ctx)  # no relabelling
  np.testing.assert_array_equal(s.target, q)
  # query and "other" classes: Zipf(1); the distractor: Zipf(1) without the
  # query's class, i.e. P(d = j) = p_j sum_{q != j} p_q / (1 - p_q)
  for classes in (q, ctx[types == OTHER]):
    exponent, se = zipf_exponent_fit(classes + 1, 100)
    assert abs(exponent - 1.0) < 4 * se, (exponent, se)
  p = 1 / np.arange(1, 101)
  p /= p.sum()
  expected = p * ((p / (1 - p)).sum() - p / (1 - p))
  observed = np.bincount(distractor, minlength=100) / n
  assert np.abs(observed - expected).max() < 5 * np.sqrt(expected.max() / n)


@pytest.mark.parametrize("relabel", ["flip", "01"])
def test_transience_flip_and_01_evaluation_sequences(relabel):
  """Burstiness 4 with a distractor fills K = 8 with two classes."""
  spec = dataclasses.replace(TRANSIENCE, burstiness=4, relabel=relabel,
                             zipf_exponent=0.0)
  s = draw(spec)
  types, q = s.item_types[:, :-1], s.classes[:, -1]
  assert ((types == BURSTY).sum(1) == 4).all() and ((types == DISTRACTOR).sum(1) == 4).all()
  distractor = np.where(types == DISTRACTOR, s.classes[:, :-1], -1).max(1)
  bursty_label = np.where(types == BURSTY, s.labels, -1).max(1)
  other_label = np.where(types == DISTRACTOR, s.labels, -1).max(1)
  assert (np.where(types == BURSTY, s.labels, bursty_label[:, None]) ==
          bursty_label[:, None]).all()
  if relabel == "flip":  # the query-class items carry the distractor's label
    np.testing.assert_array_equal(bursty_label, distractor)
    np.testing.assert_array_equal(other_label, q)
  else:
    assert ((bursty_label + other_label) == 1).all()
    assert 0.45 < bursty_label.mean() < 0.55
  np.testing.assert_array_equal(s.target, bursty_label)


@pytest.mark.parametrize("zipf", [0.0, 1.0])
def test_iid_rest_and_another_seed(zipf):
  spec = dataclasses.replace(TRAIN, context_len=6, burstiness=2, zipf_exponent=zipf)
  a, c = draw(spec, seed=3), draw(spec, seed=4)
  assert (a.classes != c.classes).any()
  assert ((a.item_types[:, :-1] == OTHER).sum(1) == 2).all()
