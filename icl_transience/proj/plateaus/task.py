"""Learning plateaus of Fu et al. as a trainer task (their data, model, training
and strategies).

Sequences of L (image, label) pairs labelled by a hidden factor (D_rnd: a
fresh label mapping per sequence; D_fix: the identity), from
proj/plateaus/factor_sequences.py. Images are the procedural renderer's
(proj/plateaus/shapes.py), the real Shapes3D (proj/plateaus/shapes3d.py), factor one-hots (the
perfect-weights control) or WordSelection word ids. The model is
proj/plateaus/image_sequence.py; the loss is the label cross-entropy at every image
position.

Strategies (Fu et al.) are per-member hyperparameters (c.hyper), so one
population trains the baseline and every strategy in one program:
  weights_warmup  W: every batch is D_fix while step < W, then the mixture below
  fixed_fraction  p: the fraction of D_fix sequences in every batch
  weights_loss    lambda: + lambda * mean CE of six linear factor heads on the
                  image tokens of layer c.plateau.weights_loss_layer
Training metrics: loss (the objective), label_loss, acc, factor_loss (the
heads' CE) and fixed_share (the D_fix share of the batch).

Evaluators (fixed sets from c.eval_seed):
  icl            D_rnd test sequences: acc (image positions >= icl_min_position,
                 0-based), acc_seen (there, only where the value was shown
                 before), loss (all positions), acc_pos<i> (position i)
  iwl            the same on D_fix sequences
  weights_probe  linear probes decoding every factor of an image that is
                 the whole sequence (position 0), with (a) every attention
                 output zeroed, (b) attention on (it sees only itself);
                 a / b = mean over the factors that vary (more
                 than one value) at weights_probe_layer,
                 a_<factor>, b_<factor> there, a_L<k> / b_L<k> at probe layer k
  context_probe  acc: a linear probe decoding, from the stream at image
                 position context_probe_position, the hidden factor
                 (context_probe_target 'factor') or that item's label
                 under the sequence's mapping ('label')
Probes are fitted inside evaluate (proj/plateaus/plateau.py) on standardised
features. Layer k = the residual stream after block k (0 = the embedding);
negative layers count from the last block.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_transience import config as config_lib
from icl_transience import evaluators
from icl_transience.proj.plateaus import plateau as plateau_lib
from icl_transience.proj.plateaus import factor_sequences as fseq
from icl_transience.proj.plateaus import shapes
from icl_transience.proj.plateaus import shapes3d
from icl_transience.errors import check, renamed
from icl_transience.proj.plateaus import image_sequence

SOURCES = ("procedural", "shapes3d")
PROBE_TARGETS = ("factor", "label")
HYPER = ("weights_warmup", "fixed_fraction", "weights_loss")


class PlateauTask:
  """The hidden-factor ICL task (see the module docstring)."""
  shown = {"icl": "acc", "weights_probe": "a", "context_probe": "acc"}

  def __init__(self, c):
    self.c = c
    self.p = c.plateau
    self.batch_size = c.batch_size
    self.eval_seed = c.eval_seed
    self.evaluators = {
        "icl": evaluators.Evaluator(self._sequence_set("icl"), self._sequence_eval),
        "iwl": evaluators.Evaluator(self._sequence_set("iwl"), self._sequence_eval),
        "context_probe": evaluators.Evaluator(self._sequence_set("context_probe"),
                                              self._context_probe_eval),
        "weights_probe": evaluators.Evaluator(self._probe_set, self._weights_probe_eval)}
    self.seq_spec = fseq.FactorSequenceSpec(
        context_len=self.p.context_len, label_vocab=self.p.label_vocab,
        factor_sizes=tuple(self.p.factor_sizes),
        hidden_factors=tuple(self.p.hidden_factors))
    self.shapes_spec = shapes.ShapesSpec(
        image_size=self.p.image_size, factor_sizes=tuple(self.p.factor_sizes),
        supersample=self.p.supersample, noise_std=self.p.noise_std)
    self.word_spec = fseq.WordSelectionSpec(self.seq_spec, self.p.word_table_seed)
    m = c.model
    self.model = image_sequence.ImageSequenceModel(
        input_kind=self.p.input, n_labels=self.p.label_vocab,
        factor_sizes=tuple(self.p.factor_sizes), n_words=self.word_spec.n_words,
        depth=m.depth, d_model=m.d_model, n_heads=m.n_heads,
        mlp_ratio=m.mlp_ratio, max_len=m.max_len,
        encoder_channels=tuple(m.encoder_channels),
        encoder_readout=m.encoder_readout,
        heads_layer=self.p.weights_loss_layer % (m.depth + 1))
    self.n_layers = m.depth + 1
    self.factor_names = shapes.factor_names(len(self.p.factor_sizes),
                                             self.p.input == "words")

  def validate(self, n_devices: int) -> None:
    del n_devices  # the trainer checks batch_size against the devices
    p, m = self.p, self.c.model
    check(p.input in image_sequence.INPUTS, "plateau.input",
           f"unknown '{p.input}' (choose from {', '.join(image_sequence.INPUTS)})")
    check(p.source in SOURCES, "plateau.source",
           f"unknown '{p.source}' (choose from {', '.join(SOURCES)})")
    renamed(self.seq_spec.validate, "sequence.", "plateau.")
    if p.input == "pixels":
      renamed(self.shapes_spec.validate, "shapes.", "plateau.")
    if p.source == "shapes3d":
      check(p.input == "pixels", "plateau.source", "shapes3d needs input='pixels'")
      check(tuple(p.factor_sizes) == shapes.FACTOR_SIZES, "plateau.factor_sizes",
             f"shapes3d has {shapes.FACTOR_SIZES}")
      shapes3d.check_available(p.shapes3d_dir)
    check(m.d_model % m.n_heads == 0, "model.n_heads",
           f"must divide d_model={m.d_model}")
    check(m.max_len >= 2 * p.context_len, "model.max_len",
           f"{m.max_len} positions, but sequences have {2 * p.context_len} tokens")
    check(m.encoder_readout in image_sequence.ENCODER_READOUTS,
           "model.encoder_readout", "choose flatten or mean")
    check(p.context_probe_target in PROBE_TARGETS, "plateau.context_probe_target",
           f"unknown '{p.context_probe_target}' (choose from {', '.join(PROBE_TARGETS)})")
    check(p.context_probe_target != "factor" or len(p.hidden_factors) > 1,
           "plateau.context_probe_target", "'factor' needs two or more "
           "hidden factors (with one, use 'label')")
    for field in ("icl_min_position", "context_probe_position"):
      check(0 <= p[field] < p.context_len, f"plateau.{field}",
             f"must be in [0, {p.context_len})")
    check(all(0 <= i < p.context_len for i in p.report_positions),
           "plateau.report_positions", f"must be in [0, {p.context_len})")
    layers = (p.weights_loss_layer, p.weights_probe_layer,
              p.context_probe_layer) + tuple(p.probe_layers)
    check(all(-self.n_layers <= k < self.n_layers for k in layers),
           "plateau.probe_layers", f"layers must be in [-{self.n_layers}, "
           f"{m.depth}] (weights_loss_layer, *_probe_layer, probe_layers)")
    check(p.probe_method in ("softmax", "ridge"), "plateau.probe_method",
           "choose softmax or ridge")
    for field in ("icl_sequences", "iwl_sequences", "context_probe_train",
                  "weights_probe_train", "weights_probe_test", "eval_batch_size"):
      check(p[field] > 0, f"plateau.{field}", "must be positive")
    check(p.probe_method != "softmax" or p.probe_batch_size <= min(
        p.context_probe_train, p.weights_probe_train), "plateau.probe_batch_size",
           "exceeds the probe training sets")
    check(p.noise_std >= 0, "plateau.noise_std", "must be >= 0")
    for member in config_lib.members(self.c):
      h = member.hyper
      check(all(k in h for k in HYPER), "hyper",
             f"the plateau task needs fields {', '.join(HYPER)}")
      check(h["weights_warmup"] >= 0, "hyper.weights_warmup", "must be >= 0")
      check(0 <= h["fixed_fraction"] <= 1, "hyper.fixed_fraction",
             "must be in [0, 1]")
      check(h["weights_loss"] >= 0, "hyper.weights_loss", "must be >= 0")

  # --- data -----------------------------------------------------------------
  def _sample(self, key, n: int, fixed_fraction) -> dict:
    """n labelled sequences: factors, labels, hidden index (+ words)."""
    if self.p.input == "words":
      seqs = fseq.sample_word_sequences(key, self.word_spec, n, fixed_fraction)
      words, seqs = seqs.words, seqs.labelled
    else:
      seqs = fseq.sample_factor_sequences(key, self.seq_spec, n, fixed_fraction)
      words = None
    hidden = jnp.asarray(self.seq_spec.hidden_factors)
    record = {"factors": seqs.factors, "labels": seqs.labels,
              "hidden": jnp.argmax(hidden == seqs.hidden_factor[:, None], -1),
              "seen": fseq.value_seen_before(seqs), "is_fixed": seqs.is_fixed}
    if words is not None:
      record["words"] = words
    return record

  def _inputs(self, key, record: dict, consts):
    """Model inputs of a record's items: images, noisy one-hots or word ids."""
    factors = record["factors"]
    if self.p.input == "words":
      return record["words"]
    if self.p.input == "onehot":
      hots = fseq.factor_one_hots(factors, self.seq_spec.factor_sizes)
      if self.p.noise_std > 0:
        hots = hots + self.p.noise_std * jax.random.normal(key, hots.shape)
      return hots
    if self.p.source == "shapes3d":
      rows = jnp.ravel_multi_index(tuple(jnp.moveaxis(factors, -1, 0)),
                                   self.seq_spec.factor_sizes, mode="clip")
      images = consts[rows].astype(jnp.float32) / 255.0
      if self.p.noise_std > 0:
        noise = jax.random.normal(key, images.shape)
        images = jnp.clip(images + self.p.noise_std * noise, 0.0, 1.0)
      return images
    return shapes.render_images(key, factors, self.shapes_spec)

  def constants(self, sharding):
    if self.p.input != "pixels" or self.p.source != "shapes3d":
      return None
    images = shapes3d.load_images(self.p.shapes3d_dir, self.p.image_size)
    return jax.device_put(images, sharding)

  def sample_batch(self, key, consts, hyper, step) -> dict:
    fixed_fraction = jnp.where(step < hyper["weights_warmup"], 1.0,
                               hyper["fixed_fraction"])
    k_seqs, k_inputs = jax.random.split(key)
    record = self._sample(k_seqs, self.batch_size, fixed_fraction)
    return {"inputs": self._inputs(k_inputs, record, consts),
            "labels": record["labels"], "factors": record["factors"],
            "is_fixed": record["is_fixed"]}

  # --- training ---------------------------------------------------------------
  def init_weights(self, key) -> dict:
    record = jax.eval_shape(lambda: self._sample(jax.random.PRNGKey(0), 1, 0.0))
    record = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), record)
    consts = (jnp.zeros((1, self.p.image_size, self.p.image_size, 3), jnp.uint8)
              if self.p.source == "shapes3d" else None)
    inputs = self._inputs(jax.random.PRNGKey(0), record, consts)
    return {"params": self.model.init(key, inputs, record["labels"])["params"]}

  def loss(self, weights, batch, hyper, step):
    del step
    out = self.model.apply({"params": weights["params"]}, batch["inputs"],
                           batch["labels"])
    ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"],
                                                         batch["labels"])
    factor_ce = jnp.mean(jnp.stack([
        optax.softmax_cross_entropy_with_integer_labels(
            logits, batch["factors"][..., f]).mean()
        for f, logits in enumerate(out["factor_logits"])]))
    label_loss = ce.mean()
    total = label_loss + hyper["weights_loss"] * factor_ce
    acc = jnp.mean(jnp.argmax(out["logits"], -1) == batch["labels"])
    return total, ({"loss": total, "label_loss": label_loss, "acc": acc,
                    "factor_loss": factor_ce,
                    "fixed_share": batch["is_fixed"].mean()}, None)

  # --- evaluation ---------------------------------------------------------------
  def _eval_keys(self):
    return jax.random.split(jax.random.PRNGKey(self.eval_seed), 4)

  def _sequence_set(self, part: str):
    """key -> the part's rows of one draw from the eval seed of icl |
    context_train (D_rnd) | iwl (D_fix) sequences (so no two parts share a
    sequence): icl, iwl, or context_probe = icl then context_train; with
    the key for its inputs' noise."""
    def fixed_set(key):
      p = self.p
      n = p.icl_sequences + p.context_probe_train + p.iwl_sequences
      record = self._sample(self._eval_keys()[0], n, p.iwl_sequences / n)
      order = jnp.argsort(record.pop("is_fixed"), stable=True)  # D_fix last
      lo, hi = {"icl": (0, p.icl_sequences),
                "context_probe": (0, p.icl_sequences + p.context_probe_train),
                "iwl": (p.icl_sequences + p.context_probe_train, n)}[part]
      return dict(jax.tree.map(lambda x: x[order][lo:hi], record), noise_key=key)
    return fixed_set

  def _probe_set(self, key) -> dict:
    """probe_train | probe_test images (from the eval seed's own keys)."""
    del key
    keys = self._eval_keys()
    return dict(self._probe_items(keys[2]), noise_key=keys[3])

  def _probe_items(self, key) -> dict:
    """weights_probe_train then weights_probe_test single images (factors,
    + word ids). Words: the two parts come from disjoint word sets (80% /
    20%), so a probe cannot memorise word ids."""
    n_train, n_test = self.p.weights_probe_train, self.p.weights_probe_test
    if self.p.input != "words":
      return {"factors": shapes.sample_factors(
          key, self.seq_spec.factor_sizes, (n_train + n_test, 1))}
    n_words = self.word_spec.n_words
    order = np.random.default_rng(self.eval_seed).permutation(n_words)
    split = int(0.8 * n_words)
    pools = (jnp.asarray(order[:split]), jnp.asarray(order[split:]))
    words = jnp.concatenate([
        pool[jax.random.randint(k, (n, 1), 0, pool.size)] for k, n, pool in
        zip(jax.random.split(key), (n_train, n_test), pools)])
    table = jnp.asarray(fseq.word_attribute_table(self.word_spec))
    return {"factors": table[words], "words": words}

  def _chunked(self, fn, record: dict, chunk: int):
    """fn(key, record chunk) over chunks of the leading axis (padded), joined."""
    key = record["noise_key"]
    items = {k: v for k, v in record.items() if k != "noise_key"}
    n = jax.tree.leaves(items)[0].shape[0]
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    items = jax.tree.map(lambda x: jnp.concatenate(
        [x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape(
            (n_chunks, chunk) + x.shape[1:]), items)
    keys = jax.random.split(key, n_chunks)
    out = jax.lax.map(lambda args: fn(*args), (keys, items))
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:n], out)

  def _layer(self, k: int) -> int:
    return k % self.n_layers

  def _sequence_outputs(self, params, consts, record: dict):
    """Correct predictions, per-position CE and the context-probe features."""
    layer = self._layer(self.p.context_probe_layer)

    def fn(key, items):
      out = self.model.apply({"params": params},
                             self._inputs(key, items, consts), items["labels"])
      logits = out["logits"]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, items["labels"])
      stream = image_sequence.image_tokens(out["streams"][layer])
      return (jnp.argmax(logits, -1) == items["labels"], ce,
              stream[:, self.p.context_probe_position])

    return self._chunked(fn, record, self.p.eval_batch_size)

  def _sequence_metrics(self, correct, ce, seen) -> dict:
    late = slice(self.p.icl_min_position, None)
    metrics = {"acc": correct[:, late].mean(), "loss": ce.mean(),
               "acc_seen": (correct[:, late] * seen[:, late]).sum()
                           / jnp.maximum(seen[:, late].sum(), 1)}
    for i in self.p.report_positions:
      metrics[f"acc_pos{i}"] = correct[:, i].mean()
    return metrics

  def _probe_features(self, params, consts, record: dict):
    """(2 variants, layers, n, d) streams of each image alone at position 0:
    (a) attention outputs zeroed, (b) attention on."""
    layers = self._probe_layers()

    def fn(key, items):
      inputs = self._inputs(key, items, consts)
      labels = jnp.zeros((inputs.shape[0], 0), jnp.int32)
      variants = []
      for attention in (False, True):
        streams = self.model.apply({"params": params}, inputs, labels,
                                   attention=attention)["streams"]
        variants.append(jnp.stack([streams[k][:, 0] for k in layers], axis=1))
      return jnp.stack(variants, axis=1)   # (chunk, 2, layers, d)

    features = self._chunked(fn, record,
                             self.p.eval_batch_size * self.p.context_len)
    return jnp.moveaxis(features, 0, 2)

  def _probe_layers(self) -> tuple[int, ...]:
    chosen = self.p.probe_layers or tuple(range(self.n_layers))
    return tuple(sorted({self._layer(k) for k in chosen}
                        | {self._layer(self.p.weights_probe_layer)}))

  def _fit_kwargs(self) -> dict:
    if self.p.probe_method == "ridge":
      return {"method": "ridge", "l2": self.p.probe_l2}
    return {"method": "softmax", "epochs": self.p.probe_epochs,
            "batch_size": self.p.probe_batch_size,
            "learning_rate": self.p.probe_lr}

  def _sequence_eval(self, weights, consts, record) -> dict:
    """icl / iwl: accuracies and loss of the set's sequences."""
    correct, ce, _ = self._sequence_outputs(weights["params"], consts, record)
    return self._sequence_metrics(correct, ce, record["seen"])

  def _context_probe_eval(self, weights, consts, record) -> dict:
    """A probe fitted on the context_train rows, scored on the icl rows."""
    p = self.p
    _, _, features = self._sequence_outputs(weights["params"], consts, record)
    target = (record["hidden"] if p.context_probe_target == "factor"
              else record["labels"][:, p.context_probe_position])
    icl, train = slice(0, p.icl_sequences), slice(p.icl_sequences, None)
    return {"acc": self._context_probe(features[train], target[train],
                                       features[icl], target[icl])}

  def _weights_probe_eval(self, weights, consts, record) -> dict:
    return self._weights_probe(weights["params"], consts, record)

  def _context_probe(self, train_x, train_y, test_x, test_y):
    train_x, test_x = plateau_lib.standardise(train_x, test_x)
    n_classes = plateau_lib.context_probe_classes(self.p)
    kwargs = self._fit_kwargs()
    if kwargs.pop("method") == "ridge":
      probe = plateau_lib.fit_ridge_probe(train_x, train_y, n_classes, **kwargs)
    else:
      probe = plateau_lib.fit_softmax_probe(
          jax.random.PRNGKey(self.eval_seed), train_x, train_y, n_classes,
          **kwargs)
    return plateau_lib.probe_accuracy(probe, test_x, test_y)

  def _weights_probe(self, params, consts, record: dict) -> dict:
    n_train = self.p.weights_probe_train
    features = self._probe_features(params, consts, record)
    train, test = plateau_lib.standardise(features[..., :n_train, :],
                                          features[..., n_train:, :])
    train_factors = record["factors"][:n_train, 0]
    test_factors = record["factors"][n_train:, 0]

    def one(train_x, test_x):
      return plateau_lib.factor_probe_accuracies(
          jax.random.PRNGKey(self.eval_seed), train_x, train_factors, test_x,
          test_factors, self.seq_spec.factor_sizes, **self._fit_kwargs())

    varying = [f for f, n in enumerate(self.seq_spec.factor_sizes) if n > 1]
    acc = jax.vmap(jax.vmap(one))(train, test)[..., varying]  # (2, layers, F)
    layers = self._probe_layers()
    headline = layers.index(self._layer(self.p.weights_probe_layer))
    metrics = {}
    for v, variant in enumerate("ab"):
      metrics[variant] = acc[v, headline].mean()
      for i, f in enumerate(varying):
        metrics[f"{variant}_{self.factor_names[f]}"] = acc[v, headline, i]
      for i, k in enumerate(layers):
        metrics[f"{variant}_L{k}"] = acc[v, i].mean()
    return metrics

