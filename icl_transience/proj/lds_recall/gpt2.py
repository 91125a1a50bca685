"""The GPT-2 regressor of the interleaved-LDS task (Daniels et al. 2025).

HuggingFace GPT-2 driven by `inputs_embeds`, without its (unused) token
table: read-in Dense(token_dim -> d) plus a learned absolute position table,
pre-LN blocks (causal multi-head attention with biases, GELU-tanh MLP of width
4d, LayerNorm eps 1e-5), a final LayerNorm and a read-out Dense(d -> state_dim)
at every position. All dropouts of the original are 0, so there are none.

Initialisation follows HF GPT-2: Dense kernels and the position table
N(0, 0.02), biases 0, LayerNorms (1, 0), and the residual output projections
(attention `out`, `mlp_out`) N(0, 0.02 / sqrt(2 L)); the read-in and read-out
are PyTorch nn.Linear defaults (kernel and bias uniform +-1/sqrt(fan_in)).

Parameter layout (an edge-pruning forward pass reads these names):
  read_in, positions (max_len, d), block_{i}/{ln_attn, attn/{qkv, out},
  ln_mlp, mlp_in, mlp_out}, ln_final, read_out; `qkv` is q | k | v along its
  output axis, heads contiguous inside each.

Parameter counts (Daniels et al. 2025's table, `parameter_counts`). The "non-emb." column
(212K / 701K / 2.42M / 10.7M / 24.1M) counts every parameter -- blocks
(12 d^2 + 13 d each), final LayerNorm, read-in and read-out -- but only the
position rows the model uses (context_len = 250 of the 2048); the "HF" column
counts all 2048 position rows plus HF's unused 50257 x d token table. Both are
reproduced exactly by the tests.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Preset sizes of Daniels et al. 2025: name -> (d_model, layers, heads).
SIZES = {"tiny": (72, 3, 6), "small": (96, 6, 6), "medium": (128, 12, 8),
         "big": (192, 24, 12), "40m": (288, 24, 18)}
GPT2_VOCAB = 50_257          # HF's token table, absent here (counts only)
INIT_STD = 0.02
LN_EPS = 1e-5


def torch_linear_init(fan_in: int):
  """nn.Linear's default: uniform +-1/sqrt(fan_in) (kernel and bias alike)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _dense(features: int, std: float, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=nn.initializers.normal(std),
                  bias_init=nn.initializers.zeros, name=name)


class Attention(nn.Module):
  n_heads: int
  out_std: float

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    head_dim = d // self.n_heads
    qkv = _dense(3 * d, INIT_STD, "qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.n_heads, head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    pattern = jax.nn.softmax(scores, axis=-1)
    heads = jnp.einsum("bhqk,bkhd->bqhd", pattern, v).reshape(b, t, d)
    return _dense(d, self.out_std, "out")(heads)


class Block(nn.Module):
  n_heads: int
  out_std: float
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = x + Attention(self.n_heads, self.out_std, name="attn")(
        nn.LayerNorm(epsilon=LN_EPS, name="ln_attn")(x))
    h = nn.LayerNorm(epsilon=LN_EPS, name="ln_mlp")(x)
    h = nn.gelu(_dense(self.mlp_ratio * d, INIT_STD, "mlp_in")(h),
                approximate=True)
    return x + _dense(d, self.out_std, "mlp_out")(h)


class GPT2(nn.Module):
  """tokens (B, T, token_dim) -> predicted next states (B, T, state_dim)."""
  state_dim: int = 5
  d_model: int = 192
  depth: int = 24
  n_heads: int = 12
  mlp_ratio: int = 4
  max_len: int = 2048
  remat: bool = False  # recompute each block in the backward pass (memory)

  @nn.compact
  def __call__(self, tokens):
    length = tokens.shape[-2]
    x = nn.Dense(self.d_model, kernel_init=torch_linear_init(tokens.shape[-1]),
                 bias_init=torch_linear_init(tokens.shape[-1]),
                 name="read_in")(tokens)
    positions = self.param("positions", nn.initializers.normal(INIT_STD),
                           (self.max_len, self.d_model))
    x = x + positions[:length]
    out_std = INIT_STD / math.sqrt(2 * self.depth)
    block = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      x = block(self.n_heads, out_std, self.mlp_ratio, name=f"block_{i}")(x)
    x = nn.LayerNorm(epsilon=LN_EPS, name="ln_final")(x)
    return nn.Dense(self.state_dim, kernel_init=torch_linear_init(self.d_model),
                    bias_init=torch_linear_init(self.d_model),
                    name="read_out")(x)


def preset(size: str, state_dim: int = 5, max_len: int = 2048) -> GPT2:
  d_model, depth, n_heads = SIZES[size]
  return GPT2(state_dim, d_model, depth, n_heads, max_len=max_len)


def parameter_counts(params, used_positions: int) -> dict[str, int]:
  """{"total", "non_embedding", "hf"}: all parameters; Daniels et al.'s non-emb.
  convention (only `used_positions` position rows); HF's count (all position
  rows plus the unused GPT2_VOCAB x d token table)."""
  total = sum(int(np.prod(w.shape)) for w in jax.tree.leaves(params))
  max_len, d_model = params["positions"].shape
  return {"total": total,
          "non_embedding": total - (max_len - used_positions) * d_model,
          "hf": total + GPT2_VOCAB * d_model}
