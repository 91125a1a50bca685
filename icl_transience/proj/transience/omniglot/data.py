"""Omniglot images for the Chan et al. pipeline (Chan et al. 2022).

`load_omniglot` gives every character's 20 drawings as float32 grayscale,
shape (n_characters, 20, 105, 105), from one of two places:

  * the zip archives of the original release in a folder
    (images_background.zip + images_evaluation.zip = all 1,623 characters, or
    the subsets images_background_small1.zip / _small2.zip), read offline;
  * a prepared TFDS `omniglot` dataset (splits train + test).

Polarity and orientation follow Chan et al.'s TFDS pipeline exactly: PNG ->
RGB uint8 -> float in [0, 1] -> TF's grayscale weights (0.2989, 0.5870,
0.1140). Strokes are dark (0.0) on a light background (0.9999: the weights
sum to 0.9999); row 0 is the top of the drawing, column 0 its left.

Order. Both sources give the same array, in Chan et al.'s in-memory order: the
records of each split in TFDS order (ascending md5 of the split name followed
by the example key, which is how TFDS writes them; a split this small is one
shard, read in order with shuffle_files=False), a character's drawings in
that order, characters in order of first appearance, split after split
(train, test; or small1, small2, where a character already seen is skipped:
the two small subsets share 50 characters).

Augmentation is lazy (`gather_images`): dataset class c = 8 * character + t
with t = 4 * flip + k, the image flipped left-right if flip, then rotated
counter-clockwise by k * 90 degrees (Chan's loop: flip in (no, yes), then
k in 0..3). Nothing is copied 8 times: the full set takes 1.43 GB as float32
(1,623 x 20 x 105 x 105 x 4 bytes) instead of 11.4 GB.

`class_split` orders the 8 x n_characters classes with numpy
default_rng(1337), permuting whole characters (groups of 8), and cuts it into
training classes (rare then common; the position is the class label) and
holdout classes (the end of the order).
"""
import functools
import hashlib
import io
import os
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_transience.errors import UserError

IMAGE_SIZE = 105
N_DRAWINGS = 20
N_TRANSFORMS = 8
FULL_CHARACTERS = 1623
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # TF's weights
# archive -> TFDS split name (the salt of TFDS's record order)
ARCHIVE_SPLITS = {
    "images_background.zip": "train",
    "images_evaluation.zip": "test",
    "images_background_small1.zip": "small1",
    "images_background_small2.zip": "small2",
}
FULL_ARCHIVES = ("images_background.zip", "images_evaluation.zip")
SMALL_ARCHIVES = ("images_background_small1.zip",
                  "images_background_small2.zip")


class Omniglot(NamedTuple):
  images: np.ndarray      # (n_characters, 20, 105, 105) float32, strokes 0
  characters: np.ndarray  # (n_characters,) int32 TFDS label (global char id)


class ClassSplit(NamedTuple):
  train: np.ndarray    # (n_rare + n_common,) dataset classes; index = label
  holdout: np.ndarray  # (n_holdout,) dataset classes


def _grayscale(rgb: np.ndarray) -> np.ndarray:
  return (rgb.astype(np.float32) / 255.0) @ GRAY_WEIGHTS


def _slots(labels, where: str):
  """Characters in order of first appearance, and each record's
  (character position, drawing position), drawings in record order."""
  position, count, slots = {}, [], []
  for label in labels:
    if label not in position:
      position[label] = len(count)
      count.append(0)
    c = position[label]
    slots.append((c, count[c]))
    count[c] += 1
  for label, c in position.items():
    if count[c] != N_DRAWINGS:
      raise UserError(f"data.omniglot_dir: {where}: character {label} has "
                      f"{count[c]} drawings, "
                      f"expected {N_DRAWINGS}")
  return np.array(list(position), np.int32), slots


def _empty_images(n_characters: int) -> np.ndarray:
  shape = (n_characters, N_DRAWINGS, IMAGE_SIZE, IMAGE_SIZE)
  return np.empty(shape, np.float32)


