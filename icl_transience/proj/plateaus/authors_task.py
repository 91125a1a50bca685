"""Learning plateaus as Fu et al.'s code runs them: frozen item embeddings.

Items are fixed vectors of the Shapes3D images (proj/plateaus/embeddings.py:
the authors' npz, or a seeded stand-in, as a device table; or the procedural
renderer's pixels flattened, rendered where a batch is drawn), read in by one linear layer together with the label one-hots
(proj/plateaus/readin_model.py). Sequences are 40 (item, label) pairs of
distinct images of one split, labelled through a pool of maps
(proj/plateaus/pool_sequences.py); training reads a fixed set of sequences
in a fresh order every epoch (or, with train_sequences = 0, a fresh stream).
The loss is the label cross-entropy at every item position, plus per member
(c.hyper):
  context_loss    lambda: CE of the hidden factor from the read-out's extra
                  dims at every item position (the authors' context extra loss)
  weights_loss    lambda: mean CE of every factor value of the item from the
                  read-out's extra dims (the authors' extra weights loss)
  weights_warmup  W steps of D_fix (map 0) first          (our addition)
  fixed_fraction  a D_fix share of every batch            (our addition)

Evaluators (fixed sets from plateau.dataset_seed and c.eval_seed):
  icl            held-out test sequences, the pool's maps: acc_pos<i> at every
                 item position i (what the authors' eval saves), acc (mean
                 over positions >= icl_min_position: our plateau metric's
                 curve), acc_all (every position), loss
  iwl            the same test sequences read under map 0 (D_fix)
  weights_probe  one linear layer d -> n_factors x 15 on the stream after
                 block weights_probe_block at every item position, trained
                 jointly (mean CE over the factors) in one pass of Adam over
                 the first weights_probe_sequences training sequences and
                 scored on held-out test sequences: `pass` with every
                 attention sub-layer a pass-through (the authors' probe),
                 `a` with attention outputs zeroed and `b` with each item
                 alone at position 0 (our two variants); <v>_<factor> per
                 factor. Mean over the factors that vary.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_transience import config as config_lib
from icl_transience.proj.plateaus import embeddings
from icl_transience.proj.plateaus import pool_sequences as pool
from icl_transience.proj.plateaus import readin_model
from icl_transience.proj.plateaus import shapes
from icl_transience.errors import UserError

ITEMS = ("embedding", "pixels")
PROBE_VARIANTS = {"pass": "pass", "a": "zero", "b": "alone"}
HYPER = ("context_loss", "weights_loss", "weights_warmup", "fixed_fraction")


class AuthorsPlateauTask:
  """The frozen-embedding plateau task (see the module docstring)."""
  shown = {"icl": "acc", "weights_probe": "pass"}

  def __init__(self, c):
    self.c, self.p = c, c.plateau
    p, m = self.p, c.model
    self.batch_size = c.batch_size
    self.factor_sizes = tuple(p.factor_sizes)
    self.spec = pool.PoolSpec(
        factor_sizes=self.factor_sizes, hidden_factors=tuple(p.hidden_factors),
        context_len=p.context_len, n_maps=p.n_maps,
        train_fraction=p.train_fraction)
    self.standin = embeddings.StandInSpec(
        factor_sizes=self.factor_sizes, dim=p.item_dim,
        entangle=p.standin_entangle, noise=p.standin_noise, seed=p.standin_seed)
    self.shapes_spec = shapes.ShapesSpec(image_size=p.image_size,
                                         factor_sizes=self.factor_sizes)
    self._file = None
    self.model = readin_model.ReadInTransformer(
        n_classes=p.n_classes, n_hidden=len(self.factor_sizes),
        factor_sizes=self.factor_sizes, depth=m.depth, d_model=m.d_model,
        n_heads=m.n_heads, mlp_ratio=m.mlp_ratio, max_len=m.max_len)
    self.factor_names = (shapes.FACTOR_NAMES if len(self.factor_sizes) == 6
                         else tuple(f"factor{i}" for i in range(len(self.factor_sizes))))

  # --- config ---------------------------------------------------------------
  def validate(self, n_devices: int) -> None:
    del n_devices
    p, m = self.p, self.c.model
    _check(p.item_source in ITEMS, "plateau.item_source",
           f"unknown '{p.item_source}' (choose from {', '.join(ITEMS)})")
    _check(not (p.embeddings and p.item_source != "embedding"), "plateau.embeddings",
           "a file of embeddings needs plateau.item_source='embedding'")
    self.spec.validate()
    if p.item_source == "pixels":
      self.shapes_spec.validate()
    elif not p.embeddings:
      self.standin.validate()
    _check(max(self.factor_sizes) <= min(p.n_classes, self.item_dim()),
           "plateau.n_classes", f"the read-out's {p.n_classes} classes and the "
           f"{self.item_dim()} item dims must hold the largest factor's ids")
    _check(m.d_model % m.n_heads == 0, "model.n_heads",
           f"must divide d_model={m.d_model}")
    _check(m.max_len >= 2 * p.context_len, "model.max_len",
           f"{m.max_len} positions, but sequences have {2 * p.context_len} tokens")
    _check(0 <= p.weights_probe_block < m.depth, "plateau.weights_probe_block",
           f"must be in [0, {m.depth})")
    _check(0 <= p.icl_min_position < p.context_len, "plateau.icl_min_position",
           f"must be in [0, {p.context_len})")
    _check(p.train_sequences == 0 or p.train_sequences >= self.batch_size,
           "plateau.train_sequences", "0 (a fresh stream) or at least a batch")
    _check(set(p.weights_probe_variants) <= set(PROBE_VARIANTS)
           and p.weights_probe_variants, "plateau.weights_probe_variants",
           f"choose from {', '.join(PROBE_VARIANTS)}")
    for field in ("test_sequences", "weights_probe_sequences", "eval_batch_size",
                  "probe_batch_size"):
      _check(p[field] > 0, f"plateau.{field}", "must be positive")
    _check(p.weights_probe_test <= p.test_sequences, "plateau.weights_probe_test",
           "exceeds plateau.test_sequences")
    for member in config_lib.members(self.c):
      h = member.hyper
      _check(all(k in h for k in HYPER), "hyper",
             f"this task needs fields {', '.join(HYPER)}")
      for k in ("context_loss", "weights_loss", "weights_warmup"):
        _check(h[k] >= 0, f"hyper.{k}", "must be >= 0")
      _check(0 <= h["fixed_fraction"] <= 1, "hyper.fixed_fraction",
             "must be in [0, 1]")
    if p.embeddings:
      self._file = embeddings.load_file(p.embeddings, self.factor_sizes)

  def item_dim(self) -> int:
    if self.p.item_source == "pixels":
      return 3 * self.p.image_size ** 2
    if self._file is not None:
      return self._file.shape[1]
    return self.p.item_dim

  # --- data -----------------------------------------------------------------
  def _pool(self):
    k_split, k_maps, k_train, k_test = jax.random.split(
        jax.random.PRNGKey(self.p.dataset_seed), 4)
    train_rows, test_rows = pool.image_split(k_split, self.spec)
    return train_rows, test_rows, pool.map_pool(k_maps, self.spec), k_train, k_test

  def constants(self, sharding):
    def build():
      train_rows, _, maps, k_train, _ = self._pool()
      n = self.p.train_sequences
      fixed = pool.sample_sequences(k_train, train_rows, n, self.spec) if n else None
      return {"train_rows": train_rows, "maps": maps, "train_set": fixed}
    consts = jax.jit(build)()
    if self._file is not None:
      consts["table"] = jnp.asarray(self._file)
    elif self.p.item_source == "embedding":
      consts["table"] = jax.jit(embeddings.standin_table, static_argnums=0)(
          self.standin)
    return jax.device_put(consts, sharding)

  def items(self, rows, consts) -> jax.Array:
    """(..., D) float32 item vectors of image rows."""
    if self.p.item_source == "pixels":
      factors = embeddings.row_factors(rows, self.factor_sizes)
      images = shapes.render(factors, self.shapes_spec)
      return images.reshape(rows.shape + (-1,))
    return consts["table"][rows]

  def _training_sequences(self, key, consts, step) -> pool.Sequences:
    if consts["train_set"] is None:
      return pool.sample_sequences(key, consts["train_rows"], self.batch_size,
                                   self.spec)
    order_key = jax.random.PRNGKey(self.p.dataset_seed + 1)
    index = pool.epoch_order(order_key, step, self.batch_size,
                             self.p.train_sequences)
    return pool.take(consts["train_set"], index)

  def sample_batch(self, key, consts, hyper, step) -> dict:
    k_seqs, k_fixed = jax.random.split(key)
    fixed_fraction = jnp.where(step < hyper["weights_warmup"], 1.0,
                               hyper["fixed_fraction"])
    seqs = pool.with_fixed_map(k_fixed, self._training_sequences(
        k_seqs, consts, step), fixed_fraction)
    return {"items": self.items(seqs.rows, consts),
            "labels": pool.labels(seqs, consts["maps"], self.spec),
            "hidden": seqs.hidden,
            "factors": embeddings.row_factors(seqs.rows, self.factor_sizes),
            "is_fixed": seqs.map_id == 0}

  # --- training ---------------------------------------------------------------
  def init_weights(self, key) -> dict:
    items = jnp.zeros((1, self.p.context_len, self.item_dim()), jnp.float32)
    labels = jnp.zeros((1, self.p.context_len), jnp.int32)
    return {"params": self.model.init(key, items, labels)["params"]}

  def losses(self, params, batch) -> dict:
    """Per-sequence means of the three cross-entropies and the correct mask."""
    out = self.model.apply({"params": params}, batch["items"], batch["labels"])
    ce = optax.softmax_cross_entropy_with_integer_labels
    hidden = jnp.broadcast_to(batch["hidden"][:, None], batch["labels"].shape)
    return {"label": ce(out["logits"], batch["labels"]),
            "context": ce(out["context_logits"], hidden),
            "factor": ce(out["factor_logits"], batch["factors"]).mean(-1),
            "correct": jnp.argmax(out["logits"], -1) == batch["labels"]}

  def loss(self, weights, batch, hyper, step):
    del step
    terms = self.losses(weights["params"], batch)
    label, context, factor = (terms[k].mean() for k in ("label", "context", "factor"))
    total = label + hyper["context_loss"] * context + hyper["weights_loss"] * factor
    return total, ({"loss": total, "label_loss": label, "context_loss": context,
                    "factor_loss": factor, "acc": terms["correct"].mean(),
                    "fixed_share": batch["is_fixed"].mean()}, None)

  # --- evaluation ---------------------------------------------------------------
  def eval_sets(self, sharding) -> dict:
    def build():
      _, test_rows, _, _, k_test = self._pool()
      return pool.sample_sequences(jax.random.fold_in(k_test, self.c.eval_seed),
                                   test_rows, self.p.test_sequences, self.spec)
    return jax.device_put(jax.jit(build)(), sharding)

  def _batches(self, seqs: pool.Sequences, size: int) -> pool.Sequences:
    """(n_batches, size, ...) of the first whole batches (at least one)."""
    n = seqs.hidden.shape[0]
    size = min(size, n)
    keep = n // size * size
    return jax.tree.map(lambda x: x[:keep].reshape((-1, size) + x.shape[1:]), seqs)

  def _batch(self, seqs, consts, fixed: bool = False) -> dict:
    if fixed:
      seqs = seqs._replace(map_id=jnp.zeros_like(seqs.map_id))
    return {"items": self.items(seqs.rows, consts),
            "labels": pool.labels(seqs, consts["maps"], self.spec),
            "hidden": seqs.hidden,
            "factors": embeddings.row_factors(seqs.rows, self.factor_sizes)}

  def _sequence_metrics(self, params, consts, seqs, fixed: bool) -> dict:
    def one(batch_seqs):
      terms = self.losses(params, self._batch(batch_seqs, consts, fixed))
      return terms["correct"].mean(0), terms["label"].mean()
    correct, ce = jax.lax.map(one, self._batches(seqs, self.p.eval_batch_size))
    per_position = correct.mean(0)
    metrics = {"acc": per_position[self.p.icl_min_position:].mean(),
               "acc_all": per_position.mean(), "loss": ce.mean()}
    for i in range(self.p.context_len):
      metrics[f"acc_pos{i}"] = per_position[i]
    return metrics

  def probe_features(self, params, items, labels, variant: str) -> jax.Array:
    """(B, L, d) stream after block weights_probe_block at the item positions."""
    k = self.p.weights_probe_block
    if variant == "alone":
      b, length = items.shape[:2]
      flat = items.reshape((b * length, 1) + items.shape[2:])
      streams = self.model.apply({"params": params}, flat,
                                 jnp.zeros((b * length, 0), jnp.int32),
                                 stop_after=k)["streams"]
      return streams[k + 1][:, 0].reshape(b, length, -1)
    streams = self.model.apply({"params": params}, items, labels,
                               attention=variant, stop_after=k)["streams"]
    return streams[k + 1][:, 0::2]

  def _weights_probe(self, params, consts, eval_seqs) -> dict:
    p = self.p
    n_factors, n_values = len(self.factor_sizes), max(self.factor_sizes)
    if consts["train_set"] is None:
      train = pool.sample_sequences(jax.random.PRNGKey(self.c.eval_seed),
                                    consts["train_rows"],
                                    p.weights_probe_sequences, self.spec)
    else:
      train = jax.tree.map(lambda x: x[:p.weights_probe_sequences],
                           consts["train_set"])
    test = jax.tree.map(lambda x: x[:p.weights_probe_test], eval_seqs)
    optimizer = optax.adam(p.probe_lr)
    varying = [f for f, n in enumerate(self.factor_sizes) if n > 1]
    metrics = {}
    for name in p.weights_probe_variants:
      variant = PROBE_VARIANTS[name]

      def features(seqs, variant=variant):
        batch = self._batch(seqs, consts)
        x = self.probe_features(params, batch["items"], batch["labels"], variant)
        return x.reshape(-1, x.shape[-1]), batch["factors"].reshape(-1, n_factors)

      def probe_loss(probe, x, y):
        logits = (x @ probe["w"] + probe["b"]).reshape(-1, n_factors, n_values)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

      def train_step(carry, seqs, features=features, probe_loss=probe_loss):
        probe, opt_state = carry
        x, y = features(seqs)
        grads = jax.grad(probe_loss)(probe, jax.lax.stop_gradient(x), y)
        updates, opt_state = optimizer.update(grads, opt_state, probe)
        return (optax.apply_updates(probe, updates), opt_state), None

      d = self.c.model.d_model
      probe = {"w": jnp.zeros((d, n_factors * n_values)),
               "b": jnp.zeros((n_factors * n_values,))}
      (probe, _), _ = jax.lax.scan(train_step, (probe, optimizer.init(probe)),
                                   self._batches(train, p.probe_batch_size))

      def score(seqs, features=features, probe=probe):
        x, y = features(seqs)
        logits = (x @ probe["w"] + probe["b"]).reshape(-1, n_factors, n_values)
        return (jnp.argmax(logits, -1) == y).mean(0)

      acc = jax.lax.map(score, self._batches(test, p.eval_batch_size)).mean(0)
      metrics[name] = acc[jnp.asarray(varying)].mean()
      for f in varying:
        metrics[f"{name}_{self.factor_names[f]}"] = acc[f]
    return metrics

  def evaluate(self, weights, consts, eval_sets) -> dict:
    params = weights["params"]
    return {"icl": self._sequence_metrics(params, consts, eval_sets, False),
            "iwl": self._sequence_metrics(params, consts, eval_sets, True),
            "weights_probe": self._weights_probe(params, consts, eval_sets)}


def _check(ok: bool, field: str, message: str):
  if not ok:
    raise UserError(f"{field}: {message}")
