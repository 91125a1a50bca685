"""Fu et al.'s sequence construction, as their code builds it (pure JAX).

  image split   a random 80/20 split of the images (row indices): training
                sequences draw training images, test sequences held-out ones
  sequence      L distinct images of one split (no repeats in a sequence),
                a hidden factor uniform over `hidden_factors`, and a map id
  map pool      m value -> label maps drawn once; map k holds one permutation
                of {0..n_f-1} per factor f, so only a factor's n_f label ids
                occur; a sequence's label at image i is maps[k, e, v_e(i)].
                m = 1 is D_fix (one map: storable in weights); Fu et al.'s
                D_rnd uses m = 20,000; test sequences reuse the pool
  fixed set     a fixed number of training sequences, read in a fresh
                random order every epoch (`epoch_orders`, `batch_index`)

A sequence is stored as image rows, hidden factor and map id; labels are
made where it is read (`labels`), so a D_fix share of a batch (map 0)
relabels stored sequences without storing them twice.
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from icl_transience.proj.plateaus import embeddings
from icl_transience.errors import UserError


@dataclasses.dataclass(frozen=True)
class PoolSpec:
  """How sequences are drawn (hashable: a static jit argument)."""
  factor_sizes: tuple[int, ...] = (10, 10, 10, 8, 4, 15)
  hidden_factors: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
  context_len: int = 40
  n_maps: int = 20_000
  train_fraction: float = 0.8

  @property
  def n_images(self) -> int:
    return int(np.prod(self.factor_sizes))

  @property
  def max_values(self) -> int:
    return max(self.factor_sizes)

  def n_train_images(self) -> int:
    return int(round(self.train_fraction * self.n_images))

  def validate(self) -> None:
    if not 0 < self.train_fraction < 1:
      raise UserError(f"plateau.train_fraction: must be in (0, 1), got "
                      f"{self.train_fraction}")
    smaller = min(self.n_train_images(), self.n_images - self.n_train_images())
    # pairs of positions <= the split: a draw is repeat-free with odds >= 0.6
    longest = int((1 + (1 + 8 * smaller) ** 0.5) / 2)
    if not 1 <= self.context_len <= longest:
      raise UserError(f"plateau.context_len: must be in [1, {longest}] for "
                      f"{smaller} images in the smaller split (sequences of "
                      f"distinct images), got {self.context_len}")
    if self.n_maps < 1:
      raise UserError(f"plateau.n_maps: must be >= 1, got {self.n_maps}")
    if not self.hidden_factors or any(
        not 0 <= f < len(self.factor_sizes) for f in self.hidden_factors):
      raise UserError(f"plateau.hidden_factors: need indices in [0, "
                      f"{len(self.factor_sizes)}), got {self.hidden_factors}")


class Sequences(NamedTuple):
  rows: jax.Array      # (n, L) int32 image rows, distinct within a sequence
  hidden: jax.Array    # (n,) int32 the labelled factor
  map_id: jax.Array    # (n,) int32 index into the map pool


def image_split(key, spec: PoolSpec):
  """(train rows, test rows): a random split of all image rows."""
  order = jax.random.permutation(key, spec.n_images).astype(jnp.int32)
  n_train = spec.n_train_images()
  return order[:n_train], order[n_train:]


def map_pool(key, spec: PoolSpec) -> jax.Array:
  """(m, n_factors, max_values) int32: per map and factor, a permutation of
  the factor's n_f ids in its first n_f entries (the rest are never read)."""
  keys = jax.random.split(key, len(spec.factor_sizes))
  per_factor = []
  for k, n in zip(keys, spec.factor_sizes):
    perms = jax.vmap(lambda kk, n=n: jax.random.permutation(kk, n))(
        jax.random.split(k, spec.n_maps))
    per_factor.append(jnp.pad(perms, ((0, 0), (0, spec.max_values - n))))
  return jnp.stack(per_factor, axis=1).astype(jnp.int32)


def _distinct_draws(key, pool_size: int, n: int, length: int) -> jax.Array:
  """(n, length) indices into a pool, distinct within each row: rows with
  a repeat are redrawn whole until none has one (so every row is uniform
  over repeat-free tuples)."""
  def has_repeat(draws):
    ordered = jnp.sort(draws, axis=1)
    return (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)

  def redraw(carry):
    k, draws = carry
    k, sub = jax.random.split(k)
    fresh = jax.random.randint(sub, draws.shape, 0, pool_size)
    return k, jnp.where(has_repeat(draws)[:, None], fresh, draws)

  k0, k1 = jax.random.split(key)
  first = jax.random.randint(k0, (n, length), 0, pool_size)
  _, draws = jax.lax.while_loop(lambda c: has_repeat(c[1]).any(), redraw,
                                (k1, first))
  return draws


def sample_sequences(key, image_rows: jax.Array, n: int,
                     spec: PoolSpec) -> Sequences:
  """n sequences of distinct images from `image_rows`, a uniform hidden
  factor and a uniform map of the pool each."""
  k_rows, k_hidden, k_map = jax.random.split(key, 3)
  draws = _distinct_draws(k_rows, image_rows.shape[0], n, spec.context_len)
  choice = jax.random.randint(k_hidden, (n,), 0, len(spec.hidden_factors))
  hidden = jnp.asarray(spec.hidden_factors, jnp.int32)[choice]
  map_id = jax.random.randint(k_map, (n,), 0, spec.n_maps)
  return Sequences(image_rows[draws], hidden, map_id.astype(jnp.int32))


def with_fixed_map(key, seqs: Sequences, fixed_fraction) -> Sequences:
  """Exactly round(fixed_fraction * n) sequences, at random, read under map
  0 (D_fix; our weights warm-up and mixed training)."""
  n = seqs.hidden.shape[0]
  n_fixed = jnp.round(jnp.asarray(fixed_fraction, jnp.float32) * n)
  fixed = jax.random.permutation(key, jnp.arange(n) < n_fixed)
  return seqs._replace(map_id=jnp.where(fixed, 0, seqs.map_id))


def labels(seqs: Sequences, maps: jax.Array, spec: PoolSpec) -> jax.Array:
  """(n, L) int32 label of every image: maps[map_id, e, value of e]."""
  factors = embeddings.row_factors(seqs.rows, spec.factor_sizes)
  values = jnp.take_along_axis(factors, seqs.hidden[:, None, None], axis=-1)[..., 0]
  return maps[seqs.map_id[:, None], seqs.hidden[:, None], values]


def epoch_orders(key, n_epochs: int, n: int) -> jax.Array:
  """(n_epochs, n) int32: the order a fixed set of n sequences is read in
  each epoch, permutation e from fold_in(key, e)."""
  return jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))(
      jnp.arange(n_epochs)).astype(jnp.int32)


def batch_index(orders: jax.Array, step, batch_size: int) -> jax.Array:
  """(batch_size,) indices into the fixed set for optimizer step `step`: the
  set read epoch after epoch in `orders`; a batch may straddle two epochs."""
  n_epochs, n = orders.shape
  t = step * batch_size + jnp.arange(batch_size)
  return orders[jnp.minimum(t // n, n_epochs - 1), t % n]


def take(seqs: Sequences, index: jax.Array) -> Sequences:
  return jax.tree.map(lambda x: x[index], seqs)
