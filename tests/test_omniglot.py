"""Omniglot loading, augmentation, class split and the Chan sequence generator.

Uses the small Omniglot subsets in ../shared/data/omniglot (relative to the
repository root).
"""
import dataclasses
import socket
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_transience.proj.transience.omniglot import chan_sequences as chan
from icl_transience.proj.transience.omniglot import data as omniglot
from icl_transience.proj.transience.sequences import BURSTY, DISTRACTOR, OTHER, QUERY
from icl_transience.errors import UserError

import helpers

SHARED = Path(helpers.OMNIGLOT)
N_SMALL = 242  # small1 (136) + small2 (156) share 50 characters
N = 4000


@pytest.fixture(name="omni")
def decoded_subsets(omniglot_subsets):
  return omniglot_subsets


def draw(spec, n=N, seed=0):
  out = jax.jit(chan.sample_sequences, static_argnums=(1, 2))(
      jax.random.PRNGKey(seed), spec, n)
  return jax.tree.map(np.asarray, out)


def small_spec(**fields):
  return chan.chan_spec(N_SMALL, **fields)


def assert_no_repeated_drawing(s):
  """No (class, exemplar) pair occurs twice inside a sequence."""
  same_class = s.classes[:, :, None] == s.classes[:, None, :]
  same_drawing = s.exemplars[:, :, None] == s.exemplars[:, None, :]
  off_diagonal = ~np.eye(s.classes.shape[1], dtype=bool)
  assert not (same_class & same_drawing & off_diagonal).any()


def test_loader_gives_20_drawings_of_105x105_in_unit_range(omni):
  images, characters = omni
  assert images.shape == (N_SMALL, 20, 105, 105) and images.dtype == np.float32
  assert len(set(characters.tolist())) == N_SMALL
  # 8 classes per character; a subset's split uses every one of them
  split = omniglot.class_split(N_SMALL, 1856, 80)
  np.testing.assert_array_equal(
      np.sort(np.concatenate(split)), np.arange(8 * N_SMALL))
  # strokes are dark (0) on a light background (TF's grayscale white 0.9999)
  np.testing.assert_allclose(np.unique(images), [0.0, 0.9999], atol=1e-6)
  assert 0.02 < (images < 0.5).mean() < 0.2
  assert (images[:, :, 0, :] > 0.5).mean() > 0.97  # top rows are background
  # no two drawings of a character are identical
  flat = images.reshape(N_SMALL, 20, -1)
  assert all(len({d.tobytes() for d in c}) == 20 for c in flat[:20])


def test_record_order_is_tfds_order(omniglot_dir):  # pylint: disable=unused-argument
  from tensorflow_datasets.core import hashing  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(SHARED / "images_background_small2.zip") as archive:
    names = [n for n in archive.namelist() if n.endswith(".png")]
  hasher = hashing.Hasher("small2")

  def tfds_key(name):
    alphabet, character, image = name.split("/")[-3:]
    return f"{alphabet}_{int(character[len('character'):]) - 1}_{image}"

  expected = sorted(names, key=lambda n: hasher.hash_key(tfds_key(n)))
  assert omniglot._tfds_order(names, "small2") == expected  # pylint: disable=protected-access


def test_eight_transforms_are_distinct_flips_and_rotations(omni):
  images = jnp.asarray(omni.images[:3])
  classes = jnp.arange(8) + 8 * 2  # the 8 classes of character 2
  out = np.asarray(jax.jit(omniglot.gather_images)(
      images, classes, jnp.full((8,), 5)))
  assert out.shape == (8, 105, 105, 1)
  raw = omni.images[2, 5]
  for t in range(8):
    source = raw[:, ::-1] if t >= 4 else raw
    np.testing.assert_array_equal(out[t, ..., 0], np.rot90(source, t % 4))
  assert len({o.tobytes() for o in out}) == 8


