"""The dictionary task's model: a small causal decoder LM (the OLMo stand-in
of Daniels et al.; GPT-2-style pre-LN blocks of nn/transformer.py)."""
import flax.linen as nn
import jax.numpy as jnp

from icl_transience.nn import transformer


class DecoderLM(nn.Module):
  """Token + learned position embeddings, pre-LN causal blocks
  (transformer.Block), final LayerNorm, untied unembedding."""
  vocab_size: int
  depth: int = 6
  d_model: int = 256
  n_heads: int = 8
  mlp_ratio: int = 4
  max_len: int = 64

  @nn.compact
  def __call__(self, tokens, read=None):
    """(B, L) ids -> (B, L, vocab) logits; with `read` (B, R) positions, only
    the logits at those positions, (B, R, vocab)."""
    x = nn.Embed(self.vocab_size, self.d_model,
                 embedding_init=nn.initializers.normal(0.02), name="embed")(tokens)
    table = self.param("positions", nn.initializers.normal(0.02),
                       (self.max_len, self.d_model))
    x = x + table[:tokens.shape[1]]
    for i in range(self.depth):
      x = transformer.Block(self.n_heads, self.mlp_ratio, name=f"block_{i}")(x)
    if read is not None:
      x = jnp.take_along_axis(x, read[..., None], axis=1)
    x = nn.LayerNorm(epsilon=1e-5, name="ln_final")(x)
    return nn.Dense(self.vocab_size, use_bias=False,
                    kernel_init=transformer.lecun_normal, name="unembed")(x)


def build_model(c) -> DecoderLM:
  return DecoderLM(vocab_size=c.dictionary.vocab_size, depth=c.model.depth,
                   d_model=c.model.d_model, n_heads=c.model.n_heads,
                   mlp_ratio=c.model.mlp_ratio, max_len=c.model.max_len)
