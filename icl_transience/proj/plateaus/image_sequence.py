"""The image-sequence transformer of Fu et al., Flax Linen.

Tokens [x_1, y_1, ..., x_L, y_L]: x_i = the embedding of an image (a conv
encoder on pixels, a linear map of factor one-hots for the perfect-weights
control, or a table row for WordSelection word ids), y_i = a learned label
embedding; learned absolute positions; `depth` pre-LN GPT-2-style blocks
(transformer.Block: causal attention + a GELU MLP of mlp_ratio * d); a final
LayerNorm; label logits read at every IMAGE position (y_i is predicted from
the prefix ending at x_i).

For the probes of Fu et al. every call also returns the residual stream after
the embedding (layer 0) and after each block (layer k), and:
  attention=False  zeroes every attention output (weights-probe variant a:
                   each token then depends only on itself and its position);
  images alone     inputs (N, 1, ...) with labels (N, 0) give the one-token
                   sequence [x] (variant b: the image at position 0 attends
                   only to itself);
  factor_logits    a linear head per factor (one Dense, split) on the image
                   tokens of the stream after layer `heads_layer`: the extra
                   weights loss of Fu et al.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from icl_transience.nn import transformer

INPUTS = ("pixels", "onehot", "words")
ENCODER_READOUTS = ("flatten", "mean")


class PatchConv(nn.Module):
  """A 3x3 convolution, zero padding 1 on every side, as one matmul over
  the 9 shifted views (kernel (3, 3, in, out), bias).

  Written with slices and a matmul because XLA:CPU runs convolution
  gradients inside the trainer's lax.scan ~20x slower than this form.
  """
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    h, w, c = x.shape[-3:]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
    s = self.stride
    views = [padded[..., dy:dy + h:s, dx:dx + w:s, :]
             for dy in range(3) for dx in range(3)]
    return jnp.concatenate(views, -1) @ kernel.reshape(9 * c, -1) + bias


class ImageEncoder(nn.Module):
  """Conv layers (3x3, stride 1 then 2, GELU) and a linear map to d_model."""
  d_model: int
  channels: tuple[int, ...] = (32, 64, 128, 128)
  readout: str = "flatten"   # flatten the last feature map, or average it

  @nn.compact
  def __call__(self, images):
    x = images
    for i, width in enumerate(self.channels):
      x = nn.gelu(PatchConv(width, 1 if i == 0 else 2, name=f"conv_{i}")(x),
                  approximate=True)
    if self.readout == "mean":
      x = x.mean(axis=(-3, -2))
    else:
      x = x.reshape(x.shape[:-3] + (-1,))
    return nn.Dense(self.d_model, kernel_init=transformer.lecun_normal,
                    name="to_model")(x)


class ImageSequenceModel(nn.Module):
  """inputs (B, L, ...), labels (B, L or L-1) -> label logits (B, L, n_labels)."""
  input_kind: str = "pixels"            # pixels | onehot | words
  n_labels: int = 15
  factor_sizes: tuple[int, ...] = (10, 10, 10, 8, 4, 15)
  n_words: int = 0                      # words: the id table's size
  depth: int = 8
  d_model: int = 256
  n_heads: int = 8
  mlp_ratio: int = 4
  max_len: int = 96                     # tokens: 2 L
  encoder_channels: tuple[int, ...] = (32, 64, 128, 128)
  encoder_readout: str = "flatten"
  heads_layer: int = 0                  # stream the factor heads read

  @nn.compact
  def __call__(self, inputs, labels, *, attention: bool = True) -> dict:
    """{"logits": (B, L, n_labels), "streams": depth + 1 arrays (B, T, d),
    "factor_logits": one (B, L, n_f) array per factor}."""
    images = self._embed_images(inputs)
    d = images.shape[-1]
    label_tokens = nn.Embed(self.n_labels, d, embedding_init=transformer.label_init,
                            name="label_embed")(labels)
    x = interleave(images, label_tokens)
    table = self.param("positions", transformer.learned_position_init,
                       (self.max_len, d))
    x = x + table[:x.shape[1]]
    off = transformer.Patch(head_mask=jnp.zeros((self.n_heads,), x.dtype))
    streams = [x]
    for i in range(self.depth):
      x = transformer.Block(self.n_heads, self.mlp_ratio, name=f"block_{i}")(
          x, None if attention else off)
      streams.append(x)
    at_images = nn.LayerNorm(epsilon=1e-5, name="ln_final")(image_tokens(x))
    logits = nn.Dense(self.n_labels, kernel_init=transformer.lecun_normal,
                      name="unembed")(at_images)
    heads = nn.Dense(sum(self.factor_sizes), kernel_init=transformer.lecun_normal,
                     name="factor_heads")(image_tokens(streams[self.heads_layer]))
    factor_logits = jnp.split(heads, np.cumsum(self.factor_sizes)[:-1], axis=-1)
    return {"logits": logits, "streams": streams, "factor_logits": factor_logits}

  @nn.nowrap
  def _embed_images(self, inputs):
    if self.input_kind == "words":
      return nn.Embed(self.n_words, self.d_model, embedding_init=transformer.label_init,
                      name="word_embed")(inputs)
    if self.input_kind == "onehot":
      return nn.Dense(self.d_model, kernel_init=transformer.lecun_normal,
                      name="input_proj")(inputs)
    b, n_images = inputs.shape[:2]
    flat = inputs.reshape((b * n_images,) + inputs.shape[2:])
    encoded = ImageEncoder(self.d_model, self.encoder_channels,
                           self.encoder_readout, name="encoder")(flat)
    return encoded.reshape(b, n_images, self.d_model)


def interleave(images: jax.Array, label_tokens: jax.Array) -> jax.Array:
  """[x_1, y_1, ..., x_L, (y_L)]: L images and L or L-1 labels -> tokens."""
  b, n_images, d = images.shape
  n_labels = label_tokens.shape[1]
  if n_labels not in (n_images, n_images - 1):
    raise ValueError(f"{n_images} images need {n_images} or {n_images - 1} "
                     f"labels, got {n_labels}")
  if n_labels < n_images:
    label_tokens = jnp.concatenate(
        [label_tokens, jnp.zeros((b, 1, d), label_tokens.dtype)], axis=1)
  pairs = jnp.stack([images, label_tokens], axis=2).reshape(b, 2 * n_images, d)
  return pairs[:, :n_images + n_labels]


def image_tokens(stream: jax.Array) -> jax.Array:
  """(B, T, d) -> (B, L, d): the image positions 0, 2, 4, ... of a stream."""
  return stream[:, 0::2]
