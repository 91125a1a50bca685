"""Learning plateaus as Fu et al.'s code runs them: frozen item embeddings.

Items are fixed vectors of the Shapes3D images (proj/plateaus/embeddings.py:
the authors' npz, or a seeded stand-in, as a device table; or the procedural
renderer's pixels flattened, rendered where a batch is drawn), read in by
one linear layer together with the label one-hots
(proj/plateaus/readin_model.py). Sequences are 40 (item, label) pairs of
distinct images of one split, labelled through a pool of maps
(proj/plateaus/pool_sequences.py); training reads a fixed set of sequences
in a fresh order every epoch (or, with train_sequences = 0, a fresh stream).
All members read the fixed set in the same order (from dataset_seed); a
member's data_seed draws only its D_fix rows, so seeds vary the
initialisation. The loss is the label cross-entropy at every item position
over the n_classes (768) read-out, plus per member (c.hyper), as the
authors' code reads them off the same read-out with E = extra_dims_start
(128):
  context_loss    lambda: CE of the hidden factor over read-out dims E.. at
                  every item position (their context extra loss)
  weights_loss    lambda: mean over the factors of the CE of the item's value
                  over dims E + f*15 .. E + (f+1)*15 (their extra weights loss)
                  With either on, the label CE is over dims ..E only; the two
                  share dims, so a member uses one or the other.
  weights_warmup  W steps of D_fix (map 0) first          (our addition)
  fixed_fraction  a D_fix share of every batch            (our addition)

Evaluators (fixed sets from plateau.dataset_seed and c.eval_seed; labels
predicted over read-out dims ..E; whole batches of eval_batch_size):
  icl            held-out test sequences, the pool's maps: acc_pos<i> at every
                 item position i (what the authors' eval saves), acc (mean
                 over positions >= icl_min_position: our plateau metric's
                 curve), acc_all (every position), loss
  iwl            the same test sequences read under map 0 (D_fix)
  weights_probe  proj/plateaus/authors_probe.py on the stream after block
                 weights_probe_block, trained on the first
                 weights_probe_sequences training sequences, scored on the
                 first weights_probe_test test sequences: `pass` (the
                 authors'), `a`, `b` (ours); <v>_<factor> per factor; the
                 mean over the factors that vary.
"""
import functools
import os

import jax
import jax.numpy as jnp
import optax

from icl_transience import config as config_lib
from icl_transience import evaluators
from icl_transience.proj.plateaus import authors_probe
from icl_transience.proj.plateaus import embeddings
from icl_transience.proj.plateaus import pool_sequences as pool
from icl_transience.proj.plateaus import readin_model
from icl_transience.proj.plateaus import shapes
from icl_transience.errors import UserError, check

ITEMS = ("embedding", "pixels")
HYPER = ("context_loss", "weights_loss", "weights_warmup", "fixed_fraction")


@functools.lru_cache(maxsize=1)
def _read_file(path: str, stamp: tuple, factor_sizes: tuple):
  del stamp  # part of the cache key: a changed file is read again
  return embeddings.load_file(path, factor_sizes)