def _tfds_order(members, split: str):
  """Zip members sorted as TFDS writes them: md5(split + example key)."""
  salted = hashlib.md5(split.encode())

  def record_hash(name):
    alphabet, character, image = name.split("/")[-3:]
    character_id = int(character[len("character"):]) - 1
    digest = salted.copy()
    digest.update(f"{alphabet}_{character_id}_{image}".encode())
    return digest.digest()

  return sorted(members, key=record_hash)


def _label(member: str) -> int:
  """TFDS label of a drawing: its file name's character number - 1."""
  return int(os.path.basename(member).split("_")[0]) - 1


def _archives_in(directory: str) -> tuple[str, ...]:
  present = [a for a in ARCHIVE_SPLITS
             if os.path.isfile(os.path.join(directory, a))]
  full = tuple(a for a in FULL_ARCHIVES if a in present)
  return full or tuple(a for a in SMALL_ARCHIVES if a in present)


def _archive_paths(directory: str, archives: tuple[str, ...]) -> list[str]:
  if not os.path.isdir(directory):
    raise UserError(f"data.omniglot_dir: no such directory: {directory}")
  archives = tuple(archives) or _archives_in(directory)
  if not archives:
    raise UserError(f"data.omniglot_dir: no Omniglot archive in {directory} "
                    f"(expected {', '.join(ARCHIVE_SPLITS)})")
  for name in archives:
    if name not in ARCHIVE_SPLITS:
      raise UserError(f"data.omniglot_archives: unknown archive '{name}' "
                      f"(choose from {', '.join(ARCHIVE_SPLITS)})")
    if not os.path.isfile(os.path.join(directory, name)):
      raise UserError(f"data.omniglot_dir: no such file: "
                      f"{os.path.join(directory, name)}")
  return [os.path.join(directory, name) for name in archives]


def load_archives(directory: str, archives: tuple[str, ...] = ()) -> Omniglot:
  """Characters of the zip archives in `directory` (default: the full pair if
  present, else the small subsets), archives in the order given."""
  paths = _archive_paths(directory, archives)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    members = []  # (archive index, member) in record order, new characters
    for i, path in enumerate(paths):
      with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".png")]
      if not names:
        raise UserError(f"data.omniglot_dir: no PNG drawings in {path}")
      seen = {_label(m) for _, m in members}
      split = ARCHIVE_SPLITS[os.path.basename(path)]
      members += [(i, n) for n in _tfds_order(names, split)
                  if _label(n) not in seen]
    characters, slots = _slots([_label(m) for _, m in members], directory)
    images = _empty_images(len(characters))
    for i, path in enumerate(paths):
      with zipfile.ZipFile(path) as archive:
        for (j, member), slot in zip(members, slots):
          if j == i:
            with Image.open(io.BytesIO(archive.read(member))) as png:
              images[slot] = _grayscale(np.asarray(png.convert("RGB")))
  except (zipfile.BadZipFile, OSError, ValueError) as e:
    raise UserError(f"data.omniglot_dir: cannot read the archives in "
                    f"{directory} ({e})") from e
  return Omniglot(images, characters)


def _missing_tfds_message(data_dir) -> str:
  where = data_dir or "the default TFDS data_dir"
  return (f"Omniglot is not prepared in {where}: run tfds.builder('omniglot')"
          ".download_and_prepare() (needs network), or set data.omniglot_dir to"
          " a folder holding images_background.zip and images_evaluation.zip")