def test_class_split_keeps_characters_whole():
  n_rare, n_common, n_holdout = omniglot.split_counts(1623)
  assert (n_rare, n_common, n_holdout) == (12_700, 100, 80)
  split = omniglot.class_split(1623, n_rare + n_common, n_holdout)
  assert len(set(split.train)) == 12_800 and len(set(split.holdout)) == 80
  assert not set(split.train) & set(split.holdout)
  assert max(split.train.max(), split.holdout.max()) < 12_984
  # whole characters: 1,600 in training, 10 held out, 13 unused
  train_chars, holdout_chars = split.train // 8, split.holdout // 8
  assert len(set(train_chars)) == 1600 and len(set(holdout_chars)) == 10
  groups = split.train.reshape(-1, 8)  # a character's 8 classes stay adjacent
  assert ((groups % 8 == np.arange(8)) & (groups // 8 == groups[:, :1] // 8)).all()
  assert omniglot.split_counts(N_SMALL) == (1756, 100, 80)
  with pytest.raises(UserError, match="too small"):
    omniglot.split_counts(20)


def test_bursty_training_sequences():
  spec = small_spec(p_bursty=0.5, zipf_exponent=1.0)
  s = draw(spec)
  split = omniglot.class_split(N_SMALL, spec.n_train, spec.n_holdout)
  assert s.classes.shape == (N, 9) and s.labels.shape == (N, 8)
  types, context = s.item_types[:, :-1], s.classes[:, :-1]
  assert (s.item_types[:, -1] == QUERY).all()
  # fixed labels: label j is the j-th training class; never a holdout class
  np.testing.assert_array_equal(split.train[s.labels], context)
  np.testing.assert_array_equal(split.train[s.target], s.classes[:, -1])
  assert not np.isin(s.classes, split.holdout).any()
  # p_bursty: bursty rows are 3 + 3 + 2, the rest i.i.d. (all OTHER)
  bursty = (types == BURSTY).any(1)
  assert abs(bursty.mean() - 0.5) < 0.03
  b = types[bursty]
  assert ((b == BURSTY).sum(1) == 3).all() and ((b == DISTRACTOR).sum(1) == 3).all()
  assert ((b == OTHER).sum(1) == 2).all()
  assert (types[~bursty] == OTHER).all()
  query_items = np.where(types == BURSTY, context, -1).max(1)
  np.testing.assert_array_equal(query_items[bursty], s.classes[bursty, -1])
  distractor = np.where(types == DISTRACTOR, context, -1)
  assert ((distractor == distractor.max(1, keepdims=True)) | (distractor < 0)).all()
  assert np.abs((b == BURSTY).mean(0) - 3 / 8).max() < 0.04  # shuffled
  # Zipf: label j has weight (n_train - j)^-1, the last label the heaviest
  weights = 1.0 / np.arange(spec.n_train, 0, -1)
  weights /= weights.sum()
  rest = np.where(types == OTHER, s.labels, -1)[bursty]
  rest = rest[rest >= 0]
  assert abs((rest == spec.n_train - 1).mean() - weights[-1]) < 0.03
  assert (rest >= spec.n_train - 100).mean() > 0.55
  assert_no_repeated_drawing(s)


def test_default_training_is_all_bursty_and_uniform():
  spec = small_spec()
  s = draw(spec, seed=3)
  assert ((s.item_types[:, :-1] == BURSTY).sum(1) == 3).all()  # p_bursty 1
  assert abs(np.mean(s.labels < spec.n_train / 2) - 0.5) < 0.03  # uniform
  counts = np.bincount(s.exemplars.ravel(), minlength=20)
  assert counts.min() > 0.8 * counts.mean()  # every drawing used evenly
  assert_no_repeated_drawing(s)


def test_icl_evaluator_uses_holdout_classes_and_01_labels():
  spec = small_spec(kind="fewshot_holdout")
  s = draw(spec)
  split = omniglot.class_split(N_SMALL, spec.n_train, spec.n_holdout)
  types, context = s.item_types[:, :-1], s.classes[:, :-1]
  assert np.isin(s.classes, split.holdout).all()
  assert ((types == BURSTY).sum(1) == 4).all() and ((types == DISTRACTOR).sum(1) == 4).all()
  np.testing.assert_array_equal(np.where(types == BURSTY, s.labels, -1).max(1),
                                s.target)
  assert (np.where(types == DISTRACTOR, s.labels, s.target[:, None])
          != s.target[:, None]).sum(1).tolist() == [4] * N
  np.testing.assert_array_equal(np.where(types == BURSTY, context, -1).max(1),
                                s.classes[:, -1])
  assert abs(s.target.mean() - 0.5) < 0.03
  assert_no_repeated_drawing(s)


@pytest.mark.parametrize("kind,zipf", [("no_support_zipfian", 1.0),
                                       ("no_support_common", 0.0)])
def test_iwl_evaluator_never_shows_the_query_class(kind, zipf):
  spec = small_spec(kind=kind, zipf_exponent=zipf)
  s = draw(spec, n=2000)
  split = omniglot.class_split(N_SMALL, spec.n_train, spec.n_holdout)
  assert (s.classes[:, :-1] != s.classes[:, -1:]).all()
  assert (s.labels != s.target[:, None]).all()
  np.testing.assert_array_equal(split.train[s.labels], s.classes[:, :-1])
  np.testing.assert_array_equal(split.train[s.target], s.classes[:, -1])
  assert (s.item_types[:, :-1] == OTHER).all()
  lo, hi = chan.closed_labels(spec)
  assert s.labels.min() >= lo and max(s.labels.max(), s.target.max()) < hi
  if kind == "no_support_common":
    assert (lo, hi) == (1756, 1856) and len(np.unique(s.target)) == 100
  else:
    assert (s.target >= spec.n_train - 100).mean() > 0.55  # Zipf query


def test_query_accuracies():
  spec = small_spec(kind="fewshot_holdout")
  logits = np.full((3, spec.n_classes), -5.0, np.float32)
  logits[0, 1] = 1.0                        # right
  logits[1, 0], logits[1, 7] = 0.5, 3.0     # a trained label wins the full argmax
  logits[2, 1] = 2.0                        # wrong
  acc = chan.query_accuracies(jnp.asarray(logits), jnp.array([1, 0, 0]), spec)
  assert float(acc["accuracy_query"]) == pytest.approx(1 / 3)
  assert float(acc["accuracy_closed"]) == pytest.approx(2 / 3)
  assert chan.closed_labels(dataclasses.replace(spec, kind="no_support_zipfian")) == (0, 1856)
  assert chan.evaluator_kinds(spec)[-1] == "fewshot_holdout"


@pytest.mark.parametrize("fields,field", [
    (dict(p_bursty=1.5), "p_bursty"), (dict(n_holdout=12), "n_holdout"),
    (dict(kind="nope"), "kind"), (dict(kind="fewshot_holdout", fs_shots=3), "fs_shots"),
    (dict(n_rare=20_000), "exceeds"), (dict(context_len=4), "context_len")])
def test_bad_specs_are_user_errors(fields, field):
  with pytest.raises(UserError, match=field):
    small_spec(**fields)


def test_missing_tfds_data_is_one_line_naming_both_ways(tmp_path, monkeypatch):

  def no_network(*args, **kwargs):
    raise AssertionError("tried to reach the network")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  start = time.time()
  with pytest.raises(UserError) as error:
    omniglot.load_omniglot("", tfds_data_dir=str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and "download_and_prepare" in message
  assert "data.omniglot_dir" in message and "images_background.zip" in message
  assert time.time() - start < 10


def test_tfds_records_give_the_same_array_as_the_archives(monkeypatch, omniglot_dir):  # pylint: disable=unused-argument
  """A prepared TFDS split stores the records in the order the archives are
  read in, so both paths give the same characters and drawings."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(SHARED / "images_background_small1.zip") as archive:
    names = [n for n in archive.namelist() if n.endswith(".png")]
    records = [
        {"image": np.asarray(Image.open(archive.open(n)).convert("RGB")),
         "label": np.int64(int(n.split("/")[-1][:4]) - 1)}
        for n in omniglot._tfds_order(names, "small1")]  # pylint: disable=protected-access

  class PreparedOmniglot:
    info = SimpleNamespace(splits={"small1": None},
                           file_format=tfds.core.FileFormat.ARRAY_RECORD)

    def is_prepared(self):
      return True

    def as_data_source(self, split):
      assert split == "small1"
      return records

  monkeypatch.setattr(tfds, "builder", lambda name, data_dir: PreparedOmniglot())
  from_tfds = omniglot.load_tfds("unused", splits=("small1",))
  from_zip = omniglot.load_archives(str(SHARED), ("images_background_small1.zip",))
  np.testing.assert_array_equal(from_tfds.characters, from_zip.characters)
  np.testing.assert_array_equal(from_tfds.images, from_zip.images)
  with pytest.raises(UserError, match="no split 'train'"):
    omniglot.load_tfds("unused")


def test_bad_archive_folders_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="no such directory"):
    omniglot.load_archives(str(tmp_path / "missing"))
  with pytest.raises(UserError, match="no Omniglot archive"):
    omniglot.load_archives(str(tmp_path))
  (tmp_path / "images_background_small1.zip").write_bytes(b"not a zip")
  with pytest.raises(UserError, match="cannot read"):
    omniglot.load_archives(str(tmp_path))