class AuthorsPlateauTask:
  """The frozen-embedding plateau task (see the module docstring)."""
  shown = {"icl": "acc", "weights_probe": "pass"}

  def __init__(self, c):
    self.c, self.p = c, c.plateau
    self.evaluators = {
        "icl": evaluators.Evaluator(self._test_set, functools.partial(
            self._sequence_eval, False)),
        "iwl": evaluators.Evaluator(self._test_set, functools.partial(
            self._sequence_eval, True)),
        "weights_probe": evaluators.Evaluator(self._probe_sets,
                                              self._weights_probe_eval)}
    p, m = self.p, c.model
    self.batch_size = c.batch_size
    self.factor_sizes = tuple(p.factor_sizes)
    self.n_values = max(self.factor_sizes)
    self.extra = p.extra_dims_start
    self.spec = pool.PoolSpec(
        factor_sizes=self.factor_sizes, hidden_factors=tuple(p.hidden_factors),
        context_len=p.context_len, n_maps=p.n_maps,
        train_fraction=p.train_fraction)
    self.standin = embeddings.StandInSpec(
        factor_sizes=self.factor_sizes, dim=p.item_dim,
        entangle=p.standin_entangle, noise=p.standin_noise, seed=p.standin_seed)
    self.shapes_spec = shapes.ShapesSpec(image_size=p.image_size,
                                         factor_sizes=self.factor_sizes)
    self.model = readin_model.ReadInTransformer(
        n_classes=p.n_classes, depth=m.depth, d_model=m.d_model,
        n_heads=m.n_heads, mlp_ratio=m.mlp_ratio, max_len=m.max_len)
    self.factor_names = shapes.factor_names(len(self.factor_sizes))

  # --- config ---------------------------------------------------------------
  def validate(self, n_devices: int) -> None:
    del n_devices
    p, m, c = self.p, self.c.model, self.c
    check(p.item_source in ITEMS, "plateau.item_source",
           f"unknown '{p.item_source}' (choose from {', '.join(ITEMS)})")
    check(not (p.embeddings and p.item_source != "embedding"), "plateau.embeddings",
           "a file of embeddings needs plateau.item_source='embedding'")
    self.spec.validate()
    if p.item_source == "pixels":
      try:
        self.shapes_spec.validate()
      except UserError as e:
        raise UserError("plateau." + str(e).removeprefix("shapes.")) from e
    elif not p.embeddings:
      self.standin.validate()
    n_extra = len(self.factor_sizes) * self.n_values
    check(self.n_values <= self.extra <= p.n_classes - n_extra,
           "plateau.extra_dims_start", f"{self.extra}: the labels need dims "
           f"0..{self.n_values - 1} before it and the weights loss {n_extra} "
           f"dims after it, in the {p.n_classes} read-out classes")
    check(self.n_values <= self.item_dim(), "plateau.item_dim",
           f"the label one-hots need {self.n_values} of the item dims")
    check(m.d_model % m.n_heads == 0, "model.n_heads",
           f"must divide d_model={m.d_model}")
    check(m.max_len >= 2 * p.context_len, "model.max_len",
           f"{m.max_len} positions, but sequences have {2 * p.context_len} tokens")
    check(0 <= p.weights_probe_block < m.depth, "plateau.weights_probe_block",
           f"must be in [0, {m.depth})")
    check(0 <= p.icl_min_position < p.context_len, "plateau.icl_min_position",
           f"must be in [0, {p.context_len})")
    check(p.train_sequences == 0 or p.train_sequences >= c.batch_size,
           "plateau.train_sequences", "0 (a fresh stream) or at least a batch")
    check(set(p.weights_probe_variants) <= set(authors_probe.VARIANTS)
           and p.weights_probe_variants, "plateau.weights_probe_variants",
           f"choose from {', '.join(authors_probe.VARIANTS)}")
    for field in ("test_sequences", "weights_probe_sequences", "eval_batch_size",
                  "probe_batch_size"):
      check(p[field] > 0, f"plateau.{field}", "must be positive")
    check(p.weights_probe_test <= p.test_sequences, "plateau.weights_probe_test",
           "exceeds plateau.test_sequences")
    check(p.train_sequences == 0 or p.weights_probe_sequences <= p.train_sequences,
           "plateau.weights_probe_sequences", "exceeds plateau.train_sequences")
    for member in config_lib.members(c):
      h = member.hyper
      check(all(k in h for k in HYPER), "hyper",
             f"this task needs fields {', '.join(HYPER)}")
      for k in ("context_loss", "weights_loss", "weights_warmup"):
        check(h[k] >= 0, f"hyper.{k}", "must be >= 0")
      check(not (h["context_loss"] and h["weights_loss"]), "hyper",
             "context_loss and weights_loss share the read-out's extra dims: "
             "a member uses one of them")
      check(0 <= h["fixed_fraction"] <= 1, "hyper.fixed_fraction",
             "must be in [0, 1]")

  def _file(self):
    path = self.p.embeddings
    if not path:
      return None
    stamp = ((os.stat(path).st_mtime_ns, os.stat(path).st_size)
             if os.path.isfile(path) else ())
    return _read_file(path, stamp, self.factor_sizes)

  def item_dim(self) -> int:
    if self.p.item_source == "pixels":
      return 3 * self.p.image_size ** 2
    table = self._file()
    return self.p.item_dim if table is None else table.shape[1]

  # --- data -----------------------------------------------------------------
  def _pool(self):
    k_split, k_maps, k_train, k_test = jax.random.split(
        jax.random.PRNGKey(self.p.dataset_seed), 4)
    train_rows, test_rows = pool.image_split(k_split, self.spec)
    return train_rows, test_rows, pool.map_pool(k_maps, self.spec), k_train, k_test

  def _n_epochs(self) -> int:
    return -(-self.c.total_sequences // self.p.train_sequences) + 1

  def constants(self, sharding):
    n = self.p.train_sequences

    def build():
      train_rows, _, maps, k_train, _ = self._pool()
      consts = {"train_rows": train_rows, "maps": maps, "train_set": None}
      if n:
        consts["train_set"] = pool.sample_sequences(k_train, train_rows, n,
                                                    self.spec)
        consts["epochs"] = pool.epoch_orders(
            jax.random.fold_in(jax.random.PRNGKey(self.p.dataset_seed), 1),
            self._n_epochs(), n)
      return consts

    consts = jax.jit(build)()
    table = self._file()
    if table is not None:
      consts["table"] = jnp.asarray(table)
    elif self.p.item_source == "embedding":
      consts["table"] = jax.jit(embeddings.standin_table, static_argnums=0)(
          self.standin)
    return jax.device_put(consts, sharding)

  def items(self, rows, consts) -> jax.Array:
    """(..., D) float32 item vectors of image rows."""
    if self.p.item_source == "pixels":
      factors = embeddings.row_factors(rows.reshape(-1), self.factor_sizes)
      images = jax.vmap(shapes.render, in_axes=(0, None))(factors, self.shapes_spec)
      return images.reshape(rows.shape + (-1,))
    return consts["table"][rows]

  def _batch(self, seqs: pool.Sequences, consts) -> dict:
    return {"items": self.items(seqs.rows, consts),
            "labels": pool.labels(seqs, consts["maps"], self.spec),
            "hidden": seqs.hidden,
            "factors": embeddings.row_factors(seqs.rows, self.factor_sizes),
            "is_fixed": seqs.map_id == 0}

  def sample_batch(self, key, consts, hyper, step) -> dict:
    k_seqs, k_fixed = jax.random.split(key)
    if consts["train_set"] is None:
      seqs = pool.sample_sequences(k_seqs, consts["train_rows"], self.batch_size,
                                   self.spec)
    else:
      index = pool.batch_index(consts["epochs"], step, self.batch_size)
      seqs = pool.take(consts["train_set"], index)
    fixed_fraction = jnp.where(step < hyper["weights_warmup"], 1.0,
                               hyper["fixed_fraction"])
    return self._batch(pool.with_fixed_map(k_fixed, seqs, fixed_fraction), consts)

  # --- training ---------------------------------------------------------------
  def init_weights(self, key) -> dict:
    items = jnp.zeros((1, self.p.context_len, self.item_dim()), jnp.float32)
    labels = jnp.zeros((1, self.p.context_len), jnp.int32)
    return {"params": self.model.init(key, items, labels)["params"]}

  def losses(self, params, batch) -> dict:
    """Per-position cross-entropies off the one read-out: labels over every
    class and over dims ..E, the hidden factor over dims E.., the factors
    over their 15-wide slices after E (mean over factors); correct labels
    (argmax over dims ..E)."""
    logits = self.model.apply({"params": params}, batch["items"],
                              batch["labels"])["logits"]
    ce = optax.softmax_cross_entropy_with_integer_labels
    e, n_factors = self.extra, len(self.factor_sizes)
    hidden = jnp.broadcast_to(batch["hidden"][:, None], batch["labels"].shape)
    factor_logits = logits[..., e:e + n_factors * self.n_values].reshape(
        logits.shape[:-1] + (n_factors, self.n_values))
    return {"label_all": ce(logits, batch["labels"]),
            "label": ce(logits[..., :e], batch["labels"]),
            "context": ce(logits[..., e:], hidden),
            "factor": ce(factor_logits, batch["factors"]).mean(-1),
            "correct": jnp.argmax(logits[..., :e], -1) == batch["labels"]}

  def loss(self, weights, batch, hyper, step):
    del step
    terms = self.losses(weights["params"], batch)
    extra_on = (hyper["context_loss"] > 0) | (hyper["weights_loss"] > 0)
    label = jnp.where(extra_on, terms["label"].mean(), terms["label_all"].mean())
    context, factor = terms["context"].mean(), terms["factor"].mean()
    total = label + hyper["context_loss"] * context + hyper["weights_loss"] * factor
    return total, ({"loss": total, "label_loss": label, "context_loss": context,
                    "factor_loss": factor, "acc": terms["correct"].mean(),
                    "fixed_share": batch["is_fixed"].mean()}, None)

  # --- evaluation ---------------------------------------------------------------
  def _probe_sets(self, key) -> dict:
    """The held-out test sequences (key unused: they come from the dataset
    seed and the eval seed) and, for the fresh stream, a probe training
    set of its own."""
    del key
    train_rows, test_rows, _, _, k_test = self._pool()
    sets = {"test": pool.sample_sequences(
        jax.random.fold_in(k_test, self.c.eval_seed), test_rows,
        self.p.test_sequences, self.spec)}
    if not self.p.train_sequences:
      sets["probe_train"] = pool.sample_sequences(
          jax.random.fold_in(k_test, self.c.eval_seed + 1), train_rows,
          self.p.weights_probe_sequences, self.spec)
    return sets

  def _test_set(self, key):
    return self._probe_sets(key)["test"]

  def _batches(self, seqs: pool.Sequences, size: int) -> pool.Sequences:
    """(n_batches, size, ...) of the first whole batches (at least one)."""
    n = seqs.hidden.shape[0]
    size = min(size, n)
    keep = n // size * size
    return jax.tree.map(lambda x: x[:keep].reshape((-1, size) + x.shape[1:]), seqs)

  def _sequence_metrics(self, params, consts, seqs, fixed: bool) -> dict:
    if fixed:
      seqs = seqs._replace(map_id=jnp.zeros_like(seqs.map_id))

    def one(batch_seqs):
      terms = self.losses(params, self._batch(batch_seqs, consts))
      return terms["correct"].mean(0), terms["label"].mean()
    correct, ce = jax.lax.map(one, self._batches(seqs, self.p.eval_batch_size))
    per_position = correct.mean(0)
    metrics = {"acc": per_position[self.p.icl_min_position:].mean(),
               "acc_all": per_position.mean(), "loss": ce.mean()}
    for i in range(self.p.context_len):
      metrics[f"acc_pos{i}"] = per_position[i]
    return metrics

  def _weights_probe(self, params, consts, eval_sets) -> dict:
    p = self.p
    train = eval_sets.get("probe_train")
    if train is None:
      train = jax.tree.map(lambda x: x[:p.weights_probe_sequences],
                           consts["train_set"])
    test = jax.tree.map(lambda x: x[:p.weights_probe_test], eval_sets["test"])
    varying = [f for f, n in enumerate(self.factor_sizes) if n > 1]
    metrics = {}
    for variant in p.weights_probe_variants:
      def featurise(seqs, variant=variant):
        batch = self._batch(seqs, consts)
        x = authors_probe.features(self.model, params, batch["items"],
                                   batch["labels"], variant, p.weights_probe_block)
        return (x.reshape(-1, x.shape[-1]),
                batch["factors"].reshape(-1, len(self.factor_sizes)))
      acc = authors_probe.fit_and_score(
          featurise, self._batches(train, p.probe_batch_size),
          self._batches(test, p.eval_batch_size), self.c.model.d_model,
          len(self.factor_sizes), self.n_values, p.probe_lr)
      metrics[variant] = acc[jnp.asarray(varying)].mean()
      for f in varying:
        metrics[f"{variant}_{self.factor_names[f]}"] = acc[f]
    return metrics

  def _sequence_eval(self, fixed: bool, weights, consts, test) -> dict:
    return self._sequence_metrics(weights["params"], consts, test, fixed)

  def _weights_probe_eval(self, weights, consts, sets) -> dict:
    return self._weights_probe(weights["params"], consts, sets)
