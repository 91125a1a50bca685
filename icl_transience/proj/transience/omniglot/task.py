"""The Chan et al. Omniglot task of the main transience runs (Chan et al. 2022,
as run by Singh et al. 2023).

Batches are bursty sequences of 8x augmented Omniglot drawings
(proj/transience/omniglot/chan_sequences.py, kind 'bursty'), sampled on device as indices and
turned into (B, K+1, 105, 105, 1) images in [0, 1] by proj/transience/omniglot/data.py's
lazy gather; the model is the Chan transformer (ResNet embedder + 12-layer
transformer, proj/transience/omniglot/chan_transformer.py); the loss is the query's softmax
cross-entropy. Evaluators are fixed sets of Chan sequences (eval_seed) of the
kinds in `evals.names`: by default the ICL evaluator
('fewshot_holdout': 2 holdout classes x 4 shots, labels 0/1) and the IWL
evaluator ('no_support_zipfian'), each reporting Chan's `accuracy_query`
(argmax over the whole vocabulary), `accuracy_closed` (argmax over labels
0..ways-1, resp. the training labels) and `loss`.

Weights are {"params", "model_state": BatchNorm batch_stats}. `loss` runs the
model in train mode (statistics of the step's B x (K+1) images, running
averages updated and returned); `evaluate` in eval mode (running averages).
All statistics are plain means inside the traced function, so they hold under
jit and lax.scan (the trainer carries model_state), under data parallelism
(the trainer constrains the batch axis to the 'data' mesh axis; XLA's mean
over a sharded axis is the global mean: every device normalises with the
statistics of the whole batch) and under vmap over members (each member
normalises over its own batch and keeps its own statistics).

Device memory. The images are kept on device as uint8 gray levels (0..255),
4x smaller than float32 (the full set: 358 MB instead of 1.43 GB), and
decoded to the loader's float32 values (level / 255 through TF's grayscale
weights: strokes 0.0, background 0.9999) when gathered. The encoding is
exact up to float32 rounding (< 1e-6; checked when the images are loaded).

The fields of config block `omniglot` (see `default_config`) hold every
number of Chan et al.'s sequences and evaluators and of their ResNet
embedder; its model block holds what the transformer reads: depth, d_model,
n_heads, mlp_ratio and pos_timescale (Chan's sinusoids are always used).
"""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from icl_transience import evaluators
from icl_transience.errors import UserError
from icl_transience.nn import transformer
from icl_transience.proj.transience import classifier_config
from icl_transience.proj.transience.omniglot import chan_sequences as chan
from icl_transience.proj.transience.omniglot import chan_transformer
from icl_transience.proj.transience.omniglot import data as omniglot

EVALUATOR_KINDS = tuple(k for k in chan.KINDS if k != "bursty")
WHITE = float(np.sum(omniglot.GRAY_WEIGHTS))  # the loader's value of level 255
# Level -> the loader's float value (a gray RGB pixel through TF's weights).
PALETTE = (np.arange(256, dtype=np.float32)[:, None] / 255
           * np.ones(3, np.float32)) @ omniglot.GRAY_WEIGHTS
ENCODING_TOLERANCE = 1e-6
_ENCODE_CHUNK = 64  # characters per encoding chunk (bounds host temporaries)


def default_config() -> ml_collections.ConfigDict:
  """Config block `omniglot`: the values of Chan et al. 2022."""
  return ml_collections.ConfigDict(dict(
      # training sequences (Chan et al. 2022)
      context_len=8,            # seq_len 9 = 8 context pairs + the query
      ways=2,
      bursty_shots=3,
      p_bursty=1.0,             # Chan's config default 0.9; the paper implies 1
      zipf_exponent=0.0,        # uniform over the training classes
      noise_scale=0.0,          # Gaussian pixel noise (training images only)
      # classes (Chan et al. 2022): labels 0..n_rare+n_common-1, then the
      # holdout classes
      n_rare=12_700,
      n_common=100,
      n_holdout=80,
      order_seed=1337,          # numpy default_rng seed of Chan's class order
      # evaluators (evals.names) of the kinds of chan_sequences
      fs_shots=4,               # few-shot evaluators: ways x fs_shots = context
      eval_sequences=10_000,    # per evaluator ("~10,000" in Chan's code)
      eval_batch_size=100,      # sequences per forward pass at evaluation
      # ResNet embedder (Chan et al. 2022); its last group has model.d_model
      # channels
      resnet_channels=(16, 32, 32),
      resnet_blocks=(2, 2, 2, 2),
      resnet_strides=(1, 2, 2, 2),
      bn_momentum=0.9,          # BatchNorm decay of the running averages
      bn_epsilon=1e-5,
  ))


