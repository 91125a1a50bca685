"""The ICL-only classification task of Singh et al. (ICML 2024), Sec. 2.

Sequences x1 l1 x2 l2 xq: one exemplar of the query class and one of a
distractor class, in random order, then the query. Each sequence draws a
label pair from the training pairs (ih.relabel_split) and an order: the
query class gets the first label, the distractor the second, so the answer
is only in the context. Training uses ih.train_classes classes (the first
of the source's) and their first ih.train_exemplars exemplars; the loss is
the query's cross-entropy over ih.fs_relabel logits. The model is the
suite's sequence classifier (RoPE, attention biases), with the clamps of
circuits.py held in every pass.

Evaluators (evals.names picks them; ih.eval_sequences each, fixed by the eval seed):
  fsl_train        training classes, exemplars and label pairs
  fsl_val_rl       the held-out label pairs ("test (relabel)")
  fsl_train_valex  the held-out exemplars
  fsl_test_class   the ih.test_classes held-out classes (the source's last)
with the query metrics of the classifier (loss, acc, in_context_acc, ...),
and induction_strength: per head of the last block (head0..), the query's
attention to the label token of its class minus to the other label token,
averaged over ih.strength_sequences of the enumerated training distribution
(Fig. 3b).
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from icl_transience import config as config_lib
from icl_transience import evaluators
from icl_transience.errors import UserError, check
from icl_transience.proj.transience import classifier
from icl_transience.proj.transience import classifier_config
from icl_transience.proj.transience import probes
from icl_transience.proj.transience import sources
from icl_transience.proj.transience.induction_heads import circuits
from icl_transience.proj.transience.induction_heads import distribution

# Per-member numbers (config `hyper`): the match clamp's strength s, and the
# one head of the last block left active (-1: all).
HYPER = {"match_strength": 1.0, "only_head": -1.0}
# evaluator -> (classes, exemplars, label pairs)
EVALUATORS = {"fsl_train": ("train", "train", "train"),
              "fsl_val_rl": ("train", "train", "val"),
              "fsl_train_valex": ("train", "val", "train"),
              "fsl_test_class": ("test", "train", "train")}


def ih_block() -> ml_collections.ConfigDict:
  """Config block `ih`: the paper's main run (Sec. 2; the authors' flags)."""
  return ml_collections.ConfigDict(dict(
      train_classes=50, test_classes=100,   # --class_split 50 _ 100
      train_exemplars=1, val_exemplars=4,   # --exemplar_split 1 4 0
      fs_relabel=5, relabel_split=(8, 2, 0), relabel_split_seed=20,
      eval_sequences=1000,
      strength_sequences=10_000,
      # clamps in every pass ('block:heads', 0-based; circuits.py)
      ablate_heads="", prev_token_heads="", induction_heads="",
      copy_from_head="", perfect_layer1=False))




def blocks(c) -> dict:
  """The model, the source (the classifier's `data` block), `ih`, the
  evaluators (`evals.names`) and the per-member numbers (`hyper`). Default source: 150 classes x 5 exemplars of the
  embedded synthetic features (dim 512), non-negative like the authors'
  ResNet features: the first 50 train, the last 100 are the held-out
  classes."""
  data = classifier_config.blocks(c)["data"]
  # the authors' features are ReLU ResNet activations: non-negative
  data.n_classes, data.n_exemplars, data.relu_features = 150, 5, True
  return {"model": classifier_config.model_block(), "data": data, "ih": ih_block(),
          "evals": ml_collections.ConfigDict(dict(names=tuple(EVALUATORS))),
          "hyper": ml_collections.ConfigDict(HYPER)}


def class_rows(ih, n_classes: int) -> dict[str, tuple[int, int]]:
  return {"train": (0, ih.train_classes),
          "test": (n_classes - ih.test_classes, n_classes)}


def exemplar_range(ih, which: str) -> tuple[int, int]:
  n = ih.train_exemplars
  return (0, n) if which == "train" else (n, n + ih.val_exemplars)


def sample(key, n: int, classes, exemplars, pairs):
  """n sequences: (classes (n, 3), exemplars (n, 3), labels (n, 2), target
  (n,), query_slot (n,)); classes in [lo, hi), exemplars in [lo, hi), label
  pairs drawn from `pairs` (P, 2) in random order."""
  k = jax.random.split(key, 6)
  query = jax.random.randint(k[0], (n,), *classes)
  other = jax.random.randint(k[1], (n,), classes[0], classes[1] - 1)
  other = other + (other >= query)
  pair = jnp.asarray(pairs)[jax.random.randint(k[2], (n,), 0, len(pairs))]
  pair = jnp.where(jax.random.bernoulli(k[3], shape=(n, 1)), pair[:, ::-1], pair)
  slot = jax.random.bernoulli(k[4], shape=(n,)).astype(jnp.int32)
  first = slot == 0
  context = jnp.stack([jnp.where(first, query, other),
                       jnp.where(first, other, query)], 1)
  labels = jnp.stack([jnp.where(first, pair[:, 0], pair[:, 1]),
                      jnp.where(first, pair[:, 1], pair[:, 0])], 1)
  ex = jax.random.randint(k[5], (n, 3), *exemplars)
  return dict(classes=jnp.concatenate([context, query[:, None]], 1),
              exemplars=ex, labels=labels.astype(jnp.int32),
              target=pair[:, 0].astype(jnp.int32), query_slot=slot)


class InductionHeadsTask:
  """ICL-only label-pair classification (see the module docstring)."""

  def __init__(self, c):
    self.c, self.ih = c, c.ih
    try:
      self.splits = distribution.label_pair_split(
          self.ih.fs_relabel, tuple(self.ih.relabel_split),
          self.ih.relabel_split_seed)
    except UserError as e:
      raise UserError(f"ih.relabel_split: {str(e).partition(': ')[2]}") from e
    self.clamps = circuits.from_config(self.ih)
    self.model = classifier.build_model(c.model, self.ih.fs_relabel)
    self.shown = {"fsl_train": "loss", "fsl_val_rl": "loss"}
    known = {name: evaluators.Evaluator(self._query_set(name), self._query_metrics)
             for name in EVALUATORS}
    self.evaluators = dict(
        evaluators.select(known, c.evals.names, "evals.names"),
        induction_strength=evaluators.Evaluator(self._strength_set,
                                                self._strength_metrics))

  def validate(self, n_devices: int):
    del n_devices
    ih, shape = self.ih, sources.source_shape(self.c.data)
    sources.check_finite(self.c.data)
    check(ih.train_classes >= 2 and ih.test_classes >= 2, "ih.train_classes",
          "train and test classes need >= 2 each")
    check(ih.train_classes + ih.test_classes <= shape.n_classes, "ih.test_classes",
          f"{ih.train_classes} + {ih.test_classes} classes, but the source "
          f"holds {shape.n_classes}")
    check(ih.train_exemplars >= 1 and ih.val_exemplars >= 1 and
          ih.train_exemplars + ih.val_exemplars <= shape.n_exemplars,
          "ih.val_exemplars", f"train + val exemplars exceed the source's "
          f"{shape.n_exemplars}")
    check(ih.eval_sequences > 0 and ih.strength_sequences > 0,
          "ih.eval_sequences", "must be positive")
    check(self.c.model.mlp_ratio == 0 or not self.clamps.any, "model.mlp_ratio",
          "the clamps are defined on the attention-only model")
    model = self.c.model
    classifier_config.check_model(model, circuits.TOKENS)
    circuits.validate(self.clamps, model.depth, model.n_heads, model.positions)
    graft = self.c.graft
    check(graft.mode in ("none", "in") and (graft.mode == "none" or graft.layer == 0),
          "graft.mode", "this task grafts a frozen layer 1: mode 'in', layer 0")
    check(graft.mode == "none" or not (self.clamps.prev_token or self.clamps.copy_from
                                       or self.clamps.perfect_layer1),
          "graft.mode", "a grafted layer 1 takes no layer-1, copy or "
          "previous-token clamp")
    for m in config_lib.members(self.c):
      fields = dict(m.extra)
      check(0.0 <= fields["match_strength"] <= 1.0, "hyper.match_strength",
            f"{fields['match_strength']} outside [0, 1] (member {m.name})")
      check(fields["only_head"] in range(-1, self.c.model.n_heads),
            "hyper.only_head", f"{fields['only_head']} is not -1 or a head of "
            f"the last block (member {m.name})")

  def init_weights(self, key):
    dim = sources.source_shape(self.c.data).dim
    return {"params": self.model.init(key, jnp.zeros((1, 3, dim)),
                                      jnp.zeros((1, 2), jnp.int32))["params"]}

  def constants(self, sharding):
    return sources.load_table(self.c.data, sharding)

  def _grafted(self, weights, feats, labels):
    """With a graft (mode 'in', layer 0; Appendix, Fig. 7): the frozen
    model's stream after its block 0; else None."""
    if self.c.graft.mode == "none":
      return None
    frozen = jax.lax.stop_gradient(weights["frozen"])
    return self.model.apply({"params": frozen}, feats, labels, stop=1)

  def _apply(self, weights, feats, seqs):
    hyper = weights["hyper"]
    return circuits.forward(self.model, weights["params"], feats, seqs["labels"],
                            seqs["target"], self.clamps, hyper["match_strength"],
                            hyper["only_head"],
                            self._grafted(weights, feats, seqs["labels"]))

  def _train_sampler(self):
    ih, n = self.ih, sources.source_shape(self.c.data).n_classes
    return (class_rows(ih, n)["train"], exemplar_range(ih, "train"), self.splits[0])

  def sample_batch(self, key, table, hyper, step):
    del hyper, step
    seqs = sample(key, self.c.batch_size, *self._train_sampler())
    return dict(seqs, features=table[seqs["classes"], seqs["exemplars"]])

  def loss(self, weights, batch, hyper, step):
    del step
    logits = self._apply(dict(weights, hyper=hyper), batch["features"], batch)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target"])
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["target"])
    return jnp.mean(ce), ({"loss": jnp.mean(ce), "acc": acc}, None)

  # --- evaluators ---------------------------------------------------------
  def _query_set(self, name: str):
    """key -> ih.eval_sequences sequences of the evaluator's classes,
    exemplars and label pairs."""
    classes, exemplars, labels = EVALUATORS[name]

    def fixed_set(key):
      ih, n = self.ih, sources.source_shape(self.c.data).n_classes
      pairs = {"train": self.splits[0], "val": self.splits[1]}[labels]
      return sample(key, ih.eval_sequences, class_rows(ih, n)[classes],
                    exemplar_range(ih, exemplars), pairs)
    return fixed_set

  def _query_metrics(self, weights, table, seqs):
    logits = self._apply(weights, table[seqs["classes"], seqs["exemplars"]], seqs)
    return {k: jnp.mean(v) for k, v in probes.query_metrics(
        logits, seqs["labels"], seqs["target"]).items()}

  def _strength_set(self, key):
    """ih.strength_sequences of the enumerated training distribution (a
    permutation from the eval seed; the key is not needed)."""
    del key
    every = distribution.enumerate_training_sequences(self.splits[0],
                                                      self.ih.train_classes)
    pick = np.random.default_rng(self.c.eval_seed).permutation(
        len(every.query_class))[:self.ih.strength_sequences]
    return strength_set(every, pick)

  def _strength_metrics(self, weights, table, seqs):
    hyper = weights["hyper"]
    feats = table[seqs["classes"], seqs["exemplars"]]
    pattern = circuits.attention_patterns(
        self.model, weights["params"], feats, seqs["labels"], seqs["target"],
        self.clamps, hyper["match_strength"], hyper["only_head"],
        self._grafted(weights, feats, seqs["labels"]))
    return induction_strength(pattern, seqs["query_slot"])


def strength_set(every, pick) -> dict:
  """Sequences `pick` of the enumerated training distribution (exemplar 0,
  the paper's one training exemplar per class)."""
  classes = np.concatenate([every.context_classes[pick],
                            every.query_class[pick, None]], 1)
  return dict(classes=classes.astype(np.int32),
              exemplars=np.zeros_like(classes, np.int32),
              labels=every.context_labels[pick].astype(np.int32),
              target=every.query_label[pick].astype(np.int32),
              query_slot=every.query_slot[pick].astype(np.int32))


def induction_strength(pattern, query_slot) -> dict:
  """{head<h>: mean over sequences of the query's attention to the label
  token of its class minus to the other label token} (Fig. 3b)."""
  query_row = pattern[:, :, -1]                              # (B, heads, T)
  right = jnp.where(query_slot[:, None] == 0, query_row[..., 1], query_row[..., 3])
  wrong = jnp.where(query_slot[:, None] == 0, query_row[..., 3], query_row[..., 1])
  return {f"head{h}": v for h, v in enumerate(jnp.mean(right - wrong, 0))}
