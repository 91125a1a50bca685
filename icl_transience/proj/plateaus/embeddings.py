"""Frozen item embeddings of the Shapes3D images, as Fu et al.'s code reads them.

The authors' items are fixed 768-d embeddings of the 480,000 Shapes3D images
from a pretrained VAE (their `repre_vae.npz`, key `repre`, one row per image
in row-major factor order: floor hue 10, wall hue 10, object hue 10, scale 8,
shape 4, orientation 15). The VAE is not published, so two sources give rows
of that layout:

  load_file   the authors' file (or any npz of the same layout), validated
  standin     a stand-in made on device from a seed, with the same shape and
              factor structure: row r, with factor values v_f(r), is
                sqrt(1 - e) * sum_f A_f[v_f]          (each factor alone)
              + sqrt(e) * relu-net(one-hots of v)     (factors entangled)
              + noise * N(0, I) drawn from (seed, r)  (fixed per image)
              A_f ~ N(0, 1/n_factors); the net is a fixed random 2-layer
              ReLU map of the concatenated one-hots, scaled to unit variance.
              `entangle` e in [0, 1] and `noise` are the difficulty knobs:
              e = 0 makes every factor linearly decodable from the row,
              e = 1 only through the nonlinear mixture.
`standin_table` computes every row once, in chunks, into a table of the
file's shape, so both sources are read the same way.
"""
import dataclasses
import math
import os
import zipfile

import jax
import jax.scipy.stats
import jax.numpy as jnp
import numpy as np

from icl_transience.errors import UserError

KEY = "repre"


@dataclasses.dataclass(frozen=True)
class StandInSpec:
  """The stand-in's shape and difficulty (hashable: a static jit argument)."""
  factor_sizes: tuple[int, ...] = (10, 10, 10, 8, 4, 15)
  dim: int = 768
  entangle: float = 0.5
  noise: float = 0.5
  seed: int = 0

  def validate(self) -> None:
    if not 0.0 <= self.entangle <= 1.0:
      raise UserError(f"plateau.standin_entangle: must be in [0, 1], got "
                      f"{self.entangle}")
    if not (self.noise >= 0 and math.isfinite(self.noise)):
      raise UserError(f"plateau.standin_noise: must be >= 0, got {self.noise}")
    if self.dim < 1:
      raise UserError(f"plateau.item_dim: must be >= 1, got {self.dim}")


def row_factors(rows: jax.Array, factor_sizes: tuple[int, ...]) -> jax.Array:
  """(..., n_factors) int32 factor values of row-major image rows."""
  return jnp.stack(jnp.unravel_index(rows, factor_sizes), axis=-1).astype(jnp.int32)


def _standin_weights(spec: StandInSpec):
  key = jax.random.PRNGKey(spec.seed)
  k_add, k_in, k_bias, k_out = jax.random.split(key, 4)
  n_in, n_factors = sum(spec.factor_sizes), len(spec.factor_sizes)
  additive = jax.random.normal(k_add, (n_in, spec.dim)) / np.sqrt(n_factors)
  hidden = jax.random.normal(k_in, (n_in, spec.dim)) / np.sqrt(n_factors)
  bias = 0.5 * jax.random.normal(k_bias, (spec.dim,))
  mix = jax.random.normal(k_out, (spec.dim, spec.dim)) / np.sqrt(spec.dim)
  return additive, hidden, bias, mix


def standin(rows: jax.Array, spec: StandInSpec) -> jax.Array:
  """(..., dim) float32 stand-in embeddings of image rows (...)."""
  additive, hidden, bias, mix = _standin_weights(spec)
  factors = row_factors(rows, spec.factor_sizes)
  hots = jnp.concatenate(
      [jax.nn.one_hot(factors[..., i], n, dtype=jnp.float32)
       for i, n in enumerate(spec.factor_sizes)], axis=-1)
  hi = jax.lax.Precision.HIGHEST
  linear = jnp.matmul(hots, additive, precision=hi)
  h = jax.nn.relu(jnp.matmul(hots, hidden, precision=hi) + bias)
  # the pre-activation is about N(bias, 1) over images: centre each unit
  # by its expected value and scale the mixture to unit variance
  cdf, pdf = jax.scipy.stats.norm.cdf(bias), jax.scipy.stats.norm.pdf(bias)
  mean = bias * cdf + pdf
  var = (bias ** 2 + 1) * cdf + bias * pdf - mean ** 2
  mixed = jnp.matmul(h - mean, mix, precision=hi) / jnp.sqrt(var.mean())
  x = np.sqrt(1 - spec.entangle) * linear + np.sqrt(spec.entangle) * mixed
  if spec.noise > 0:
    noise_key = jax.random.fold_in(jax.random.PRNGKey(spec.seed), 1)
    flat = rows.reshape(-1)
    noise = jax.vmap(lambda r: jax.random.normal(
        jax.random.fold_in(noise_key, r), (spec.dim,)))(flat)
    x = x + spec.noise * noise.reshape(rows.shape + (spec.dim,))
  return x


def standin_table(spec: StandInSpec, max_chunk: int = 8192) -> jax.Array:
  """(n_images, dim) float32: the stand-in of every row, in chunks of the
  largest divisor of n_images up to max_chunk (8,000 for Shapes3D)."""
  n = math.prod(spec.factor_sizes)
  chunk = next(c for c in range(min(max_chunk, n), 0, -1) if n % c == 0)
  rows = jnp.arange(n).reshape(n // chunk, chunk)
  return jax.lax.map(lambda r: standin(r, spec), rows).reshape(n, spec.dim)


def load_file(path: str, factor_sizes: tuple[int, ...],
              chunk_rows: int = 65536) -> np.ndarray:
  """(n_images, dim) float32 rows of an npz in the authors' layout, refused
  with one line if it is missing, not an npz, lacks `repre`, has the wrong
  shape or dtype, or holds NaN / Inf."""
  field = "plateau.embeddings"
  if not os.path.isfile(path):
    raise UserError(f"{field}: no file {path}")
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise UserError(f"{field}: {path} is not a readable npz ({e})") from e
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise UserError(f"{field}: {path} is a bare array; need an npz with "
                    f"key '{KEY}'")
  with archive:
    if KEY not in archive.files:
      raise UserError(f"{field}: {path} has no key '{KEY}' (keys: "
                      f"{', '.join(archive.files) or 'none'})")
    try:
      array = archive[KEY]
    except ValueError as e:   # object arrays need pickle: refused
      raise UserError(f"{field}: {path} key '{KEY}' is not a numeric array "
                      f"({e})") from e
  n_images = math.prod(factor_sizes)
  if array.ndim != 2 or array.shape[0] != n_images:
    raise UserError(f"{field}: '{KEY}' has shape {array.shape}; need "
                    f"({n_images}, dim), one row per image in row-major "
                    f"factor order {tuple(factor_sizes)}")
  if not np.issubdtype(array.dtype, np.floating):
    raise UserError(f"{field}: '{KEY}' has dtype {array.dtype}; need floats")
  for start in range(0, n_images, chunk_rows):
    chunk = array[start:start + chunk_rows]
    if not np.isfinite(chunk).all():
      bad = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
      raise UserError(f"{field}: '{KEY}' holds NaN or Inf, first in row {bad}")
  return array.astype(np.float32, copy=False)
