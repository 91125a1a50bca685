"""The Chan et al. transformer of the main transience runs (Chan et al. 2022).

Tokens: [e(x1), l(y1), ..., e(xK), l(yK), e(xq)] (2K + 1 = 17 for K = 8).
e = the jointly trained ResNet embedder (nn/resnet.py, Chan et al. 2022; its
last group has d_model channels, as in Chan's code); l = a learned label table
(n_outputs x d_model, truncated normal std 0.02); the query's label is never
embedded. Chan's fixed sinusoids (timescale 30, sin half then cos half) are
added; dropout is 0 everywhere, so there is none.

12 pre-LayerNorm blocks, d_model 64, 8 heads, causal: x += Attn(LN(x));
x += MLP(LN(x)). Unlike transformer.Block (Singh et al. 2025), the q/k/v/output
projections have biases, and the MLP (ratio 4, tanh GELU) is always on, hence
`ChanBlock` below; it keeps transformer.Block's parameter names (attn,
mlp_in, mlp_out, ...) so path-based selective weight decay finds them.
Final LayerNorm -> linear with bias to n_outputs (12,880) logits. Only the
query position is trained and read; `all_positions=True` returns the logits
of every token (the same numbers at the query; exemplar tokens are [:, 0::2]).
Linear weights: truncated normal, variance 1/fan_in; biases 0.

Parameters at the sizes of Chan et al. 2022: 599,936 in the blocks and final
LN, 22,176 in the ResNet (+1,280 BN statistics), 64 C in the label table, 65 C
in the output layer: 2,283,632 for C = 12,880.

BatchNorm makes the model stateful: `train=True` normalises every image with
the statistics of all B x (K+1) images of the call and returns updated
running averages, so in training a sequence's output depends on the rest of
the batch (also on later images of the same sequence); `train=False` uses the
running averages, and then every position depends only on earlier tokens.
`init_variables` / `apply_model` hold the flax collection plumbing.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from icl_transience.errors import UserError
from icl_transience.nn import resnet
from icl_transience.nn.transformer import label_init, lecun_normal


def chan_sinusoids(length: int, dim: int, timescale: float) -> jax.Array:
  """Chan's positions (Chan et al. 2022): angle p / timescale^(2i/dim), i < dim/2;
  sin of all angles in the first dim/2 dims, cos in the last dim/2 (not
  interleaved, unlike transformer.sinusoids)."""
  angle = np.arange(length)[:, None] / timescale ** (
      np.arange(0, dim, 2)[None, :] / dim)
  return jnp.asarray(np.concatenate([np.sin(angle), np.cos(angle)], -1),
                     jnp.float32)


class BiasedAttention(nn.Module):
  """Causal multi-head self-attention with biased q/k/v/output projections."""
  n_heads: int

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    head_dim = d // self.n_heads
    qkv = nn.Dense(3 * d, kernel_init=lecun_normal, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, self.n_heads, head_dim), 2, 0)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    causal = jnp.tril(jnp.ones((t, t), bool))
    pattern = jax.nn.softmax(jnp.where(causal, scores, -1e10), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", pattern, v).reshape(b, t, d)
    return nn.Dense(d, kernel_init=lecun_normal, name="out")(out)


class ChanBlock(nn.Module):
  """x += Attn(LN(x)); x += MLP(LN(x)) with a tanh-GELU MLP of width ratio*d."""
  n_heads: int
  mlp_ratio: int

  @nn.compact
  def __call__(self, x):
    x = x + BiasedAttention(self.n_heads, name="attn")(
        nn.LayerNorm(epsilon=1e-5, name="ln_attn")(x))
    h = nn.LayerNorm(epsilon=1e-5, name="ln_mlp")(x)
    h = nn.Dense(self.mlp_ratio * x.shape[-1], kernel_init=lecun_normal,
                 name="mlp_in")(h)
    h = nn.Dense(x.shape[-1], kernel_init=lecun_normal,
                 name="mlp_out")(nn.gelu(h, approximate=True))
    return x + h


class ChanTransformer(nn.Module):
  """images (B, K+1, H, W, C), context labels (B, K) -> logits (Chan et al. 2022).

  Returns (B, n_outputs) at the query, or (B, 2K+1, n_outputs) with
  all_positions. Images are Omniglot's (..., 105, 105, 1) float32; the
  embedder pools globally, so any size works.
  """
  n_outputs: int = 12_880
  depth: int = 12
  d_model: int = 64
  n_heads: int = 8
  mlp_ratio: int = 4
  pos_timescale: float = 30.0
  resnet_channels: Sequence[int] = (16, 32, 32)  # + a last group of d_model
  resnet_blocks: Sequence[int] = (2, 2, 2, 2)
  resnet_strides: Sequence[int] = (1, 2, 2, 2)
  bn_momentum: float = 0.9         # BatchNorm decay (Chan et al. 2022)
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None  # only under shard_map / pmap (resnet.py)

  def __post_init__(self):
    _validate(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array, train: bool,
               all_positions: bool = False) -> jax.Array:
    x = self._embed(images, labels, train)
    for i in range(self.depth):
      x = ChanBlock(self.n_heads, self.mlp_ratio, name=f"block_{i}")(x)
    x = nn.LayerNorm(epsilon=1e-5, name="ln_final")(
        x if all_positions else x[:, -1])
    return nn.Dense(self.n_outputs, kernel_init=lecun_normal,
                    name="unembed")(x)

  @nn.nowrap
  def _embed(self, images, labels, train):
    b, n_items = images.shape[:2]
    exemplars = resnet.ResNetEmbedder(
        channels=tuple(self.resnet_channels) + (self.d_model,),
        blocks_per_group=tuple(self.resnet_blocks),
        strides=tuple(self.resnet_strides), bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon, bn_axis_name=self.bn_axis_name,
        name="embedder")(images, train)
    label_tokens = nn.Embed(self.n_outputs, self.d_model,
                            embedding_init=label_init,
                            name="label_embed")(labels)
    pairs = jnp.stack([exemplars[:, :-1], label_tokens], axis=2)
    x = jnp.concatenate(
        [pairs.reshape(b, 2 * (n_items - 1), self.d_model), exemplars[:, -1:]],
        axis=1)
    return x + chan_sinusoids(x.shape[1], self.d_model, self.pos_timescale)


def _validate(model: ChanTransformer):
  if model.d_model % 2 or model.d_model % model.n_heads:
    raise UserError(f"model.d_model: {model.d_model} must be even and "
                    f"divisible by n_heads={model.n_heads}")
  if model.depth < 0 or model.mlp_ratio < 1:
    raise UserError(f"model.depth, model.mlp_ratio: need depth >= 0 and "
                    f"mlp_ratio >= 1, got {model.depth}, {model.mlp_ratio}")
  if len(model.resnet_channels) + 1 != len(model.resnet_blocks):
    raise UserError(f"model.resnet_channels: give the widths of all block "
                    f"groups but the last (which has d_model channels): "
                    f"{len(model.resnet_blocks) - 1} entries, got "
                    f"{tuple(model.resnet_channels)}")


def init_variables(model: ChanTransformer, key: jax.Array, images: jax.Array,
                   labels: jax.Array) -> tuple[dict, dict]:
  """(params, batch_stats) of a fresh model (running mean 0, variance 1)."""
  variables = model.init(key, images, labels, train=False)
  return variables["params"], variables["batch_stats"]


def apply_model(model: ChanTransformer, params, batch_stats, images, labels,
                train: bool, all_positions: bool = False):
  """(logits, batch_stats). train: batch statistics, running averages
  updated (decay 0.9); else running averages, batch_stats returned as is."""
  variables = {"params": params, "batch_stats": batch_stats}
  if not train:
    return model.apply(variables, images, labels, train=False,
                       all_positions=all_positions), batch_stats
  logits, updates = model.apply(variables, images, labels, train=True,
                                all_positions=all_positions,
                                mutable=["batch_stats"])
  return logits, updates["batch_stats"]
