"""The sequence classifier of Singh et al. 2025 (and its variants), in Flax
Linen, on the shared blocks of nn/transformer.py.

Tokens: [e(x1), l(y1), ..., e(xK), l(yK), e(xq)]; e = linear input projection,
l = learned label table. Pre-LN blocks, causal attention; logits are read at
the query (last) position only.

For grafting and ablation (Singh et al. 2025, Figs. 2 and 4) a call can run a
slice of the blocks on a given residual stream, patch attention layers, and
drop the embedding from the stream the readout sees. Every call sows the
residual streams into the "intermediates" collection. Two clamps hold in
every pass, training included (Singh et al. 2025, appendix runs):
ablated_heads zeroes those heads' values, and label_attention_blocked stops
those heads attending from each label token to its exemplar.
"""
import flax.linen as nn
import jax.numpy as jnp

from icl_transience.nn.transformer import (Block, Patch, head_vector,
                                           label_init, lecun_normal,
                                           learned_position_init, sinusoids)
from icl_transience.proj.transience import interventions


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
  attention_bias: bool = False         # biases on qkv and output projections
  ablated_heads: tuple = ()            # ((block, heads), ...)
  label_attention_blocked: tuple = ()  # ((block, heads), ...)

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
      patch = self._clamped(i, patches[i] if i < len(patches) else None,
                            x.shape[1])
      x = Block(self.n_heads, self.mlp_ratio, rope, self.attention_bias,
                name=f"block_{i}")(x, patch)
      self.sow("intermediates", "residual", x)
    if stop is not None:
      return x
    if drop_embedding:
      x = x - embedding
    query = nn.LayerNorm(epsilon=1e-5, name="ln_final")(x[:, -1])
    return nn.Dense(self.n_outputs, kernel_init=lecun_normal, name="unembed")(query)

  @nn.nowrap
  def _clamped(self, block: int, patch, length: int):
    """The block's patch with the model's own clamps added."""
    ablated = dict(self.ablated_heads).get(block)
    blocked = dict(self.label_attention_blocked).get(block)
    if ablated is None and blocked is None:
      return patch
    patch = patch or Patch()
    if ablated is not None:
      keep = head_vector(ablated, self.n_heads, 0.0, 1.0)
      patch = patch.replace(head_mask=keep if patch.head_mask is None
                            else patch.head_mask * keep)
    if blocked is not None:
      labels = jnp.arange(1, length, 2)  # label tokens; their exemplar precedes
      grid = jnp.zeros((length, length), bool).at[labels, labels - 1].set(True)
      heads = head_vector(blocked, self.n_heads, 1.0, 0.0) > 0
      patch = patch.replace(no_attend=heads[:, None, None] & grid[None])
    return patch

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


def build_model(model_cfg, n_outputs: int, clamp=None) -> SequenceClassifier:
  """The model of a config's `model` block, with its `clamp` block's
  training-time clamps (text such as '0:1,4,7', parsed by interventions)."""
  parse = lambda field: (interventions.parse_heads(clamp[field], f"clamp.{field}")
                         if clamp else ())
  return SequenceClassifier(
      ablated_heads=parse("ablate_heads"),
      label_attention_blocked=parse("block_label_attention"),
      n_outputs=n_outputs, depth=model_cfg.depth, d_model=model_cfg.d_model,
      n_heads=model_cfg.n_heads, mlp_ratio=model_cfg.mlp_ratio,
      positions=model_cfg.positions, max_len=model_cfg.max_len,
      pos_timescale=model_cfg.pos_timescale,
      attention_bias=model_cfg.attention_bias)
