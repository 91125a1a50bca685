"""A procedural Shapes3D stand-in (the data of Fu et al.), pure JAX.

Shapes3D cannot be downloaded here, so images are rasterised on device with
the same six independent factors and value counts:

  floor_hue 10, wall_hue 10, object_hue 10, scale 8, shape 4, orientation 15.

Picture (32x32 by default): the lower 40% of rows is floor, the rest wall; a
centred object (square, circle, triangle, pill) of side 4 + 2*scale pixels at
32 px, rotated by an angle in linspace(-30, 30, 15) degrees. Hues are
k / n_hues as in Shapes3D. Floor, wall and object use different saturation /
value pairs, so every surface stays visible whatever the hues. As in
Shapes3D, where orientation turns the camera around the room, orientation
also moves the corner between the two walls (the left wall is shaded), so it
is readable for every shape, the circle included.

Rendering is deterministic in the factors; the PRNG key only draws factors and
the additive pixel noise (the difficulty knob).
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

from icl_transience.errors import UserError

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape",
                "orientation")
FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
FLOOR_HUE, WALL_HUE, OBJECT_HUE, SCALE, SHAPE, ORIENTATION = range(6)
SHAPE_NAMES = ("square", "circle", "triangle", "pill")


def factor_names(n: int, words: bool = False) -> tuple[str, ...]:
  """Metric names of n factors: the Shapes3D names when there are six,
  attribute<i> for word items, else factor<i>."""
  if words:
    return tuple(f"attribute{i}" for i in range(n))
  return FACTOR_NAMES if n == len(FACTOR_NAMES) else tuple(f"factor{i}" for i in range(n))


REFERENCE_SIZE = 32  # object sizes are given in pixels at this image size


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
  """How images look (hashable: a static jit argument)."""
  image_size: int = 32                 # >= 32: at 16 px the scale-0 shapes coincide
  factor_sizes: tuple[int, ...] = FACTOR_SIZES
  floor_fraction: float = 0.4          # lower rows showing the floor
  object_size_min_px: float = 4.0      # side at scale 0, at 32 px
  object_size_step_px: float = 2.0     # added per scale step, at 32 px
  max_orientation_deg: float = 30.0    # angles span [-max, max]
  corner_travel: float = 0.6           # fraction of the width the wall corner sweeps
  wall_shade: float = 0.8              # value multiplier of the left wall
  floor_sv: tuple[float, float] = (0.8, 0.6)   # HSV saturation, value
  wall_sv: tuple[float, float] = (0.5, 0.9)
  object_sv: tuple[float, float] = (1.0, 1.0)
  supersample: int = 2                 # k x k samples per pixel (anti-aliasing)
  noise_std: float = 0.0               # additive Gaussian pixel noise, then clip

  def validate(self) -> None:
    if len(self.factor_sizes) != len(FACTOR_NAMES):
      raise UserError(f"shapes.factor_sizes: need {len(FACTOR_NAMES)} entries "
                      f"({', '.join(FACTOR_NAMES)}), got {self.factor_sizes}")
    if min(self.factor_sizes) < 1:
      raise UserError(f"shapes.factor_sizes: every size must be >= 1, got "
                      f"{self.factor_sizes}")
    if self.factor_sizes[SHAPE] != len(SHAPE_NAMES):
      raise UserError(f"shapes.factor_sizes: the renderer draws "
                      f"{len(SHAPE_NAMES)} shapes, got {self.factor_sizes[SHAPE]}")
    if self.image_size < 8:
      raise UserError(f"shapes.image_size: must be >= 8, got {self.image_size}")
    if self.supersample < 1:
      raise UserError(f"shapes.supersample: must be >= 1, got {self.supersample}")
    if not 0.0 < self.floor_fraction < 1.0:
      raise UserError(f"shapes.floor_fraction: must be in (0, 1), got "
                      f"{self.floor_fraction}")
    if self.noise_std < 0:
      raise UserError(f"shapes.noise_std: must be >= 0, got {self.noise_std}")


def hsv_to_rgb(hue, saturation, value) -> jax.Array:
  """HSV in [0, 1] to RGB in [0, 1] (scalars or broadcastable arrays)."""
  hue, saturation, value = jnp.broadcast_arrays(
      jnp.asarray(hue, jnp.float32), jnp.asarray(saturation, jnp.float32),
      jnp.asarray(value, jnp.float32))
  sector = jnp.floor(hue * 6.0)
  f = hue * 6.0 - sector
  p = value * (1 - saturation)
  q = value * (1 - saturation * f)
  t = value * (1 - saturation * (1 - f))
  table = jnp.stack([
      jnp.stack([value, t, p], -1), jnp.stack([q, value, p], -1),
      jnp.stack([p, value, t], -1), jnp.stack([p, q, value], -1),
      jnp.stack([t, p, value], -1), jnp.stack([value, p, q], -1)])
  index = sector.astype(jnp.int32) % 6
  return jnp.take_along_axis(table, index[None, ..., None], axis=0)[0]


def _fraction(index, size: int) -> jax.Array:
  """Value index -> position in [0, 1] (0.5 for a one-value factor)."""
  if size == 1:
    return jnp.float32(0.5)
  return index.astype(jnp.float32) / (size - 1)


def _shape_masks(u, v, half) -> jax.Array:
  """(4, ...) inside-masks of the four shapes in object coordinates."""
  square = (jnp.abs(u) <= half) & (jnp.abs(v) <= half)
  circle = u**2 + v**2 <= half**2
  triangle = (v <= half) & (jnp.abs(u) <= (v + half) / 2)   # apex up
  nearest_x = jnp.clip(u, -half / 2, half / 2)                # stadium 2h x h
  pill = (u - nearest_x)**2 + v**2 <= (half / 2)**2
  return jnp.stack([square, circle, triangle, pill])


def render(factors: jax.Array, spec: ShapesSpec) -> jax.Array:
  """One noise-free image (size, size, 3) in [0, 1] from its 6 factor values."""
  sizes, size, k = spec.factor_sizes, spec.image_size, spec.supersample
  floor_hue, wall_hue, object_hue, scale, shape, orientation = (
      factors[i] for i in range(len(FACTOR_NAMES)))
  coords = (jnp.arange(size * k, dtype=jnp.float32) + 0.5) / k
  y, x = jnp.meshgrid(coords, coords, indexing="ij")

  turn = _fraction(orientation, sizes[ORIENTATION])
  corner_x = size * (0.5 + spec.corner_travel * (turn - 0.5))
  floor = hsv_to_rgb(floor_hue / sizes[FLOOR_HUE], *spec.floor_sv)
  wall = hsv_to_rgb(wall_hue / sizes[WALL_HUE], *spec.wall_sv)
  is_floor = y >= (1 - spec.floor_fraction) * size
  shade = jnp.where(x < corner_x, spec.wall_shade, 1.0)[..., None]
  image = jnp.where(is_floor[..., None], floor, wall * shade)

  angle = math.radians(spec.max_orientation_deg) * (2 * turn - 1)
  dx, dy = x - size / 2, y - size / 2
  u = jnp.cos(angle) * dx + jnp.sin(angle) * dy   # rotate points by -angle
  v = -jnp.sin(angle) * dx + jnp.cos(angle) * dy
  side = (spec.object_size_min_px + spec.object_size_step_px * scale) * (
      size / REFERENCE_SIZE)
  inside = _shape_masks(u, v, side / 2)[shape]
  colour = hsv_to_rgb(object_hue / sizes[OBJECT_HUE], *spec.object_sv)
  image = jnp.where(inside[..., None], colour, image)
  return image.reshape(size, k, size, k, 3).mean(axis=(1, 3))


def render_images(key, factors: jax.Array, spec: ShapesSpec) -> jax.Array:
  """Images (..., size, size, 3) of factor rows (..., 6), noise from `key`."""
  flat = factors.reshape(-1, factors.shape[-1]).astype(jnp.int32)
  images = jax.vmap(render, in_axes=(0, None))(flat, spec)
  images = images.reshape(factors.shape[:-1] + images.shape[1:])
  if spec.noise_std > 0:
    noise = jax.random.normal(key, images.shape, images.dtype)
    images = jnp.clip(images + spec.noise_std * noise, 0.0, 1.0)
  return images


def sample_factors(key, factor_sizes: tuple[int, ...], shape=()) -> jax.Array:
  """Independent uniform factor values (*shape, n_factors) int32."""
  keys = jax.random.split(key, len(factor_sizes))
  return jnp.stack([jax.random.randint(k, shape, 0, n)
                    for k, n in zip(keys, factor_sizes)], axis=-1)


def sample_images(key, spec: ShapesSpec, n: int):
  """n random images: (factors (n, 6) int32, images (n, size, size, 3))."""
  k_factors, k_noise = jax.random.split(key)
  factors = sample_factors(k_factors, spec.factor_sizes, (n,))
  return factors, render_images(k_noise, factors, spec)