def _tfds_records(builder, split: str):
  """Records of one split in stored order (no TensorFlow for array_record)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    source = builder.as_data_source(split=split)
    return (source[i] for i in range(len(source)))
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise UserError("TFDS omniglot is stored as TFRecord, which needs "
                    "tensorflow to read; install it, or set data.omniglot_dir "
                    "to the zip archives") from e
  return tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))


def load_tfds(data_dir: str | None = None,
              splits: tuple[str, ...] = ("train", "test")) -> Omniglot:
  """Characters of a prepared TFDS `omniglot` (never downloads)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("omniglot", data_dir=data_dir)
  if not builder.is_prepared():
    raise UserError(_missing_tfds_message(data_dir))
  labels, drawings = [], []
  for split in splits:
    if split not in builder.info.splits:
      raise UserError(f"TFDS omniglot has no split '{split}' "
                      f"(it has {', '.join(builder.info.splits)})")
    seen = set(labels)
    for record in _tfds_records(builder, split):
      label = int(record["label"])
      if label not in seen:
        labels.append(label)
        drawings.append(_grayscale(np.asarray(record["image"])))
  characters, slots = _slots(labels, f"TFDS omniglot in {data_dir}")
  images = _empty_images(len(characters))
  for slot, drawing in zip(slots, drawings):
    images[slot] = drawing
  return Omniglot(images, characters)


def load_omniglot(omniglot_dir: str = "",
                  tfds_data_dir: str | None = None) -> Omniglot:
  """The zip archives in omniglot_dir if given, else TFDS (train + test)."""
  if omniglot_dir:
    return load_archives(omniglot_dir)
  return load_tfds(tfds_data_dir)


def split_counts(n_characters: int) -> tuple[int, int, int]:
  """(n_rare, n_common, n_holdout) for a dataset of n_characters.

  All 1,623 characters: Chan's 12,700 / 100 / 80 (104 classes unused).
  Other sizes keep 100 common and 80 holdout classes (10 characters) and make
  every other class rare (none unused).
  """
  if n_characters == FULL_CHARACTERS:
    return 12_700, 100, 80
  n_rare = N_TRANSFORMS * n_characters - 180
  if n_rare < 1:
    raise UserError(f"Omniglot subset too small: {n_characters} characters "
                    f"(need at least 23 for 100 common and 80 holdout classes)")
  return n_rare, 100, 80


@functools.lru_cache(maxsize=16)
def class_split(n_characters: int, n_train: int, n_holdout: int,
                order_seed: int = 1337) -> ClassSplit:
  """Chan's class order (whole characters permuted) cut into train/holdout."""
  rng = np.random.default_rng(order_seed)
  groups = rng.choice(range(n_characters), size=n_characters, replace=False)
  order = (groups[:, None] * N_TRANSFORMS + np.arange(N_TRANSFORMS)).reshape(-1)
  train = order[:n_train].astype(np.int32)
  holdout = order[len(order) - n_holdout:].astype(np.int32)
  train.flags.writeable = holdout.flags.writeable = False
  return ClassSplit(train, holdout)


def _transform_pixels() -> np.ndarray:
  """(8, 105*105): source pixel of every output pixel, per transform."""
  pixels = np.arange(IMAGE_SIZE * IMAGE_SIZE).reshape(IMAGE_SIZE, IMAGE_SIZE)
  return np.stack([np.rot90(pixels[:, ::-1] if flip else pixels, k).ravel()
                   for flip in (False, True) for k in range(4)]).astype(np.int32)


def gather_images(images: jax.Array, classes: jax.Array, exemplars: jax.Array,
                  noise_key: jax.Array | None = None,
                  noise_scale: float = 0.0) -> jax.Array:
  """Augmented images of (dataset class, exemplar) index arrays, on device.

  images: (n_characters, 20, 105, 105); returns classes.shape + (105, 105, 1),
  plus N(0, noise_scale^2) pixel noise when noise_scale > 0 (Chan's option).
  """
  n_characters = images.shape[0]
  flat = images.reshape(n_characters * N_DRAWINGS, IMAGE_SIZE * IMAGE_SIZE)
  drawing = (classes // N_TRANSFORMS) * N_DRAWINGS + exemplars
  pixels = jnp.asarray(_transform_pixels())[classes % N_TRANSFORMS]
  out = flat[drawing[..., None], pixels]
  out = out.reshape(classes.shape + (IMAGE_SIZE, IMAGE_SIZE, 1))
  if noise_scale:
    out = out + noise_scale * jax.random.normal(noise_key, out.shape, out.dtype)
  return out