def blocks(c) -> dict:
  """The image task's config blocks: its model (Chan et al.'s transformer
  over ResNet embeddings: sinusoidal positions of timescale pos_timescale),
  the data source (the classifier's `data` block) and `omniglot`."""
  return {"model": transformer.model_block(depth=12, mlp_ratio=4,
                                           pos_timescale=30.0),
          "data": classifier_config.blocks(c)["data"],
          # Chan et al. 2022: their list adds fewshot_zipfian, and with a
          # non-zero zipf_exponent uses no_support_rare and no_support_common
          "evals": ml_collections.ConfigDict(dict(
              names=("no_support_zipfian", "fewshot_holdout"))),
          "omniglot": default_config()}


def encode_images(images: np.ndarray) -> np.ndarray:
  """The loader's float32 images as uint8 gray levels (PALETTE[level])."""
  codes = np.empty(images.shape, np.uint8)
  for start in range(0, images.shape[0], _ENCODE_CHUNK):
    part = images[start:start + _ENCODE_CHUNK]
    level = np.clip(np.rint(part * (255 / WHITE)), 0, 255).astype(np.uint8)
    if np.max(np.abs(PALETTE[level] - part), initial=0.0) > ENCODING_TOLERANCE:
      raise UserError("data.omniglot_dir: the drawings are not 8-bit grayscale")
    codes[start:start + _ENCODE_CHUNK] = level
  return codes


def gather(codes: jax.Array, classes: jax.Array,
           exemplars: jax.Array) -> jax.Array:
  """float32 images (classes.shape + (105, 105, 1)) of the uint8 levels."""
  return jnp.asarray(PALETTE)[omniglot.gather_images(codes, classes, exemplars)]


