"""The sequence classifier of Singh et al. 2025 (and its variants), in Flax
Linen, on the shared blocks of nn/transformer.py.

Tokens: [e(x1), l(y1), ..., e(xK), l(yK), e(xq)]; e = linear input projection,
l = learned label table. Pre-LN blocks, causal attention; logits are read at
the query (last) position only.

For grafting and ablation (Singh et al. 2025, Figs. 2 and 4) a call can run a
slice of the blocks on a given residual stream, patch attention layers, and
drop the embedding from the stream the readout sees. Every call sows the
residual streams into the "intermediates" collection.
"""
import flax.linen as nn
import jax.numpy as jnp

from icl_transience.nn.transformer import (Block, label_init, lecun_normal,
                                           learned_position_init, sinusoids)


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
               stop: int | None = None, patches=(), drop_embedding=False,
               zero_tokens=False):
    """Query logits; given `stop`, the residual stream after block stop-1.

    start > 0 runs blocks start.. on `stream` (the residual stream entering
    block `start`) instead of embedding the inputs. patches[i] (a Patch or
    None) acts on block i's attention. drop_embedding subtracts the token +
    position embedding from the stream the final LayerNorm reads;
    zero_tokens zeroes the token embeddings (exemplars and labels) at the
    input and keeps the positions (the authors' direct-embedding ablation).
    """
    x = self._embed(features, labels, zero_tokens) if start == 0 else stream
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
  def _embed(self, features, labels, zero_tokens=False):
    b, n_items, _ = features.shape
    exemplars = nn.Dense(self.d_model, kernel_init=lecun_normal,
                         name="input_proj")(features)
    label_tokens = nn.Embed(self.n_outputs, self.d_model,
                            embedding_init=label_init, name="label_embed")(labels)
    if zero_tokens:
      exemplars, label_tokens = 0 * exemplars, 0 * label_tokens
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
