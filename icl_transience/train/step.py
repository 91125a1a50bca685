"""The training step, fused K times with lax.scan and vmapped over a population.

State (one pytree, population axis first on every leaf):
  params, opt (Adam moments), step (optimizer steps taken), data_key,
  hyper = {lr, l2} (per-member hyperparameters that keep array shapes),
  and, when grafting, frozen (the frozen model's params, never updated).
The batch of step t is drawn on device from fold_in(data_key, t), so a
resumed run sees exactly the data an uninterrupted run would.

Layouts over the 'data' mesh axis (config population_sharding):
  batch    every device holds every member; each step's batch is split over
           the devices (XLA all-reduces the gradients).
  members  the population axis is split over the devices; each device trains
           its own members on whole batches, with no communication.
  auto     members when the population divides evenly over more than one
           device, else batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from icl_transience import config as config_lib
from icl_transience.data import sequences
from icl_transience.data import sources
from icl_transience.models import graft
from icl_transience.models import transformer


# Parameter groups for selective weight decay (spec I.C.1): name fragments.
L2_GROUPS = {"all": ("",), "mlp": ("mlp_in", "mlp_out"), "attention": ("attn",),
             "embedder": ("input_proj",)}


def l2_penalty(params, form: str, group: str = "all"):
  """sum ||w|| (icl-dynamics, unsquared) or sum ||w||^2 / 2 over the leaves
  of one parameter group."""
  leaves = [w for path, w in jax.tree_util.tree_flatten_with_path(params)[0]
            if any(f in jax.tree_util.keystr(path) for f in L2_GROUPS[group])]
  if form == "norm":  # safe_norm: a zero leaf (e.g. a bias) gets gradient 0
    return sum(optax.safe_norm(w, 0.0) for w in leaves)
  return sum(0.5 * jnp.sum(w * w) for w in leaves)


def population_layout(c, n_devices: int) -> str:
  n_members = len(config_lib.members(c))
  if c.population_sharding != "auto":
    return c.population_sharding
  even = n_devices > 1 and n_members % n_devices == 0
  return "members" if even else "batch"


class Trainer:
  """Compiled functions for one config: init, fused training, evaluation."""

  def __init__(self, c, mesh):
    self.c = c
    self.mesh = mesh
    self.n_outputs = config_lib.n_outputs(c)
    self.model = transformer.build_model(c.model, self.n_outputs)
    self.spec = config_lib.train_spec(c)
    self.source_classes = c.data.n_classes  # one-hot width for 'onehot'
    self.adam = optax.scale_by_adam(c.optim.b1, c.optim.b2, c.optim.eps)
    self.use_l2 = any(m.l2 > 0 for m in config_lib.members(c))
    self.grafting = c.graft.mode != "none"
    self.replicated = NamedSharding(mesh, P())
    self.members_sharded = population_layout(c, mesh.devices.size) == "members"
    self.state_sharding = (NamedSharding(mesh, P("data")) if self.members_sharded
                           else self.replicated)
    self.train_chunk = jax.jit(self._train_chunk, donate_argnums=0)

  def weights(self, state):
    """What the forward pass reads: params, and the frozen graft model."""
    return {k: state[k] for k in ("params", "frozen") if k in state}

  def apply(self, weights, features, labels):
    return graft.forward(self.model, self.c.graft.mode, self.c.graft.layer,
                         weights["params"], weights.get("frozen"), features,
                         labels)

  # --- initialisation -------------------------------------------------------
  def _init_member(self, init_seed, data_seed, lr, l2):
    k = self.spec.context_len
    feats = jnp.zeros((1, k + 1, self._input_dim()), jnp.float32)
    labels = jnp.zeros((1, k), jnp.int32)
    params = self.model.init(jax.random.PRNGKey(init_seed), feats, labels)["params"]
    state = {"params": params, "opt": self.adam.init(params),
             "step": jnp.zeros((), jnp.int32),
             "data_key": jax.random.PRNGKey(data_seed),
             "hyper": {"lr": jnp.float32(lr), "l2": jnp.float32(l2)}}
    if self.grafting:  # a placeholder until the frozen model is loaded
      state["frozen"] = params
    return state

  def _input_dim(self):
    return (self.c.data.n_classes if self.c.data.source == "onehot"
            else sources.source_shape(self.c.data).dim)

  def init(self, members):
    """The population's initial state, laid out over the mesh."""
    arrays = [np.array([getattr(m, f) for m in members], dtype)
              for f, dtype in (("init_seed", np.uint32), ("data_seed", np.uint32),
                               ("lr", np.float32), ("l2", np.float32))]
    init = jax.jit(jax.vmap(self._init_member), out_shardings=self.state_sharding)
    return init(*arrays)

  def place(self, state):
    """The population state in this trainer's layout."""
    return jax.device_put(state, self.state_sharding)

  def abstract_state(self, members):
    """Shapes and shardings of the state, for restoring checkpoints."""
    shapes = jax.eval_shape(lambda: jax.vmap(self._init_member)(
        *(jnp.zeros((len(members),), d) for d in
          (jnp.uint32, jnp.uint32, jnp.float32, jnp.float32))))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(
        s.shape, s.dtype, sharding=self.replicated), shapes)

  # --- one optimizer step (one member) --------------------------------------
  def _loss(self, params, frozen, l2, feats, seqs):
    logits = self.apply({"params": params, "frozen": frozen}, feats, seqs.labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, seqs.target)
    loss = jnp.mean(ce)
    acc = jnp.mean(jnp.argmax(logits, -1) == seqs.target)
    total = loss
    if self.use_l2:
      total = loss + l2 * l2_penalty(params, self.c.optim.l2_form,
                                     self.c.optim.l2_on)
    return total, (loss, acc)

  def _update(self, state, feats, seqs):
    grad_fn = jax.grad(self._loss, has_aux=True)
    grads, (loss, acc) = grad_fn(state["params"], state.get("frozen"),
                                 state["hyper"]["l2"], feats, seqs)
    updates, opt = self.adam.update(grads, state["opt"], state["params"])
    lr = state["hyper"]["lr"]
    params = jax.tree.map(lambda p, u: p - lr * u, state["params"], updates)
    new = dict(state, params=params, opt=opt, step=state["step"] + 1)
    return new, {"loss": loss, "acc": acc}

  def _shard_batch(self, x):
    """Leading (batch) axis over the 'data' mesh axis; under vmap the member
    axis is added unsharded. With members sharded, batches stay whole."""
    if self.members_sharded:
      return x
    spec = P("data", *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

  def _step(self, state, table):
    """One optimizer step of one member (unbatched)."""
    key = jax.random.fold_in(state["data_key"], state["step"])
    seqs = sequences.sample_sequences(key, self.spec, self.c.batch_size)
    seqs = jax.tree.map(self._shard_batch, seqs)
    feats = sources.gather_features(table, seqs.classes, seqs.exemplars,
                                    self.source_classes)
    return self._update(state, self._shard_batch(feats), seqs)

  def _train_chunk(self, state, table):
    """steps_per_call optimizer steps for every member; mean metrics out.

    A population of one runs unbatched: on XLA's CPU backend, matmuls with a
    batch dimension of size 1 cost ~60% more than plain ones.
    """
    single = state["step"].shape[0] == 1
    step = self._step if single else jax.vmap(self._step, in_axes=(0, None))
    if single:
      state = jax.tree.map(lambda x: x[0], state)
    state, metrics = jax.lax.scan(lambda s, _: step(s, table), state, None,
                                  length=self.c.steps_per_call)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
    if single:
      state, metrics = jax.tree.map(lambda x: x[None], (state, metrics))
    return state, metrics
