"""Shapes3D stand-in, hidden-factor sequences, probes and plateau length."""
import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_transience.analysis import curves
from icl_transience.proj.plateaus import plateau
from icl_transience.proj.plateaus import factor_sequences as fseq
from icl_transience.proj.plateaus import shapes
from icl_transience.errors import UserError

SPEC = shapes.ShapesSpec()
NOISY = dataclasses.replace(SPEC, noise_std=0.1)
SEQ = fseq.FactorSequenceSpec()
SIZES = shapes.FACTOR_SIZES
_render = jax.jit(shapes.render_images, static_argnums=2)
sample_images = jax.jit(shapes.sample_images, static_argnums=(1, 2))
sample_sequences = jax.jit(fseq.sample_factor_sequences, static_argnums=(1, 2))


def render_rows(rows):
  """Noise-free images of factor rows, padded to 512 rows (one compile)."""
  rows = np.asarray(rows, np.int32)
  padded = np.zeros((-(-len(rows) // 512) * 512, 6), np.int32)
  padded[:len(rows)] = rows
  return np.asarray(_render(None, jnp.asarray(padded), SPEC))[:len(rows)]


def as_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def test_images_shape_dtype_range_and_factor_ranges():
  factors, images = as_numpy(sample_images(jax.random.PRNGKey(0), NOISY, 64))
  assert factors.shape == (64, 6) and factors.dtype == np.int32
  assert (factors >= 0).all() and (factors < np.array(SIZES)).all()
  assert images.shape == (64, 32, 32, 3) and images.dtype == np.float32
  assert images.min() >= 0.0 and images.max() <= 1.0
  clean = render_rows(factors)
  assert clean.min() >= 0.0 and clean.max() <= 1.0
  inside = (clean > 0.3) & (clean < 0.7)       # pixels the clip cannot touch
  assert abs((images - clean)[inside].std() - 0.1) < 0.01


def test_another_key_gives_other_images():
  key_a, key_b = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  first, other = sample_images(key_a, NOISY, 64), sample_images(key_b, NOISY, 64)
  for x, z in zip(first, other):
    assert (np.asarray(x) != np.asarray(z)).any()


def test_every_value_of_every_factor_gives_a_different_image():
  bases = np.random.default_rng(5).integers(0, SIZES, (6, 6))
  rows = []
  for base, factor in itertools.product(bases, range(6)):
    for value in range(SIZES[factor]):
      row = base.copy()
      row[factor] = value
      rows.append(row)
  images = render_rows(rows)
  start = 0
  for _, factor in itertools.product(bases, range(6)):
    group = images[start:start + SIZES[factor]].reshape(SIZES[factor], -1)
    start += SIZES[factor]
    gaps = np.abs(group[:, None] - group[None]).max(-1) + np.eye(len(group))
    assert gaps.min() > 0.05, shapes.FACTOR_NAMES[factor]


def test_shapes_differ_at_every_scale_and_orientation():
  rows = [[1, 6, 3, scale, shape, turn] for scale in range(8)
          for turn in range(15) for shape in range(4)]
  images = render_rows(rows).reshape(8, 15, 4, -1)
  gaps = np.abs(images[:, :, :, None] - images[:, :, None]).max(-1) + np.eye(4)
  assert gaps.min() > 0.1


def test_bad_specs_name_the_field():
  with pytest.raises(UserError, match="shapes.factor_sizes"):
    shapes.ShapesSpec(factor_sizes=(10, 10, 10, 8, 5, 15)).validate()
  with pytest.raises(UserError, match="sequence.label_vocab"):
    fseq.FactorSequenceSpec(label_vocab=10).validate()
  with pytest.raises(UserError, match="sequence.hidden_factors"):
    fseq.FactorSequenceSpec(hidden_factors=(0, 6)).validate()
  shapes.ShapesSpec().validate()
  fseq.FactorSequenceSpec().validate()


def check_labels_follow_mapping(s):
  values = np.take_along_axis(s.factors, s.hidden_factor[:, None, None], -1)[..., 0]
  np.testing.assert_array_equal(s.labels, np.take_along_axis(s.mapping, values, -1))
  return values


def test_random_mapping_sequences():
  s = as_numpy(sample_sequences(jax.random.PRNGKey(0), SEQ, 2000, 0.0))
  assert s.factors.shape == (2000, 48, 6) and s.labels.shape == (2000, 48)
  assert not s.is_fixed.any()
  check_labels_follow_mapping(s)
  # each mapping is a permutation of the 15 label ids (an injection per factor)
  np.testing.assert_array_equal(np.sort(s.mapping, 1), np.tile(np.arange(15), (2000, 1)))
  assert len({tuple(m) for m in s.mapping}) == 2000
  hidden_share = np.bincount(s.hidden_factor, minlength=6) / 2000
  assert np.abs(hidden_share - 1 / 6).max() < 0.04
  assert (s.factors < np.array(SIZES)).all() and s.factors.min() == 0
  # label ids spread over the whole vocabulary, not just 0..n_e-1
  assert s.labels[s.hidden_factor == shapes.SHAPE].max() > 3
  assert abs(fseq.chance_accuracy(SEQ) - 0.1236) < 1e-4


def test_fixed_mapping_and_exact_mixture_fraction():
  fixed = as_numpy(sample_sequences(jax.random.PRNGKey(1), SEQ, 2000, 1.0))
  assert fixed.is_fixed.all()
  np.testing.assert_array_equal(fixed.mapping, np.tile(np.arange(15), (2000, 1)))
  np.testing.assert_array_equal(fixed.labels, check_labels_follow_mapping(fixed))
  for p in (0.25, 0.5):        # one compiled function: p is a traced scalar
    mixed = as_numpy(sample_sequences(jax.random.PRNGKey(2), SEQ, 2000, p))
    check_labels_follow_mapping(mixed)
    assert mixed.is_fixed.sum() == round(p * 2000)
    identity = (mixed.mapping == np.arange(15)).all(1)
    np.testing.assert_array_equal(identity, mixed.is_fixed)
    assert abs(mixed.is_fixed[:1000].mean() - p) < 0.05   # rows are shuffled


def test_value_seen_before_matches_a_loop():
  s = as_numpy(sample_sequences(jax.random.PRNGKey(3), SEQ, 2000, 0.0))
  s = jax.tree.map(lambda x: x[:20], s)
  seen = np.asarray(fseq.value_seen_before(s))
  values = check_labels_follow_mapping(s)
  for row, flags in zip(values, seen):
    expected = [row[i] in row[:i] for i in range(len(row))]
    np.testing.assert_array_equal(flags, expected)
  assert not seen[:, 0].any()


def test_factor_one_hots():
  factors = np.random.default_rng(0).integers(0, SIZES, (5, 7, 6))
  hots = np.asarray(fseq.factor_one_hots(jnp.asarray(factors), SIZES))
  assert hots.shape == (5, 7, sum(SIZES))
  bounds = np.cumsum((0,) + SIZES)
  for i in range(6):
    block = hots[..., bounds[i]:bounds[i + 1]]
    np.testing.assert_array_equal(block.sum(-1), 1.0)
    np.testing.assert_array_equal(block.argmax(-1), factors[..., i])


def test_word_selection_sequences():
  spec = fseq.WordSelectionSpec()
  spec.validate()
  table = fseq.word_attribute_table(spec)
  assert table.shape == (512, 3) and len({tuple(r) for r in table}) == 512
  np.testing.assert_array_equal(table, fseq.word_attribute_table(spec))
  assert (table != fseq.word_attribute_table(
      dataclasses.replace(spec, table_seed=1))).any()
  sample = jax.jit(fseq.sample_word_sequences, static_argnums=(1, 2))
  s = as_numpy(sample(jax.random.PRNGKey(0), spec, 300, 0.5))
  np.testing.assert_array_equal(s.labelled.factors, table[s.words])
  check_labels_follow_mapping(s.labelled)
  assert s.labelled.is_fixed.sum() == 150
  tokens = np.asarray(fseq.word_tokens(s, spec))
  assert tokens.shape == (300, 96) and tokens.max() < spec.vocab_size
  np.testing.assert_array_equal(tokens[:, 0::2], s.words)
  np.testing.assert_array_equal(tokens[:, 1::2], s.labelled.labels + 512)


@pytest.mark.parametrize("method", ["softmax", "ridge"])
def test_probes_decode_factors_perfectly_from_one_hots(method):
  factors = np.random.default_rng(0).integers(0, SIZES, (25_000, 6))
  train, held_out = jnp.asarray(factors[:20_000]), jnp.asarray(factors[20_000:])
  k_fit = jax.random.PRNGKey(0)
  fit = jax.jit(functools.partial(plateau.factor_probe_accuracies,
                                  factor_sizes=SIZES, method=method))
  accuracy = fit(k_fit, fseq.factor_one_hots(train, SIZES), train,
                 fseq.factor_one_hots(held_out, SIZES), held_out)
  np.testing.assert_array_equal(np.asarray(accuracy), 1.0)
  if method == "softmax":
    return
  # features unrelated to the factors: held-out accuracy stays near chance
  noise = jax.random.normal(k_fit, (25_000, 57))
  chance = fit(k_fit, noise[:20_000], train, noise[20_000:], held_out)
  assert (np.asarray(chance) < 1 / np.array(SIZES) + 0.05).all()


def test_probe_batch_larger_than_data_is_a_user_error():
  with pytest.raises(UserError, match="probe.batch_size"):
    plateau.fit_softmax_probe(jax.random.PRNGKey(0), jnp.zeros((10, 3)),
                              jnp.zeros((10,), jnp.int32), 2, batch_size=32)


STEPS = np.arange(0, 100_001, 1000)


def sigmoid_curve(midpoint, width=2000.0, chance=0.12, final=0.95):
  return chance + (final - chance) / (1 + np.exp(-(STEPS - midpoint) / width))


def test_plateau_length_of_a_sigmoid_is_its_midpoint():
  values = sigmoid_curve(40_500)
  assert curves.plateau_length(STEPS, values, chance=0.12) == 41_000
  assert curves.plateau_length(STEPS, sigmoid_curve(70_000.5), 0.12) == 71_000
  assert curves.crossing_step(STEPS, values, 0.5) == 41_000
  assert curves.crossing_step(STEPS, values, 0.12 + 0.05) < 41_000
  # a lower fraction of the rise ends the plateau earlier
  assert curves.plateau_length(STEPS, values, 0.12, fraction=0.1) < 41_000


def test_curves_without_a_plateau():
  rising = 1 - 0.88 * np.exp(-STEPS / 5000)      # no plateau: rises at once
  half_life = 5000 * math.log(2)
  length = curves.plateau_length(STEPS, rising, chance=0.12)
  assert length == math.ceil(half_life / 1000) * 1000
  already = np.full(STEPS.shape, 0.9)            # above threshold from the start
  assert curves.plateau_length(STEPS, already, chance=0.12) == 0
  flat = 0.12 + 0.01 * np.random.default_rng(0).standard_normal(STEPS.shape)
  assert math.isnan(curves.plateau_length(STEPS, flat, chance=0.12))
  assert math.isnan(curves.crossing_step(STEPS, flat, 0.5))


def test_plateau_edge_cases():
  assert curves.plateau_length([5], [0.9], chance=0.1) == 5
  values = sigmoid_curve(40_500)
  values[50] = np.nan                            # a missing evaluation
  assert curves.plateau_length(STEPS, values, chance=0.12) == 41_000
  noisy_end = values.copy()
  noisy_end[-1] = 0.2                            # one bad final point
  assert math.isnan(curves.plateau_length(STEPS, noisy_end, 0.12,
                                           min_rise=0.1))
  assert curves.plateau_length(STEPS, noisy_end, 0.12, final_window=10) == 41_000
  with pytest.raises(UserError, match="strictly increasing"):
    curves.plateau_length([0, 2, 1], [0.1, 0.2, 0.3], chance=0.1)
  with pytest.raises(UserError, match="equal-length"):
    curves.crossing_step([0, 1], [0.1], 0.5)
  with pytest.raises(UserError, match="plateau.fraction"):
    curves.plateau_length(STEPS, values, chance=0.1, fraction=1.5)