class OmniglotTask:
  """Query classification of bursty Omniglot image sequences (Chan et al.)."""

  def __init__(self, c):
    self.c = c
    self.o = c.omniglot
    self.shown = {k: ("accuracy_closed" if k.startswith("fewshot")
                      else "accuracy_query") for k in c.evals.names}
    self.n_outputs = self.o.n_rare + self.o.n_common + self.o.n_holdout
    self.model = chan_transformer.ChanTransformer(
        n_outputs=self.n_outputs, depth=c.model.depth, d_model=c.model.d_model,
        n_heads=c.model.n_heads, mlp_ratio=c.model.mlp_ratio,
        pos_timescale=c.model.pos_timescale,
        resnet_channels=tuple(self.o.resnet_channels),
        resnet_blocks=tuple(self.o.resnet_blocks),
        resnet_strides=tuple(self.o.resnet_strides),
        bn_momentum=self.o.bn_momentum, bn_epsilon=self.o.bn_epsilon)
    self.n_characters = None  # known once the images are loaded
    self.evaluators = evaluators.select(
        {kind: evaluators.Evaluator(self._fixed_set(kind), self._set_metrics(kind))
         for kind in EVALUATOR_KINDS}, c.evals.names, "evals.names")

  def spec(self, kind: str, n_characters: int) -> chan.ChanSpec:
    """The Chan sequence family `kind` over a dataset of n_characters."""
    o = self.o
    try:
      return chan.ChanSpec(
          kind=kind, n_characters=n_characters, n_rare=o.n_rare,
          n_common=o.n_common, n_holdout=o.n_holdout, order_seed=o.order_seed,
          context_len=o.context_len, bursty_shots=o.bursty_shots,
          fs_shots=o.fs_shots, ways=o.ways, p_bursty=o.p_bursty,
          zipf_exponent=o.zipf_exponent)
    except UserError as e:
      raise UserError(f"omniglot.{e}") from e

  def validate(self, n_devices: int):
    del n_devices  # the generic checks cover the batch split
    o = self.o
    if not self.c.evals.names:
      raise UserError("evals.names: give one or more distinct kinds")
    for kind in ("bursty",) + tuple(self.c.evals.names):  # dataset size checked on loading
      self.spec(kind, omniglot.FULL_CHARACTERS)
    if not (o.eval_sequences > 0 and o.eval_batch_size > 0
            and o.eval_sequences % o.eval_batch_size == 0):
      raise UserError(f"omniglot.eval_batch_size: {o.eval_batch_size} must "
                      f"divide omniglot.eval_sequences {o.eval_sequences}")
    if o.noise_scale < 0:
      raise UserError(f"omniglot.noise_scale: must be >= 0, got {o.noise_scale}")
    directory = self.c.data.omniglot_dir
    if directory and not os.path.isdir(directory):
      raise UserError(f"data.omniglot_dir: no such directory: {directory}")

  # --- data ----------------------------------------------------------------
  def _load_codes(self) -> np.ndarray:
    """The dataset's images as uint8 levels (host); sets n_characters."""
    data = omniglot.load_omniglot(self.c.data.omniglot_dir,
                                  self.c.data.tfds_dir or None)
    n_characters = data.images.shape[0]
    n_dataset = omniglot.N_TRANSFORMS * n_characters
    if self.n_outputs > n_dataset:
      n_rare = n_dataset - self.o.n_common - self.o.n_holdout
      raise UserError(
          f"omniglot.n_rare: n_rare + n_common + n_holdout = {self.n_outputs} "
          f"exceeds the {n_dataset} classes of the {n_characters} characters "
          f"loaded (at most n_rare={n_rare} for this dataset)")
    self.n_characters = n_characters
    return encode_images(data.images)

  def constants(self, sharding):
    codes = self._load_codes()
    if sharding is None:
      return jnp.asarray(codes)
    return jax.make_array_from_callback(codes.shape, sharding,
                                        lambda i: codes[i])

  def sample_batch(self, key, codes, hyper, step):
    del hyper, step
    k_seqs, k_noise = jax.random.split(key)
    seqs = chan.sample_sequences(k_seqs, self.spec("bursty", codes.shape[0]),
                                 self.c.batch_size)
    images = gather(codes, seqs.classes, seqs.exemplars)
    if self.o.noise_scale:
      images = images + self.o.noise_scale * jax.random.normal(
          k_noise, images.shape, images.dtype)
    return {"images": images, "labels": seqs.labels, "target": seqs.target}

  def _fixed_set(self, kind: str):
    """key -> omniglot.eval_sequences Chan sequences of the kind."""
    def fixed_set(key):
      n_characters = self.n_characters or self._load_codes().shape[0]
      return chan.sample_sequences(key, self.spec(kind, n_characters),
                                   self.o.eval_sequences)
    return fixed_set

  # --- model ---------------------------------------------------------------
  def init_weights(self, key):
    k = self.o.context_len
    side = omniglot.IMAGE_SIZE
    images = jnp.zeros((1, k + 1, side, side, 1), jnp.float32)
    labels = jnp.zeros((1, k), jnp.int32)
    params, batch_stats = chan_transformer.init_variables(
        self.model, key, images, labels)
    return {"params": params, "model_state": batch_stats}

  def loss(self, weights, batch, hyper, step):
    del hyper, step
    logits, batch_stats = chan_transformer.apply_model(
        self.model, weights["params"], weights["model_state"],
        batch["images"], batch["labels"], train=True)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["target"]))
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["target"])
    return ce, ({"loss": ce, "acc": acc}, batch_stats)

  def _set_metrics(self, kind: str):
    return lambda weights, codes, seqs: self._evaluate_set(
        weights, codes, seqs, self.spec(kind, codes.shape[0]))

  def _evaluate_set(self, weights, codes, seqs, spec: chan.ChanSpec):
    """Means over the set, in chunks of eval_batch_size sequences."""
    size = self.o.eval_batch_size
    chunks = jax.tree.map(
        lambda x: x.reshape((x.shape[0] // size, size) + x.shape[1:]), seqs)

    def one_chunk(chunk):
      images = gather(codes, chunk.classes, chunk.exemplars)
      logits, _ = chan_transformer.apply_model(
          self.model, weights["params"], weights["model_state"], images,
          chunk.labels, train=False)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, chunk.target)
      return dict(chan.query_accuracies(logits, chunk.target, spec),
                  loss=jnp.mean(ce))

    return jax.tree.map(jnp.mean, jax.lax.map(one_chunk, chunks))
