"""The label-pair split and the enumerated training distribution of Singh et
al. (ICML 2024), Sec 2 and Appendix C."""
import itertools

import numpy as np
import pytest

from icl_transience.errors import UserError
from icl_transience.proj.transience.induction_heads import distribution as dist


def as_set(pairs):
  return {tuple(sorted(p)) for p in np.asarray(pairs).tolist()}


@pytest.fixture(scope="module")
def paper_sequences():
  train, _, _ = dist.label_pair_split(5, dist.PAPER_SPLITS[5])
  return train, dist.enumerate_training_sequences(train, n_classes=50)


@pytest.mark.parametrize("n_labels,counts", [(5, (8, 2, 0)), (10, (36, 9, 0)),
                                             (15, (84, 21, 0))])
def test_paper_splits_partition_all_label_pairs(n_labels, counts):
  assert dist.PAPER_SPLITS[n_labels] == counts
  train, val, test = dist.label_pair_split(n_labels, counts)
  assert (train.shape, val.shape, test.shape) == tuple((n, 2) for n in counts)
  everything = {(i, j) for i in range(n_labels) for j in range(i + 1, n_labels)}
  assert len(everything) == n_labels * (n_labels - 1) // 2 == sum(counts)
  assert as_set(train) | as_set(val) == everything
  assert not as_set(train) & as_set(val)
  assert len(as_set(train)) == len(train) and len(as_set(val)) == len(val)
  assert set(train.ravel().tolist()) == set(range(n_labels))


def test_split_is_the_authors_draw():
  # jax.random.permutation(PRNGKey(20)) as drawn by the authors' JAX (0.4.x).
  train, val, _ = dist.label_pair_split(5, (8, 2, 0))
  assert val.tolist() == [[1, 3], [0, 2]]
  assert train.tolist() == [[1, 2], [2, 3], [0, 4], [0, 3], [0, 1], [2, 4], [1, 4], [3, 4]]
  assert dist.label_pair_split(10, (36, 9, 0))[1][:3].tolist() == [[2, 6], [1, 2], [0, 7]]
  assert dist.label_pair_split(5, (8, 2, 0), seed=21)[1].tolist() != val.tolist()


def test_ordered_pairs_gives_both_orders():
  pairs = np.array([[0, 3], [1, 2]])
  assert dist.ordered_pairs(pairs).tolist() == [[0, 3], [1, 2], [3, 0], [2, 1]]


def test_paper_distribution_has_78400_distinct_sequences(paper_sequences):
  _, s = paper_sequences
  assert len(s.query_class) == 50 * 49 * 16 * 2 == 78_400
  for array in s:
    assert len(array) == 78_400 and np.issubdtype(array.dtype, np.integer)
  rows = np.column_stack([s.context_classes, s.context_labels, s.query_class])
  assert len(np.unique(rows, axis=0)) == 78_400
  assert set(np.unique(s.context_classes).tolist()) == set(range(50))


def test_every_class_is_the_query_equally_often(paper_sequences):
  _, s = paper_sequences
  assert np.bincount(s.query_class, minlength=50).tolist() == [78_400 // 50] * 50
  assert np.bincount(s.query_slot).tolist() == [39_200, 39_200]


def test_labels_follow_the_classes(paper_sequences):
  train, s = paper_sequences
  rows = np.arange(len(s.query_class))
  slot, other = s.query_slot, 1 - s.query_slot
  # exactly one slot holds the query class; the other a distractor class
  assert (s.context_classes[rows, slot] == s.query_class).all()
  assert (s.context_classes[rows, other] != s.query_class).all()
  # the query's label is its slot's; the distractor has the other label
  assert (s.context_labels[rows, slot] == s.query_label).all()
  distractor_label = s.context_labels[rows, other]
  assert (distractor_label != s.query_label).all()
  assert as_set(np.column_stack([s.query_label, distractor_label])) == as_set(train)


def test_enumeration_matches_the_definition_on_a_small_case():
  train = np.array([[2, 0], [1, 2]])
  s = dist.enumerate_training_sequences(train, n_classes=3)
  expected = set()
  for q, d in itertools.permutations(range(3), 2):
    for lq, ld in dist.ordered_pairs(train).tolist():
      expected.add(((q, d), (lq, ld), q, lq))  # query class in slot 0
      expected.add(((d, q), (ld, lq), q, lq))  # ... in slot 1
  got = [(tuple(c), tuple(l), q, ql) for c, l, q, ql in zip(
      s.context_classes.tolist(), s.context_labels.tolist(),
      s.query_class.tolist(), s.query_label.tolist())]
  assert len(got) == len(set(got)) == 3 * 2 * 4 * 2
  assert set(got) == expected


def test_rows_follow_the_authors_notebook_order(paper_sequences):
  # Their construction: ordered class pairs x ordered label pairs (label pair
  # major), stacked twice with the query in slot 0, then in slot 1.
  train, s = paper_sequences
  grid = np.broadcast_to(np.arange(50), (50, 50))
  pairs = np.vstack([grid.T.reshape(-1), grid.reshape(-1)]).T
  class_pairs = pairs[pairs[:, 0] != pairs[:, 1]]
  label_pairs = np.concatenate([train, train[:, ::-1]])
  n = len(class_pairs) * len(label_pairs)
  classes = np.broadcast_to(class_pairs, (len(label_pairs), *class_pairs.shape)).reshape(n, 2)
  labels = np.broadcast_to(label_pairs[:, None], (len(label_pairs), len(class_pairs), 2)
                           ).reshape(n, 2)
  np.testing.assert_array_equal(s.context_classes, np.concatenate([classes, classes]))
  np.testing.assert_array_equal(s.context_labels, np.concatenate([labels, labels]))
  np.testing.assert_array_equal(s.query_class,
                                np.concatenate([classes[:, 0], classes[:, 1]]))


def test_other_sizes():
  train, _, _ = dist.label_pair_split(10, (36, 9, 0))
  s = dist.enumerate_training_sequences(train, n_classes=20)
  assert len(s.query_label) == 20 * 19 * 72 * 2
  # each label is the query's in 2 slots x its training pairs x 380 class pairs
  degree = np.bincount(train.ravel(), minlength=10)
  assert np.bincount(s.query_label).tolist() == (2 * degree * 20 * 19).tolist()


@pytest.mark.parametrize("call,name", [
    (lambda: dist.label_pair_split(1, (0, 0, 0)), "n_labels"),
    (lambda: dist.label_pair_split(5, (8, 1, 0)), "split"),
    (lambda: dist.label_pair_split(5, (8, 2)), "split"),
    (lambda: dist.label_pair_split(5, (11, -1, 0)), "split"),
    (lambda: dist.label_pair_split(5, (0, 10, 0)), "split"),  # no label trained
    (lambda: dist.label_pair_split(5, (8, 2, 0), seed="20"), "seed"),
    (lambda: dist.ordered_pairs(np.arange(4)), "pairs"),
    (lambda: dist.enumerate_training_sequences([[0, 1]], n_classes=1), "n_classes"),
    (lambda: dist.enumerate_training_sequences([[0, 0]]), "train_pairs"),
    (lambda: dist.enumerate_training_sequences([[0, 1], [1, 0]]), "train_pairs"),
    (lambda: dist.enumerate_training_sequences(np.zeros((0, 2), int)), "train_pairs"),
    (lambda: dist.enumerate_training_sequences([[0.5, 1.0]]), "train_pairs"),
])
def test_bad_input_is_one_line_naming_the_argument(call, name):
  with pytest.raises(UserError, match=f"^{name}: ") as e:
    call()
  assert "\n" not in str(e.value)
