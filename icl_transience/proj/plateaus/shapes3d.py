"""The real Shapes3D (3dshapes) through TFDS, the data of Fu et al.

The 480,000 images of every factor combination, read once from a prepared
TFDS `shapes3d` (never downloaded here), reordered so that row
`ravel_multi_index(factors, FACTOR_SIZES)` holds the image of those factor
values, and box-downsampled to the model's image size (uint8).
"""
import numpy as np

from icl_transience.proj.plateaus import shapes
from icl_transience.errors import UserError

SOURCE_SIZE = 64
LABEL_KEYS = tuple(f"label_{name}" for name in shapes.FACTOR_NAMES)


def missing_message(data_dir: str) -> str:
  where = data_dir or "the default TFDS data_dir"
  return (f"plateau.shapes3d_dir: Shapes3D is not prepared in {where}: run "
          "tfds.builder('shapes3d').download_and_prepare() on a machine with "
          "network and copy its data_dir here, or use plateau.source="
          "'procedural'")


def _builder(data_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder("shapes3d", data_dir=data_dir or None)
    prepared = builder.is_prepared()
  except Exception as e:  # an unreadable data_dir reads as a missing dataset
    raise UserError(missing_message(data_dir)) from e
  if not prepared:
    raise UserError(missing_message(data_dir))
  return builder


def check_available(data_dir: str) -> None:
  """UserError naming plateau.shapes3d_dir unless the dataset is prepared."""
  _builder(data_dir)


def _records(builder):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    source = builder.as_data_source(split="train")
    return (source[i] for i in range(len(source)))
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise UserError("plateau.shapes3d_dir: TFDS shapes3d is stored as "
                    "TFRecord, which needs tensorflow to read") from e
  return tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))


def downsample(image: np.ndarray, size: int) -> np.ndarray:
  """Box-filter a (64, 64, 3) uint8 image to (size, size, 3) uint8."""
  factor = SOURCE_SIZE // size
  blocks = image.reshape(size, factor, size, factor, 3).astype(np.float32)
  return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def load_images(data_dir: str, image_size: int) -> np.ndarray:
  """(480000, size, size, 3) uint8, row = ravel_multi_index(factors, sizes)."""
  if image_size > SOURCE_SIZE or SOURCE_SIZE % image_size:
    raise UserError(f"plateau.image_size: Shapes3D needs a divisor of "
                    f"{SOURCE_SIZE}, got {image_size}")
  builder = _builder(data_dir)
  n = int(np.prod(shapes.FACTOR_SIZES))
  images = np.zeros((n, image_size, image_size, 3), np.uint8)
  filled = np.zeros(n, bool)
  for record in _records(builder):
    row = np.ravel_multi_index([int(record[k]) for k in LABEL_KEYS],
                               shapes.FACTOR_SIZES)
    images[row] = downsample(np.asarray(record["image"]), image_size)
    filled[row] = True
  if not filled.all():
    raise UserError(f"plateau.shapes3d_dir: the dataset lacks "
                    f"{int((~filled).sum())} of the {n} factor combinations")
  return images
