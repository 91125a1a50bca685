"""The sequence-classification task of the coopetition and fixed-feature
transience runs (Singh et al. 2025 and the fixed-feature runs of Singh et al. 2023).

Batches are (exemplar, label) sequences sampled on device as indices
(proj/transience/sequences.py) whose features are gathered from the source table (the
task's constants); the model is classifier.SequenceClassifier, optionally
grafted to a frozen model (weights["frozen"], Singh et al. 2025, Fig. 4); the loss is the
query's cross-entropy; its evaluators are those of proj/transience/probes.py.
"""
import jax.numpy as jnp
import optax

from icl_transience.proj.transience import classifier_config
from icl_transience.proj.transience import graft
from icl_transience.proj.transience import probes
from icl_transience.proj.transience import sequences
from icl_transience.proj.transience import sources
from icl_transience.proj.transience import classifier


class ClassifyTask:
  """Query classification of bursty exemplar-label sequences."""

  shown = {"icl": "in_context_acc", "flip_icl": "in_context_acc",
           "pairs_icl": "in_context_acc", "iwl_copy_avail": "in_context_acc",
           "pure_iwl": "acc"}

  def __init__(self, c):
    self.c = c
    self.spec = classifier_config.train_spec(c)
    self.model = classifier.build_model(
        c.model, classifier_config.n_outputs(c), c.clamp)
    self.source_classes = c.data.n_classes  # one-hot width for 'onehot'
    self.evaluators = probes.run_evaluators(c, self.apply)

  def validate(self, n_devices: int):
    del n_devices
    classifier_config.validate(self.c)
    probes.validate(self.c)

  def apply(self, weights, features, labels):
    """Query logits; with a graft, the live params joined to the frozen model."""
    return graft.forward(self.model, self.c.graft.mode, self.c.graft.layer,
                         weights["params"], weights.get("frozen"), features,
                         labels)

  def init_weights(self, key):
    k = self.spec.context_len
    input_dim = (self.c.data.n_classes if self.c.data.source == "onehot"
                 else sources.source_shape(self.c.data).dim)
    feats = jnp.zeros((1, k + 1, input_dim), jnp.float32)
    labels = jnp.zeros((1, k), jnp.int32)
    return {"params": self.model.init(key, feats, labels)["params"]}

  def constants(self, sharding):
    return sources.load_table(self.c.data, sharding)

  def sample_batch(self, key, table, hyper, step):
    del hyper, step
    seqs = sequences.sample_sequences(key, self.spec, self.c.batch_size)
    feats = sources.gather_features(table, seqs.classes, seqs.exemplars,
                                    self.source_classes)
    return {"features": feats, "labels": seqs.labels, "target": seqs.target}

  def loss(self, weights, batch, hyper, step):
    del hyper, step
    logits = self.apply(weights, batch["features"], batch["labels"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target"])
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["target"])
    return jnp.mean(ce), ({"loss": jnp.mean(ce), "acc": acc}, None)
