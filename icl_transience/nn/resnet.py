"""The jointly trained image embedder of Chan et al. 2022, in Flax Linen.

Chan et al.'s small ResNet-v1 with bottleneck blocks: a 7x7 stride-2 stem
(64 channels, no bias) -> BatchNorm -> ReLU -> 3x3 stride-2 max-pool, then 4
groups of 2 bottleneck blocks (output channels 16, 32, 32, 64; bottleneck
width channels / 4; strides 1, 2, 2, 2; a 1x1 projection shortcut + BN in the
first block of every group), then the mean over the spatial grid. At the
paper's sizes a 105x105x1 image gives a 64-d vector from 22,176 parameters plus
1,280 running statistics (Chan et al. 2022). The global mean makes the embedder
accept any image size (tests use small images; Chan et al.'s input is 105x105).

BatchNorm (decay 0.9, eps 1e-5) keeps its running mean and variance in the
"batch_stats" collection. With `train=True` every BN normalises with the
statistics of the whole call's batch (all leading axes of `images` folded
together, so B x 9 images for B sequences, as Chan's hk.BatchApply) and
the running averages are updated: apply with mutable=["batch_stats"]. With
`train=False` the running averages are used and nothing is mutated. The
averages start at mean 0 / variance 1 without Haiku's zero-debiasing; after
t updates the difference is of relative size 0.9^t, so it matters only for
evaluations within the first ~100 steps.

Data parallelism. Under jax.jit with the batch sharded over devices (a
NamedSharding or sharding constraint on a mesh with Auto axes, as
train/loop.make_mesh builds), the plain mean over the batch axis IS the mean
over the global batch: the SPMD partitioner inserts the cross-device
reduction, so no axis_name is needed and the statistics (and outputs) equal
those of one device holding the whole batch. Only code that maps over
devices explicitly (shard_map, pmap) must set `bn_axis_name` to the mapped
axis so that the per-device statistics are averaged (Flax pmean's them).
Under jax.vmap over population members each member normalises over its own
batch and keeps its own batch_stats.

Conventions: convolutions without bias, SAME padding, truncated-normal fan-in
init (Haiku's VarianceScaling(1.0)); BN scale 1 and offset 0 except the last
BN of every block, whose scale starts at 0 (the residual branch is silent and
the block is the shortcut at init).
"""
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from icl_transience.errors import UserError

conv_init = nn.initializers.lecun_normal()  # truncated normal, var 1/fan_in


class BottleneckBlock(nn.Module):
  """ResNet-v1 bottleneck: 1x1 -> 3x3 (strided) -> 1x1, plus the shortcut."""
  channels: int
  stride: int
  project: bool
  bottleneck_ratio: int
  norm: Callable[..., nn.BatchNorm]  # BatchNorm with mode and settings bound

  @nn.compact
  def __call__(self, x):
    width = self.channels // self.bottleneck_ratio
    shortcut = x
    if self.project:
      shortcut = nn.Conv(self.channels, (1, 1), self.stride, padding="SAME",
                         use_bias=False, kernel_init=conv_init,
                         name="shortcut_conv")(x)
      shortcut = self.norm(name="shortcut_bn")(shortcut)
    h = nn.Conv(width, (1, 1), padding="SAME", use_bias=False,
                kernel_init=conv_init, name="conv_0")(x)
    h = nn.relu(self.norm(name="bn_0")(h))
    h = nn.Conv(width, (3, 3), self.stride, padding="SAME", use_bias=False,
                kernel_init=conv_init, name="conv_1")(h)
    h = nn.relu(self.norm(name="bn_1")(h))
    h = nn.Conv(self.channels, (1, 1), padding="SAME", use_bias=False,
                kernel_init=conv_init, name="conv_2")(h)
    h = self.norm(scale_init=nn.initializers.zeros, name="bn_2")(h)
    return nn.relu(h + shortcut)


class ResNetEmbedder(nn.Module):
  """images (..., H, W, C) -> embeddings (..., channels[-1]) (Chan et al. 2022)."""
  channels: Sequence[int] = (16, 32, 32, 64)
  blocks_per_group: Sequence[int] = (2, 2, 2, 2)
  strides: Sequence[int] = (1, 2, 2, 2)
  bottleneck_ratio: int = 4
  stem_channels: int = 64
  stem_kernel: int = 7
  stem_stride: int = 2
  pool_window: int = 3
  pool_stride: int = 2
  bn_momentum: float = 0.9        # Haiku decay_rate
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None  # only for shard_map / pmap (see above)

  def __post_init__(self):
    _validate(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    leading, image_shape = images.shape[:-3], images.shape[-3:]
    x = images.reshape((-1,) + image_shape)
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, axis_name=self.bn_axis_name)
    x = nn.Conv(self.stem_channels, (self.stem_kernel,) * 2, self.stem_stride,
                padding="SAME", use_bias=False, kernel_init=conv_init,
                name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    x = nn.max_pool(x, (self.pool_window,) * 2, (self.pool_stride,) * 2,
                    padding="SAME")
    for g, (channels, n_blocks, stride) in enumerate(
        zip(self.channels, self.blocks_per_group, self.strides)):
      for b in range(n_blocks):
        x = BottleneckBlock(channels, stride if b == 0 else 1, b == 0,
                            self.bottleneck_ratio, norm,
                            name=f"group_{g}_block_{b}")(x)
    return jnp.mean(x, axis=(1, 2)).reshape(leading + (x.shape[-1],))


def _validate(embedder: ResNetEmbedder):
  groups = len(embedder.channels)
  if groups == 0 or len(embedder.blocks_per_group) != groups or len(
      embedder.strides) != groups:
    raise UserError("resnet channels, blocks_per_group, strides: need one "
                    f"entry per block group, got {tuple(embedder.channels)}, "
                    f"{tuple(embedder.blocks_per_group)}, "
                    f"{tuple(embedder.strides)}")
  if any(c % embedder.bottleneck_ratio for c in embedder.channels):
    raise UserError(f"resnet channels: every entry of "
                    f"{tuple(embedder.channels)} must be divisible by the "
                    f"bottleneck ratio {embedder.bottleneck_ratio}")
  if min(embedder.blocks_per_group) < 1 or min(embedder.strides) < 1:
    raise UserError("resnet blocks_per_group, strides: entries must be >= 1")
