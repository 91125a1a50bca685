"""The minimal mathematical model of strategy coopetition (Singh et al. 2025).

Four vectors a, b, c in R^20 and d in R^160 with targets a*, b*, c*, d*:
  L1 = 1/2 mean[(a*.b*.c* - a.b.c)^2]     mechanism 1 (ICL)
  L2 = 1/2 mean[(d*.b*.c* - d.b.c)^2]     mechanism 2 (CIWL)
  K  = 1/2 mean[(a.d)^2]                  competition
  L  = (L1 + mu1)(L2 + mu2) + alpha K
(u.v.w: outer-product tensor). Full-batch gradient descent, learning rate 1,
until L < threshold or max_steps. Seeds are vmapped: all solve in one call.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  dims: tuple[int, int, int, int] = (20, 20, 20, 160)  # a, b, c, d
  mu1: float = 0.1
  mu2: float = 0.0
  alpha: float = 0.1
  lr: float = 1.0
  max_steps: int = 16_000
  threshold: float = 1e-6  # Singh et al. 2025 use 1e-3 for mu1 = 0

  @classmethod
  def for_mu1(cls, mu1: float, **kwargs):
    """The stopping rule of Singh et al. 2025: L < 1e-6, or 1e-3 for
    persistent ICL (mu1 = 0)."""
    return cls(mu1=mu1, threshold=1e-6 if mu1 > 0 else 1e-3, **kwargs)


def outer3(u, v, w):
  return u[:, None, None] * v[None, :, None] * w[None, None, :]


def losses(params, targets, cfg: ToyConfig):
  """(L, L1, L2, K) at params."""
  a, b, c, d = params
  ta, tb, tc, td = targets
  l1 = 0.5 * jnp.mean((outer3(ta, tb, tc) - outer3(a, b, c)) ** 2)
  l2 = 0.5 * jnp.mean((outer3(td, tb, tc) - outer3(d, b, c)) ** 2)
  k = 0.5 * jnp.mean((a[:, None] * d[None, :]) ** 2)
  total = (l1 + cfg.mu1) * (l2 + cfg.mu2) + cfg.alpha * k
  return total, l1, l2, k


def init(seed, cfg: ToyConfig):
  """Targets and initial values, drawn in the authors' order.

  For a, b, c, d in turn: key, k = split(key); k1, k2 = split(k); target from
  k1, initial value from k2. Call under non-partitionable threefry to match
  the published draws (see `solve`).
  """
  key = jax.random.PRNGKey(seed)
  params, targets = [], []
  for dim in cfg.dims:
    key, k = jax.random.split(key)
    k1, k2 = jax.random.split(k)
    targets.append(jax.random.normal(k1, (dim,)))
    params.append(jax.random.normal(k2, (dim,)))
  return tuple(params), tuple(targets)


def _solve_one(seed, cfg: ToyConfig):
  params, targets = init(seed, cfg)
  def total_and_parts(p):
    values = losses(p, targets, cfg)
    return values[0], jnp.stack(values)

  value_and_grad = jax.value_and_grad(total_and_parts, has_aux=True)

  def body(carry, _):
    params, stop, step = carry
    (_, values), grads = value_and_grad(params)
    stop = jnp.where((stop < 0) & (values[0] < cfg.threshold), step, stop)
    moved = tuple(p - cfg.lr * g for p, g in zip(params, grads))
    params = jax.tree.map(lambda new, old: jnp.where(stop < 0, new, old),
                          moved, params)
    return (params, stop, step + 1), values

  carry = (params, jnp.int32(-1), jnp.int32(0))
  (_, stop, _), history = jax.lax.scan(body, carry, None, length=cfg.max_steps + 1)
  return stop, history


def solve(seeds, cfg: ToyConfig = ToyConfig()):
  """Solves every seed in one vmapped call.

  Returns (stop_steps, history): stop_steps[i] is the first step with
  L < threshold (-1 if none within max_steps); history[i, t] = (L, L1, L2, K)
  at step t (frozen after the stop). The random draws use JAX's
  non-partitionable threefry, set for this computation only.
  """
  with jax.threefry_partitionable(False):
    fn = jax.jit(jax.vmap(lambda s: _solve_one(s, cfg)))
    stop, history = fn(jnp.asarray(seeds, jnp.uint32))
  return np.asarray(stop), np.asarray(history)
