"""Feature sources: synthetic low-rank classes, files, one-hots."""
import h5py
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from icl_transience.proj.transience import sources
from icl_transience.errors import UserError


def test_synthetic_classes_are_low_rank_clusters():
  table = np.asarray(sources.synthetic_table(0, 30, 10, 64, rank=4, spread=0.7,
                                             isotropic_noise=0.0))
  assert table.shape == (30, 10, 64)
  # without isotropic noise every exemplar lies in one rank-4 subspace
  assert np.linalg.matrix_rank(table.reshape(-1, 64), tol=1e-3) == 4
  within = np.linalg.norm(table - table.mean(1, keepdims=True), axis=-1).mean()
  between = np.linalg.norm(table.mean(1) - table.mean((0, 1)), axis=-1).mean()
  assert between > within  # classes are clusters
  assert not np.allclose(table, sources.synthetic_table(1, 30, 10, 64, 4, 0.7, 0.0))


def test_a_transform_spread_groups_eight_classes_as_one_character():
  args = (0, 32, 10, 64, 4, 0.1, 0.0)
  table = np.asarray(sources.synthetic_table(*args, transform_spread=0.2))
  means = table.mean(1).reshape(4, 8, 64)          # 4 characters x 8 transforms
  siblings = np.linalg.norm(means - means.mean(1, keepdims=True), axis=-1).mean()
  characters = np.linalg.norm(means.mean(1) - means.mean((0, 1)), axis=-1).mean()
  assert characters > 3 * siblings
  # the default (< 0) keeps the classes independent: the table is unchanged
  np.testing.assert_array_equal(
      sources.synthetic_table(*args), sources.synthetic_table(*args,
                                                              transform_spread=-1.0))
  independent = np.asarray(sources.synthetic_table(*args)).mean(1).reshape(4, 8, 64)
  assert np.linalg.norm(independent - independent.mean(1, keepdims=True),
                        axis=-1).mean() > 3 * siblings



def test_relu_features_are_the_table_clipped_at_zero():
  args = (0, 8, 5, 32, 4, 0.7, 0.1)
  plain = np.asarray(sources.synthetic_table(*args))
  clipped = np.asarray(sources.synthetic_table(*args, relu=True))
  np.testing.assert_array_equal(clipped, np.maximum(plain, 0))
  assert (plain < 0).mean() > 0.3
  # a shift moves every coordinate before the clip: sparser below 0
  shifted = np.asarray(sources.synthetic_table(*args, relu=True, shift=-0.5))
  np.testing.assert_allclose(shifted, np.maximum(plain - 0.5, 0), atol=1e-6)
  assert (shifted == 0).mean() > (clipped == 0).mean() + 0.1
  # a scale multiplies the finished features, after the clip
  scaled = np.asarray(sources.synthetic_table(*args, relu=True, shift=-0.5, scale=-2.0))
  np.testing.assert_allclose(scaled, -2.0 * shifted, atol=1e-6)


def test_subclusters_split_a_class_into_groups_of_near_duplicates():
  args = (0, 6, 12, 32, 4, 0.05, 0.0)
  table = np.asarray(sources.synthetic_table(*args, subclusters=3,
                                             subcluster_spread=1.0))
  dist = np.linalg.norm(table[:, :, None] - table[:, None], axis=-1)  # c, e, e
  group = np.arange(12) % 3
  same = (group[:, None] == group[None]) & ~np.eye(12, dtype=bool)
  differ = group[:, None] != group[None]
  assert dist[:, same].max() < dist[:, differ].min()
  # one subcluster (the default) leaves the table as it was
  np.testing.assert_array_equal(
      sources.synthetic_table(*args), sources.synthetic_table(*args, subclusters=1,
                                                              subcluster_spread=1.0))


def data_cfg(**kw):
  base = dict(source="features", path="", key="resnet18/224/feat", n_classes=0,
              n_exemplars=0, dim=0, layout="intended")
  base.update(kw)
  return ml_collections.ConfigDict(base)


@pytest.mark.parametrize("kind", ["h5", "npy", "npz"])
def test_features_files(tmp_path, kind):
  array = np.random.default_rng(0).normal(size=(6, 4, 5)).astype(np.float32)
  path = str(tmp_path / f"feat.{kind}")
  if kind == "h5":
    with h5py.File(path, "w") as f:
      f["resnet18/224/feat"] = array
  elif kind == "npy":
    np.save(path, array)
  else:
    np.savez(path, feat=array)
  cfg = data_cfg(path=path, key="feat" if kind == "npz" else "resnet18/224/feat")
  assert sources.source_shape(cfg) == (6, 4, 5)
  np.testing.assert_array_equal(np.asarray(sources.load_table(cfg)), array)


def test_bad_files_give_clear_errors(tmp_path):
  with pytest.raises(UserError, match="data.path: no such file"):
    sources.source_shape(data_cfg(path=str(tmp_path / "missing.h5")))
  path = str(tmp_path / "f.h5")
  with h5py.File(path, "w") as f:
    f["other"] = np.zeros((2, 2, 2))
  with pytest.raises(UserError, match="data.key: no dataset 'resnet18/224/feat'"):
    sources.source_shape(data_cfg(path=path))
  obj = str(tmp_path / "obj.npy")
  np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(UserError, match="cannot read"):  # never unpickled
    sources.source_shape(data_cfg(path=obj))


def test_onehot_source():
  cfg = data_cfg(source="onehot", n_classes=7)
  assert sources.source_shape(cfg) == (7, 1, 7)
  assert sources.load_table(cfg) is None
  feats = sources.gather_features(None, jnp.array([[2, 5]]), jnp.zeros((1, 2), int), 7)
  np.testing.assert_array_equal(feats[0, 1], np.eye(7)[5])


def test_released_layout_reproduces_the_extraction_bug(tmp_path):
  """Singh et al. 2023, appendix: class n of the released files holds
  character n // 8 over ~2.5 drawings x all 8 transforms; a character's 8
  classes partition its 160 (drawing, transform) images; the first 1,600
  classes span 200 characters."""
  classes, drawings = sources.released_layout_index(12_984, 20)
  character, transform = classes // 8, classes % 8
  n = np.arange(12_984)
  assert (character == (n // 8)[:, None]).all()
  assert all(len(set(transform[i])) == 8 for i in range(0, 12_984, 97))
  assert all(2 <= len(set(drawings[i])) <= 4 for i in range(0, 12_984, 97))
  for char in (0, 7, 1622):
    images = {(c, d) for i in range(8 * char, 8 * char + 8)
              for c, d in zip(classes[i], drawings[i])}
    assert images == {(8 * char + t, d) for t in range(8) for d in range(20)}
  assert len(set(character[:1600].ravel())) == 200
  # a features file in the intended layout, read bug-compatibly
  array = np.random.default_rng(0).normal(size=(16, 20, 3)).astype(np.float32)
  np.save(tmp_path / "f.npy", array)
  table = sources.load_table(data_cfg(path=str(tmp_path / "f.npy"), layout="released"))
  rows, cols = sources.released_layout_index(16, 20)
  np.testing.assert_array_equal(np.asarray(table), array[rows, cols])
