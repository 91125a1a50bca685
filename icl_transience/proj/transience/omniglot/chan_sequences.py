"""The Chan et al. sequence generator (Chan et al. 2022: bursty sequences and evaluators), pure JAX.

A sequence is `context_len` (exemplar, label) pairs plus a query exemplar,
returned as indices (the `Sequences` of proj/transience/sequences.py): `classes` are
dataset classes of the 8x augmented Omniglot (class = 8 * character +
transform, see proj/transience/omniglot/data.py), so `omniglot.gather_images(images, classes,
exemplars)` gives the pixels. Training classes are known by their label: label
j (0 .. n_rare + n_common - 1) is the j-th class of Chan's class order
(`omniglot.class_split`); holdout classes never appear in training sequences.

Kinds (Chan's sequence types):
  bursty              training: with probability p_bursty a `ways`-way
                      `bursty_shots`-shot block (burst classes i.i.d., the
                      query a further exemplar of one of them) plus i.i.d.
                      remainder items, context shuffled; else context_len + 1
                      i.i.d. classes. Fixed class labels.
  fewshot_holdout     ICL evaluator: `ways` holdout classes (uniform, with
                      replacement) x `fs_shots` exemplars, context shuffled,
                      query of one of them; labels 0..ways-1 ('unfixed').
  fewshot_zipfian     the same on training classes (training distribution).
  no_support_zipfian  IWL evaluator: query ~ training distribution, context
                      i.i.d. from the other training classes; fixed labels.
  no_support_rare / no_support_common   the same, uniform over the rare
                      (labels < n_rare) or common training classes.

Exemplars of a class are drawn without replacement inside a whole sequence
(query included), so the query image never repeats a context image. The class
distribution is Chan's Zipf: label j has weight (n_train - j)^-zipf_exponent
(the last classes, i.e. the common ones, are the most frequent); exponent 0 is
uniform. Item types (OTHER, BURSTY, DISTRACTOR, QUERY) mark the query's class
in the burst/few-shot block as BURSTY and the block's other way(s) as
DISTRACTOR.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from icl_transience.proj.transience.omniglot import data as omniglot
from icl_transience.proj.transience.sequences import BURSTY, DISTRACTOR, OTHER, QUERY
from icl_transience.proj.transience.sequences import Sequences
from icl_transience.errors import UserError

KINDS = ("bursty", "fewshot_holdout", "fewshot_zipfian", "no_support_zipfian",
         "no_support_rare", "no_support_common")


@dataclasses.dataclass(frozen=True)
class ChanSpec:
  """One family of Chan sequences (hashable: a static jit argument)."""
  kind: str = "bursty"
  n_characters: int = 1623     # Omniglot characters (x 8 classes)
  n_exemplars: int = 20        # drawings per class
  n_rare: int = 12_700         # training labels 0 .. n_rare - 1
  n_common: int = 100          # training labels n_rare .. n_train - 1
  n_holdout: int = 80          # the last classes of the order (10 characters)
  order_seed: int = 1337       # numpy default_rng seed of the class order
  context_len: int = 8         # seq_len 9 = 8 context items + the query
  bursty_shots: int = 3
  fs_shots: int = 4
  ways: int = 2
  p_bursty: float = 1.0        # Chan's config default is 0.9 (Chan et al. 2022)
  zipf_exponent: float = 0.0

  def __post_init__(self):
    _validate(self)

  @property
  def n_train(self) -> int:
    return self.n_rare + self.n_common

  @property
  def n_classes(self) -> int:
    """Output vocabulary: training labels, then the holdout classes' labels."""
    return self.n_train + self.n_holdout

  @property
  def n_remainder(self) -> int:
    return self.context_len - self.ways * self.bursty_shots


def chan_spec(n_characters: int, **fields) -> ChanSpec:
  """A spec whose rare/common/holdout counts suit a dataset of n_characters
  (omniglot.split_counts) unless given in fields."""
  n_rare, n_common, n_holdout = omniglot.split_counts(n_characters)
  counts = dict(n_rare=n_rare, n_common=n_common, n_holdout=n_holdout)
  return ChanSpec(n_characters=n_characters, **{**counts, **fields})


def evaluator_kinds(spec: ChanSpec) -> tuple[str, ...]:
  """Chan's evaluator list for the images_augmented config (Chan et al. 2022)."""
  if spec.zipf_exponent:
    return ("no_support_rare", "no_support_common", "fewshot_holdout")
  return ("no_support_zipfian", "fewshot_zipfian", "fewshot_holdout")


