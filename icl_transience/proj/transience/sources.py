"""Where exemplar features come from: a (class, exemplar, dim) table, or one-hots.

Sources:
  synthetic  low-rank class clusters made on device from a seed (the default:
             the embedded synthetic features, see NOTES.md)
  features   a file: HDF5 (dataset path such as 'resnet18/224/feat'), .npy,
             or .npz (array name), holding classes x exemplars x dim
  onehot     class c is the one-hot vector e_c (every exemplar identical)
"""
import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_transience.errors import UserError

SOURCES = ("synthetic", "features", "onehot")


class SourceShape(NamedTuple):
  n_classes: int
  n_exemplars: int
  dim: int


def _file_array(data_cfg):
  """Opens the features file lazily (h5py dataset or memory-mapped numpy)."""
  path, key = data_cfg.path, data_cfg.key
  if not path:
    raise UserError("data.path: empty; the 'features' source needs a file")
  if not os.path.isfile(path):
    raise UserError(f"data.path: no such file: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".h5", ".hdf5"):
    import h5py  # pylint: disable=g-import-not-at-top
    try:
      handle = h5py.File(path, "r")
    except OSError as e:
      raise UserError(f"data.path: not a readable HDF5 file: {path} ({e})") from e
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
      raise UserError(f"data.key: no dataset '{key}' in {path}")
    return handle[key]
  try:
    if ext == ".npy":
      return np.load(path, mmap_mode="r", allow_pickle=False)
    if ext == ".npz":
      archive = np.load(path, allow_pickle=False)
      name = key if key in archive.files else None
      if name is None and len(archive.files) == 1:
        name = archive.files[0]
      if name is None:
        raise UserError(f"data.key: no array '{key}' in {path} "
                        f"(it holds {', '.join(archive.files)})")
      return archive[name]
  except ValueError as e:
    raise UserError(f"data.path: cannot read {path} ({e})") from e
  raise UserError(f"data.path: unknown file type '{ext}' (use .h5, .hdf5, "
                  ".npy or .npz)")


def source_shape(data_cfg) -> SourceShape:
  """The source's size, without building it (cheap; used to validate)."""
  if data_cfg.source == "synthetic":
    return SourceShape(data_cfg.n_classes, data_cfg.n_exemplars, data_cfg.dim)
  if data_cfg.source == "onehot":
    return SourceShape(data_cfg.n_classes, 1, data_cfg.n_classes)
  if data_cfg.source == "features":
    array = _file_array(data_cfg)
    if len(array.shape) != 3:
      raise UserError(f"data.path: expected an array of classes x exemplars x "
                      f"dim, got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
      raise UserError(f"data.path: {data_cfg.path} holds {array.dtype} values; "
                      "features must be floating point")
    return SourceShape(*(int(s) for s in array.shape))
  raise UserError(f"data.source: unknown source '{data_cfg.source}' "
                  f"(choose from {', '.join(SOURCES)})")


def check_finite(data_cfg, chunk_bytes: int = 1 << 26):
  """Refuses non-finite synthetic parameters, and a features file holding
  NaN or Inf (read class by class, in chunks of about chunk_bytes)."""
  if data_cfg.source == "synthetic":
    for field in ("spread", "isotropic_noise", "transform_spread", "feature_shift",
                  "feature_scale", "subcluster_spread"):
      if not np.isfinite(data_cfg.get(field, 0.0)):
        raise UserError(f"data.{field}: must be finite, got {data_cfg[field]}")
    if data_cfg.get("subclusters", 1) < 1:
      raise UserError(f"data.subclusters: must be >= 1, got {data_cfg.subclusters}")
  if data_cfg.source != "features":
    return
  array = _file_array(data_cfg)
  row_bytes = int(np.prod(array.shape[1:])) * array.dtype.itemsize
  step = max(1, chunk_bytes // max(1, row_bytes))
  for start in range(0, array.shape[0], step):
    chunk = np.asarray(array[start:start + step])
    if not np.isfinite(chunk).all():
      bad = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
      raise UserError(f"data.path: {data_cfg.path} holds non-finite values "
                      f"(NaN or Inf), first in class {bad}")


def synthetic_table(seed: int, n_classes: int, n_exemplars: int, dim: int,
                    rank: int, spread: float, isotropic_noise: float,
                    sharding=None, transform_spread: float = -1.0,
                    relu: bool = False, shift: float = 0.0, scale: float = 1.0,
                    subclusters: int = 1, subcluster_spread: float = 0.0):
  """exemplar(c, e) = scale * ((z_c + spread * eps_ce) @ A + noise * N(0, I_dim) + shift).

  z_c, eps_ce ~ N(0, I_rank); A ~ N(0, 1/rank) of shape rank x dim.
  transform_spread t >= 0 gives the classes a character structure (the
  intended layout's class = 8 * character + transform, Singh et al. 2023):
  z_c = u_{c // 8} + t * w_c with u, w ~ N(0, I_rank), so a character's 8
  transforms are clusters t apart around one centre; t < 0: independent
  classes. relu: every coordinate max(x, 0), non-negative like a ResNet's
  penultimate features; shift, added before it, makes them sparser (< 0)
  or denser with a larger common mean (> 0). scale sets the features' norm
  against the fixed sinusoidal positions they are added to. subclusters
  M > 1 splits each class into M groups of near-duplicates, like several
  views of one drawing: exemplar e scatters (by spread) around the centre
  z_c + subcluster_spread * v_{c, e % M}, v ~ N(0, I_rank).
  """
  @functools.partial(jax.jit, out_shardings=sharding)
  def make(key):
    k_z, k_eps, k_a, k_noise = jax.random.split(key, 4)
    z = jax.random.normal(k_z, (n_classes, 1, rank))
    if transform_spread >= 0:
      n_characters = -(-n_classes // 8)
      centres = jax.random.normal(jax.random.fold_in(key, 1),
                                  (n_characters, 1, rank))
      z = jnp.repeat(centres, 8, axis=0)[:n_classes] + transform_spread * z
    if subclusters > 1:
      offsets = jax.random.normal(jax.random.fold_in(key, 2),
                                  (n_classes, subclusters, rank))
      z = z + subcluster_spread * offsets[:, np.arange(n_exemplars) % subclusters]
    eps = jax.random.normal(k_eps, (n_classes, n_exemplars, rank))
    a = jax.random.normal(k_a, (rank, dim)) / np.sqrt(rank)
    noise = jax.random.normal(k_noise, (n_classes, n_exemplars, dim))
    # Full float32 precision whatever the backend's default (TF32 on recent
    # GPUs, one bf16 pass on TPUs): one seed, one table, on every machine.
    points = jnp.matmul(z + spread * eps, a, precision=jax.lax.Precision.HIGHEST)
    points = points + isotropic_noise * noise + shift
    return scale * (jax.nn.relu(points) if relu else points)

  return make(jax.random.PRNGKey(seed))


def released_layout_index(n_classes: int, n_exemplars: int):
  """(class, exemplar) of the intended layout behind each entry of the
  released fixed-feature files (the caveat on the released files of Singh et al. 2023).

  Intended: class = 8 * character + transform, exemplar = drawing. The
  released extraction read image f = 20 * n + e of a dataset indexed
  image * 8 + transform (image = 20 * character + drawing) as class n,
  exemplar e: class n holds character n // 8 over ~2.5 drawings x 8 transforms.
  """
  f = np.arange(n_classes * n_exemplars).reshape(n_classes, n_exemplars)
  image, transform = f // 8, f % 8
  character, drawing = image // n_exemplars, image % n_exemplars
  return 8 * character + transform, drawing


def load_table(data_cfg, sharding=None):
  """The feature table on device (placed with `sharding`, which may span
  processes), or None for one-hot classes. data.layout='released' rearranges
  an intended-layout table into the released files' (bug-compatible) one."""
  if data_cfg.source == "onehot":
    return None
  if data_cfg.source == "synthetic":
    table = synthetic_table(data_cfg.dataset_seed, data_cfg.n_classes,
                            data_cfg.n_exemplars, data_cfg.dim, data_cfg.rank,
                            data_cfg.spread, data_cfg.isotropic_noise, sharding,
                            transform_spread=data_cfg.get("transform_spread", -1.0),
                            relu=data_cfg.get("relu_features", False),
                            shift=data_cfg.get("feature_shift", 0.0),
                            scale=data_cfg.get("feature_scale", 1.0),
                            subclusters=data_cfg.get("subclusters", 1),
                            subcluster_spread=data_cfg.get("subcluster_spread", 0.0))
    if data_cfg.layout == "released":
      rows, cols = released_layout_index(*table.shape[:2])
      table = jax.jit(lambda t: t[rows, cols], out_shardings=sharding)(table)
    return table
  array = np.asarray(_file_array(data_cfg), dtype=np.float32)
  if data_cfg.layout == "released":
    array = array[released_layout_index(*array.shape[:2])]
  if sharding is None:
    return jnp.asarray(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda i: array[i])


def gather_features(table, classes, exemplars, n_classes: int):
  """Features of (class, exemplar) index arrays: shape classes.shape + (dim,)."""
  if table is None:
    return jax.nn.one_hot(classes, n_classes, dtype=jnp.float32)
  return table[classes, exemplars]
