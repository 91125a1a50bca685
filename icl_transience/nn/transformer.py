"""The sequence classifier of Singh et al. 2025 (and its variants), in Flax Linen.

Tokens: [e(x1), l(y1), ..., e(xK), l(yK), e(xq)]; e = linear input projection,
l = learned label table. Pre-LN blocks, causal attention; logits are read at
the query (last) position only.

For grafting and ablation (Singh et al. 2025, Figs. 2 and 4) a call can run a slice of the
blocks on a given residual stream, patch attention layers (zero heads' values,
reuse clean queries / keys / values / patterns), and drop the embedding from
the stream the readout sees. Every call sows q, k, v, the attention pattern
and the residual streams into the "intermediates" collection.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn
import flax.struct
import numpy as np

POSITIONS = ("learned", "sinusoidal", "rope")
lecun_normal = nn.initializers.lecun_normal()  # truncated normal, var 1/fan_in


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


@flax.struct.dataclass
class Patch:
  """An intervention on one attention layer (Singh et al. 2025, Fig. 2).

  head_mask (n_heads,) multiplies each head's value vectors (0 = ablated);
  clean maps any of "q", "k", "v", "pattern" to activations recorded in a
  clean pass, used instead of the recomputed ones.
  """
  head_mask: jax.Array | None = None
  clean: dict = flax.struct.field(default_factory=dict)


class Attention(nn.Module):
  n_heads: int
  rope_timescale: float | None = None

  @nn.compact
  def __call__(self, x, patch: Patch | None = None):
    patch = patch or Patch()
    b, t, d = x.shape
    head_dim = d // self.n_heads
    qkv = nn.Dense(3 * d, use_bias=False, kernel_init=lecun_normal, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.n_heads, head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    if self.rope_timescale is not None:
      q, k = rotary(q, self.rope_timescale), rotary(k, self.rope_timescale)
    q, k, v = (patch.clean.get(name, a) for name, a in (("q", q), ("k", k), ("v", v)))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores, -1e20)
    pattern = patch.clean.get("pattern", jax.nn.softmax(scores, axis=-1))
    for name, a in (("q", q), ("k", k), ("v", v), ("pattern", pattern)):
      self.sow("intermediates", name, a)
    if patch.head_mask is not None:
      v = v * patch.head_mask[:, None]
    out = jnp.einsum("bhqk,bkhd->bqhd", pattern, v).reshape(b, t, d)
    return nn.Dense(d, use_bias=False, kernel_init=lecun_normal, name="out")(out)


class Block(nn.Module):
  n_heads: int
  mlp_ratio: int
  rope_timescale: float | None = None

  @nn.compact
  def __call__(self, x, patch: Patch | None = None):
    x = x + Attention(self.n_heads, self.rope_timescale, name="attn")(
        nn.LayerNorm(epsilon=1e-5, name="ln_attn")(x), patch)
    if self.mlp_ratio:
      h = nn.LayerNorm(epsilon=1e-5, name="ln_mlp")(x)
      h = nn.Dense(self.mlp_ratio * x.shape[-1], kernel_init=lecun_normal,
                   name="mlp_in")(h)
      h = nn.Dense(x.shape[-1], kernel_init=lecun_normal,
                   name="mlp_out")(nn.gelu(h, approximate=True))
      x = x + h
    return x


class SequenceClassifier(nn.Module):
  """features (B, K+1, D_in), context labels (B, K) -> query logits (B, C)."""
  n_outputs: int
  depth: int = 2
  d_model: int = 64
  n_heads: int = 8
  mlp_ratio: int = 0          # 0 = attention-only
  positions: str = "learned"  # learned | sinusoidal | rope
  max_len: int = 32
  pos_timescale: float = 30.0

  @nn.compact
  def __call__(self, features, labels, *, stream=None, start: int = 0,
               stop: int | None = None, patches=(), drop_embedding=False):
    """Query logits; given `stop`, the residual stream after block stop-1.

    start > 0 runs blocks start.. on `stream` (the residual stream entering
    block `start`) instead of embedding the inputs. patches[i] (a Patch or
    None) acts on block i's attention. drop_embedding subtracts the token +
    position embedding from the stream the final LayerNorm reads.
    """
    x = self._embed(features, labels) if start == 0 else stream
    embedding = x
    self.sow("intermediates", "residual", x)
    rope = self.pos_timescale if self.positions == "rope" else None
    for i in range(start, self.depth if stop is None else stop):
      patch = patches[i] if i < len(patches) else None
      x = Block(self.n_heads, self.mlp_ratio, rope, name=f"block_{i}")(x, patch)
      self.sow("intermediates", "residual", x)
    if stop is not None:
      return x
    if drop_embedding:
      x = x - embedding
    query = nn.LayerNorm(epsilon=1e-5, name="ln_final")(x[:, -1])
    return nn.Dense(self.n_outputs, kernel_init=lecun_normal, name="unembed")(query)

  @nn.nowrap
  def _embed(self, features, labels):
    b, n_items, _ = features.shape
    exemplars = nn.Dense(self.d_model, kernel_init=lecun_normal,
                         name="input_proj")(features)
    label_tokens = nn.Embed(self.n_outputs, self.d_model,
                            embedding_init=label_init, name="label_embed")(labels)
    pairs = jnp.stack([exemplars[:, :-1], label_tokens], axis=2)
    x = jnp.concatenate(
        [pairs.reshape(b, 2 * (n_items - 1), self.d_model), exemplars[:, -1:]], 1)
    t = x.shape[1]
    if self.positions == "learned":
      table = self.param("positions", learned_position_init,
                         (self.max_len, self.d_model))
      x = x + table[:t]
    elif self.positions == "sinusoidal":
      x = x + sinusoids(t, self.d_model, self.pos_timescale)
    return x


def build_model(model_cfg, n_outputs: int) -> SequenceClassifier:
  return SequenceClassifier(
      n_outputs=n_outputs, depth=model_cfg.depth, d_model=model_cfg.d_model,
      n_heads=model_cfg.n_heads, mlp_ratio=model_cfg.mlp_ratio,
      positions=model_cfg.positions, max_len=model_cfg.max_len,
      pos_timescale=model_cfg.pos_timescale)


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