def _validate(spec: ChanSpec):
  def check(ok, message):
    if not ok:
      raise UserError(message)

  check(spec.kind in KINDS, f"kind: unknown sequence kind '{spec.kind}' "
        f"(choose from {', '.join(KINDS)})")
  check(min(spec.ways, spec.bursty_shots, spec.fs_shots) >= 1,
        "ways, bursty_shots, fs_shots: must be >= 1")
  check(spec.n_remainder >= 0, f"context_len: {spec.context_len} is shorter "
        f"than ways x bursty_shots = {spec.ways * spec.bursty_shots}")
  check(not spec.kind.startswith("fewshot")
        or spec.ways * spec.fs_shots == spec.context_len,
        f"fs_shots: ways x fs_shots must equal context_len {spec.context_len}")
  check(spec.n_exemplars >= spec.context_len + 1,
        f"n_exemplars: {spec.n_exemplars} drawings cannot fill a sequence of "
        f"{spec.context_len + 1} items of one class without repeats")
  check(0.0 <= spec.p_bursty <= 1.0,
        f"p_bursty: must be in [0, 1], got {spec.p_bursty}")
  check(spec.zipf_exponent >= 0.0,
        f"zipf_exponent: must be >= 0, got {spec.zipf_exponent}")
  check(min(spec.n_rare, spec.n_common) >= 0 and spec.n_train >= 2,
        "n_rare, n_common: need at least 2 training classes")
  check(spec.n_holdout >= 1 and spec.n_holdout % omniglot.N_TRANSFORMS == 0,
        f"n_holdout: must be a positive multiple of {omniglot.N_TRANSFORMS} "
        f"(whole characters), got {spec.n_holdout}")
  n_dataset = omniglot.N_TRANSFORMS * spec.n_characters
  check(spec.n_classes <= n_dataset, f"n_rare + n_common + n_holdout = "
        f"{spec.n_classes} exceeds the {n_dataset} classes of "
        f"{spec.n_characters} characters")
  check(spec.kind != "no_support_rare" or spec.n_rare >= 2,
        "n_rare: no_support_rare needs at least 2 rare classes")
  check(spec.kind != "no_support_common" or spec.n_common >= 2,
        "n_common: no_support_common needs at least 2 common classes")


def _split(spec: ChanSpec) -> omniglot.ClassSplit:
  return omniglot.class_split(spec.n_characters, spec.n_train, spec.n_holdout,
                              spec.order_seed)


def _training_pool(spec: ChanSpec) -> tuple[int, int, bool]:
  """(first label, end label, Zipf-weighted?) of the kind's training classes."""
  if spec.kind == "no_support_rare":
    return 0, spec.n_rare, False
  if spec.kind == "no_support_common":
    return spec.n_rare, spec.n_train, False
  return 0, spec.n_train, spec.zipf_exponent != 0.0


def _zipf(spec: ChanSpec) -> tuple[np.ndarray, np.ndarray]:
  """Zipf weights of the training labels, w_j ~ (n_train - j)^-e, and CDF."""
  ranks = np.arange(spec.n_train, 0, -1, dtype=np.float64)
  weights = ranks ** -spec.zipf_exponent / np.sum(ranks ** -spec.zipf_exponent)
  return weights.astype(np.float32), np.cumsum(weights).astype(np.float32)


def _draw_labels(key, spec: ChanSpec, n: int, excluded=None) -> jax.Array:
  """n i.i.d. training labels from the kind's pool, `excluded` removed.

  Uniform pools: randint shifted past the excluded label. Zipf: inverse CDF;
  removing label q rescales u to the remaining mass and skips q's interval.
  """
  lo, hi, zipf = _training_pool(spec)
  if not zipf:
    top = hi - lo - (excluded is not None)
    labels = jax.random.randint(key, (n,), 0, top) + lo
    if excluded is not None:
      labels = labels + (labels >= excluded)
    return labels.astype(jnp.int32)
  weights, cdf = (jnp.asarray(a) for a in _zipf(spec))
  u = jax.random.uniform(key, (n,))
  if excluded is not None:
    mass = weights[excluded]
    u = u * (1.0 - mass)
    u = jnp.where(u >= cdf[excluded] - mass, u + mass, u)
  labels = jnp.searchsorted(cdf, u, side="right")
  return jnp.minimum(labels, spec.n_train - 1).astype(jnp.int32)


def _bursty(key, spec: ChanSpec):
  """(labels incl. query, item types) of one training sequence."""
  k_bursty, k_labels, k_query, k_shuffle = jax.random.split(key, 4)
  n_block = spec.ways + spec.n_remainder
  drawn = _draw_labels(k_labels, spec, n_block + spec.context_len + 1)
  burst, iid_labels = drawn[:spec.ways], drawn[n_block:]
  query_way = jax.random.randint(k_query, (), 0, spec.ways)
  way = jnp.tile(jnp.arange(spec.ways), spec.bursty_shots)
  context = jnp.concatenate([burst[way], drawn[spec.ways:n_block]])
  types = jnp.concatenate([jnp.where(way == query_way, BURSTY, DISTRACTOR),
                           jnp.full((spec.n_remainder,), OTHER)])
  order = jax.random.permutation(k_shuffle, spec.context_len)
  bursty_labels = jnp.concatenate([context[order], burst[query_way][None]])
  bursty_types = jnp.concatenate([types[order], jnp.array([QUERY])])
  iid_types = jnp.array([OTHER] * spec.context_len + [QUERY])
  is_bursty = jax.random.bernoulli(k_bursty, spec.p_bursty)
  return (jnp.where(is_bursty, bursty_labels, iid_labels),
          jnp.where(is_bursty, bursty_types, iid_types))


