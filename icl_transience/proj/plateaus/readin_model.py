"""The transformer of Fu et al.'s code, Flax Linen: frozen items read in linearly.

Tokens [x_1, y_1, ..., x_L, y_L]: x_i an item vector (a frozen embedding,
dim D), y_i the one-hot of its label id in the same D dims, both through ONE
linear read-in D -> d; learned absolute positions; `depth` pre-LN GPT-2
blocks (transformer.Block: causal attention + a GELU MLP of 4d); a final
LayerNorm and one linear read-out at every ITEM position (y_i is predicted
from the prefix ending at x_i), n_classes wide (768 in the authors' code;
the task reads the labels and their extra losses off slices of it).
Differences from the authors' PyTorch GPT-2 (HF GPT2Model): the shared
blocks have no attention biases and lecun-normal initialisers (GPT-2:
N(0, 0.02), the residual projections scaled by 1 / sqrt(2 n_layer)); the
positions start uniform in +-1/sqrt(80) (GPT-2: N(0, 0.02)); read-in and
read-out are lecun-normal (PyTorch's nn.Linear: uniform +-1/sqrt(fan_in)).

attention: "on"; "zero" (every attention output zeroed); "pass" (every
attention sub-layer returns its LayerNorm'd input, the authors' weights
probe). stop_after=k returns after block index k (the probe's stream) and
skips the blocks above it.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn

from icl_transience.nn import transformer
from icl_transience.proj.plateaus import image_sequence

ATTENTION = ("on", "zero", "pass")


class ReadInTransformer(nn.Module):
  """items (B, L, D), labels (B, L or L-1) int32 -> the outputs above."""
  n_classes: int = 768
  depth: int = 12
  d_model: int = 128
  n_heads: int = 4
  mlp_ratio: int = 4
  max_len: int = 80

  @nn.compact
  def __call__(self, items, labels, *, attention: str = "on",
               stop_after: int | None = None) -> dict:
    """{"logits": (B, L, n_classes), "streams"} (streams: after the read-in
    + positions, then after each block); with stop_after only "streams", up
    to block index stop_after."""
    if attention not in ATTENTION:
      raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    read_in = nn.Dense(self.d_model, kernel_init=transformer.lecun_normal,
                       name="read_in")
    label_hots = jax.nn.one_hot(labels, items.shape[-1], dtype=items.dtype)
    x = image_sequence.interleave(read_in(items), read_in(label_hots))
    table = self.param("positions", transformer.learned_position_init,
                       (self.max_len, self.d_model))
    x = x + table[:x.shape[1]]
    off = transformer.Patch(head_mask=jnp.zeros((self.n_heads,), x.dtype))
    streams = [x]
    last = self.depth - 1 if stop_after is None else stop_after
    for i in range(last + 1):
      x = transformer.Block(self.n_heads, self.mlp_ratio, name=f"block_{i}")(
          x, off if attention == "zero" else None,
          passthrough=attention == "pass")
      streams.append(x)
    if stop_after is not None:
      return {"streams": streams}
    at_items = nn.LayerNorm(epsilon=1e-5, name="ln_final")(
        image_sequence.image_tokens(x))
    logits = nn.Dense(self.n_classes, kernel_init=transformer.lecun_normal,
                      name="read_out")(at_items)
    return {"logits": logits, "streams": streams}
