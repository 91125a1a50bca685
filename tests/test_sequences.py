"""Invariants of every sequence type of the icl-dynamics sampler."""
import dataclasses

import jax
import numpy as np
import pytest

from icl_transience.data import sequences as seq
from icl_transience.data.sequences import BURSTY, DISTRACTOR, OTHER, QUERY

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


def test_zipf_prefers_low_ranks():
  spec = dataclasses.replace(TRAIN, zipf_exponent=1.0, n_classes=100)
  q = draw(spec).classes[:, -1]
  expected = 1 / np.arange(1, 101)
  expected /= expected.sum()
  assert abs((q == 0).mean() - expected[0]) < 0.03
  assert (q < 10).mean() > 0.45


@pytest.mark.parametrize("zipf", [0.0, 1.0])
def test_iid_rest_and_determinism(zipf):
  spec = dataclasses.replace(TRAIN, context_len=6, burstiness=2, zipf_exponent=zipf)
  a, b, c = draw(spec, seed=3), draw(spec, seed=3), draw(spec, seed=4)
  np.testing.assert_array_equal(a.classes, b.classes)
  assert (a.classes != c.classes).any()
  assert ((a.item_types[:, :-1] == OTHER).sum(1) == 2).all()