def _fewshot(key, spec: ChanSpec):
  """(classes, types, labels, target) of one few-shot evaluator sequence."""
  k_classes, k_query, k_shuffle = jax.random.split(key, 3)
  split = _split(spec)
  if spec.kind == "fewshot_holdout":
    picks = jax.random.randint(k_classes, (spec.ways,), 0, spec.n_holdout)
    options = jnp.asarray(split.holdout)[picks]
  else:
    options = jnp.asarray(split.train)[_draw_labels(k_classes, spec, spec.ways)]
  query_way = jax.random.randint(k_query, (), 0, spec.ways)
  way = jax.random.permutation(
      k_shuffle, jnp.tile(jnp.arange(spec.ways), spec.fs_shots))
  classes = jnp.concatenate([options[way], options[query_way][None]])
  types = jnp.concatenate([jnp.where(way == query_way, BURSTY, DISTRACTOR),
                           jnp.array([QUERY])])
  return classes, types, way, query_way


def _no_support(key, spec: ChanSpec):
  """(labels incl. query, item types) of one no-support evaluator sequence."""
  k_query, k_rest = jax.random.split(key)
  query = _draw_labels(k_query, spec, 1)
  context = _draw_labels(k_rest, spec, spec.context_len, excluded=query[0])
  types = jnp.array([OTHER] * spec.context_len + [QUERY])
  return jnp.concatenate([context, query]), types


def _exemplars(key, spec: ChanSpec, classes: jax.Array) -> jax.Array:
  """Per position, without replacement among positions of the same class.

  Each position owns a random order of the drawings; position i of class c
  takes entry r_i of the order owned by c's first position, r_i = the number
  of earlier positions of class c.
  """
  same = classes[:, None] == classes[None, :]
  rank = jnp.sum(jnp.tril(same, -1), axis=1)
  first = jnp.argmax(same, axis=1)
  scores = jax.random.uniform(key, (classes.shape[0], spec.n_exemplars))
  drawings = jnp.argsort(scores, axis=1)
  return drawings[first, rank].astype(jnp.int32)


def sample_one(key, spec: ChanSpec) -> Sequences:
  k_classes, k_exemplars = jax.random.split(key)
  if spec.kind.startswith("fewshot"):
    classes, types, labels, target = _fewshot(k_classes, spec)
  else:
    sample = _bursty if spec.kind == "bursty" else _no_support
    all_labels, types = sample(k_classes, spec)
    classes = jnp.asarray(_split(spec).train)[all_labels]
    labels, target = all_labels[:-1], all_labels[-1]
  exemplars = _exemplars(k_exemplars, spec, classes)
  return Sequences(classes.astype(jnp.int32), exemplars,
                   types.astype(jnp.int32), labels.astype(jnp.int32),
                   jnp.asarray(target, jnp.int32))


def sample_sequences(key, spec: ChanSpec, n: int) -> Sequences:
  """n independent sequences (leading axis n)."""
  return jax.vmap(sample_one, in_axes=(0, None))(jax.random.split(key, n), spec)


def closed_labels(spec: ChanSpec) -> tuple[int, int]:
  """[lo, hi) of the labels `accuracy_closed` chooses among (Chan's code):
  0..ways-1 for few-shot kinds, the kind's training labels otherwise."""
  if spec.kind.startswith("fewshot"):
    return 0, spec.ways
  lo, hi, _ = _training_pool(spec)
  return lo, hi


def query_accuracies(logits: jax.Array, target: jax.Array,
                     spec: ChanSpec) -> dict[str, jax.Array]:
  """Chan's accuracy_query (argmax over all n_classes logits; chance 0) and
  accuracy_closed (argmax over closed_labels; chance 1/ways for few-shot),
  averaged over sequences. logits: (..., n_classes) at the query."""
  lo, hi = closed_labels(spec)
  full = jnp.argmax(logits, axis=-1) == target
  closed = jnp.argmax(logits[..., lo:hi], axis=-1) + lo == target
  return {"accuracy_query": jnp.mean(full.astype(jnp.float32)),
          "accuracy_closed": jnp.mean(closed.astype(jnp.float32))}
