"""Transformer layers shared by the projects' models, in Flax Linen.

Pre-LN blocks with causal attention; learned, sinusoidal or rotary
positions; the initialisers of the icl-dynamics code. For grafting and
ablation (Singh et al. 2025, Figs. 2 and 4) an attention layer takes a Patch
(zero heads' values, reuse clean queries / keys / values / patterns, forbid
or clamp attention) and
sows q, k, v and its pattern into the "intermediates" collection.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn
import flax.struct
import ml_collections
import numpy as np

POSITIONS = ("learned", "sinusoidal", "rope")
# Selective L2 (Singh et al. 2023) on a model built of these blocks: each group
# is every parameter of the modules named, LayerNorms included; a task adds
# the group of its embedding modules (tasks.TaskSpec.l2_groups).
L2_GROUPS = {"mlp": ("mlp_in", "mlp_out", "ln_mlp"), "attention": ("attn", "ln_attn")}
lecun_normal = nn.initializers.lecun_normal()  # truncated normal, var 1/fan_in


def model_block(**fields) -> ml_collections.ConfigDict:
  """A task's `model` config block: the fields every model of these blocks
  has (depth, width, heads, MLP ratio; 0 = attention-only), with `fields`
  (the task's own, e.g. max_len, positions) added or changed."""
  return ml_collections.ConfigDict(dict(
      dict(depth=2, d_model=64, n_heads=8, mlp_ratio=0), **fields))


def l2_groups(*embedder: str) -> dict:
  """The blocks' selective-L2 groups and `embedder`, the embedding modules."""
  return dict(L2_GROUPS, embedder=tuple(embedder))


def label_init(key, shape, dtype=jnp.float32):
  return 0.02 * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


def learned_position_init(key, shape, dtype=jnp.float32):
  bound = 1.0 / np.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def sinusoids(length: int, dim: int, timescale: float) -> jax.Array:
  """Absolute sinusoids, even dims sin / odd dims cos (Singh et al. 2023)."""
  pos = np.arange(length)[:, None]
  pair = np.arange(dim) // 2
  angle = pos / timescale ** (2 * pair / dim)
  return jnp.asarray(np.where(np.arange(dim) % 2 == 0, np.sin(angle),
                              np.cos(angle)), jnp.float32)


def rotary(x: jax.Array, timescale: float) -> jax.Array:
  """Rotary embedding over (batch, length, heads, head_dim), pairs interleaved."""
  length, head_dim = x.shape[1], x.shape[-1]
  freq = timescale ** (-np.arange(0, head_dim, 2) / head_dim)
  angle = np.arange(length)[:, None] * freq[None, :]
  cos = jnp.asarray(np.cos(angle))[None, :, None, :]
  sin = jnp.asarray(np.sin(angle))[None, :, None, :]
  even, odd = x[..., 0::2], x[..., 1::2]
  rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], -1)
  return rotated.reshape(x.shape)


def head_vector(heads, n_heads: int, value_in: float, value_out: float):
  """(n_heads,) holding value_in at `heads` ('all' or a tuple), else value_out."""
  chosen = range(n_heads) if heads == "all" else heads
  return jnp.full(n_heads, value_out).at[jnp.array(list(chosen))].set(value_in)


@flax.struct.dataclass
class Patch:
  """An intervention on one attention layer (Singh et al. 2025, Fig. 2).

  head_mask (n_heads,) multiplies each head's value vectors (0 = ablated);
  clean maps any of "q", "k", "v", "pattern" to activations recorded in a
  clean pass, used instead of the recomputed ones; no_attend (n_heads, T, T),
  True where a head may not attend (its score set to -1e9 before the
  softmax); query_pattern (B, T) replaces the query row of the pattern of
  the heads where query_heads (n_heads,) is True (an attention clamp);
  pattern (T, T) replaces every row of the pattern of the heads where
  pattern_heads (n_heads,) is True (a whole-pattern clamp, e.g. previous
  token).
  """
  head_mask: jax.Array | None = None
  clean: dict = flax.struct.field(default_factory=dict)
  no_attend: jax.Array | None = None
  query_pattern: jax.Array | None = None
  query_heads: jax.Array | None = None
  pattern: jax.Array | None = None
  pattern_heads: jax.Array | None = None


class Attention(nn.Module):
  n_heads: int
  rope_timescale: float | None = None
  bias: bool = False  # biases on the qkv and output projections

  @nn.compact
  def __call__(self, x, patch: Patch | None = None):
    patch = patch or Patch()
    b, t, d = x.shape
    head_dim = d // self.n_heads
    qkv = nn.Dense(3 * d, use_bias=self.bias, kernel_init=lecun_normal,
                   name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.n_heads, head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    if self.rope_timescale is not None:
      q, k = rotary(q, self.rope_timescale), rotary(k, self.rope_timescale)
    q, k, v = (patch.clean.get(name, a) for name, a in (("q", q), ("k", k), ("v", v)))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores, -1e20)
    if patch.no_attend is not None:
      scores = jnp.where(patch.no_attend[None], -1e9, scores)
    pattern = patch.clean.get("pattern", jax.nn.softmax(scores, axis=-1))
    if patch.pattern is not None:
      pattern = jnp.where(patch.pattern_heads[None, :, None, None],
                          patch.pattern[None, None], pattern)
    if patch.query_pattern is not None:
      clamped = jnp.where(patch.query_heads[None, :, None],
                          patch.query_pattern[:, None, :], pattern[:, :, -1])
      pattern = pattern.at[:, :, -1].set(clamped)
    for name, a in (("q", q), ("k", k), ("v", v), ("pattern", pattern)):
      self.sow("intermediates", name, a)
    if patch.head_mask is not None:
      v = v * patch.head_mask[:, None]
    out = jnp.einsum("bhqk,bkhd->bqhd", pattern, v).reshape(b, t, d)
    return nn.Dense(d, use_bias=self.bias, kernel_init=lecun_normal,
                    name="out")(out)


class Block(nn.Module):
  n_heads: int
  mlp_ratio: int
  rope_timescale: float | None = None
  attention_bias: bool = False

  @nn.compact
  def __call__(self, x, patch: Patch | None = None, passthrough: bool = False):
    """passthrough: the attention sub-layer returns its LayerNorm'd input
    instead of attending (the weights probe of Fu et al.'s code)."""
    h = nn.LayerNorm(epsilon=1e-5, name="ln_attn")(x)
    attention = Attention(self.n_heads, self.rope_timescale,
                          self.attention_bias, name="attn")
    x = x + (h if passthrough else attention(h, patch))
    if self.mlp_ratio:
      h = nn.LayerNorm(epsilon=1e-5, name="ln_mlp")(x)
      h = nn.Dense(self.mlp_ratio * x.shape[-1], kernel_init=lecun_normal,
                   name="mlp_in")(h)
      h = nn.Dense(x.shape[-1], kernel_init=lecun_normal,
                   name="mlp_out")(nn.gelu(h, approximate=True))
      x = x + h
    return x


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
