"""The training step of any task, fused K times with lax.scan and vmapped
over a population.

State (one pytree, population axis first on every leaf):
  params, opt (Adam moments), step (optimizer steps taken), data_key,
  hyper = {lr, l2, and the fields of config `hyper`} (per-member numbers that
  keep array shapes), model_state when the task's model has non-trained
  collections (BatchNorm statistics), and, when grafting, frozen (the frozen
  model's params, never updated).
The batch of step t is drawn on device from fold_in(data_key, t), so a
resumed run sees exactly the data an uninterrupted run would. The task
(tasks.py, one task per project) supplies the model, batches, loss and
evaluators.

Optimizer: optional global-norm clipping, Adam moments, the member's lr times
the schedule (linear warm-up over optim.warmup_steps, then constant or
inverse square root), decoupled weight decay (AdamW) and the L2 penalty of
Singh et al. 2023 (the schedule is Chan et al. 2022's).

Layouts over the 'data' mesh axis (config population_sharding, resolved by
config.population_layout):
  batch    every device holds every member; each step's batch is split over
           the devices (XLA all-reduces the gradients).
  members  the population axis is split over the devices; each device trains
           its own members on whole batches, with no communication. The
           population is padded to a multiple of the device count with copies
           of its last member (alive = False: with the divergence guard they
           never update; without it they train, unread) that write no
           checkpoints or rows.
  auto     members for a population on more than one device, else batch
           (with num_devices = -1 a single member has one device).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from icl_transience import config as config_lib
from icl_transience import evaluators as evaluators_lib
from icl_transience import tasks

def in_l2_group(path, modules) -> bool:
  """Whether a parameter leaf belongs to a selective-L2 group (Singh et al.
  2023): a module on its path is one of `modules` (None = every leaf). A
  task names its groups' modules (TaskSpec.l2_groups)."""
  return modules is None or any(getattr(k, "key", None) in modules for k in path)


def l2_penalty(params, form: str, modules=None):
  """sum ||w|| (icl-dynamics, unsquared) or sum ||w||^2 / 2 over the leaves
  of one parameter group (the modules named; None = all)."""
  leaves = [w for path, w in jax.tree_util.tree_flatten_with_path(params)[0]
            if in_l2_group(path, modules)]
  if form == "norm":  # safe_norm: a zero leaf (e.g. a bias) gets gradient 0
    return sum(optax.safe_norm(w, 0.0) for w in leaves)
  return sum(0.5 * jnp.sum(w * w) for w in leaves)


def group_modules(spec, group: str):
  """The modules of a selective-L2 group of a task ('all': None)."""
  return None if group == "all" else spec.l2_groups[group]


def lr_factor(optim, step):
  """The schedule's multiplier of the member's lr at optimizer step `step`:
  linear warm-up to 1 over warmup_steps, then 1 (constant) or
  sqrt(warmup_steps / step) (inverse_sqrt)."""
  t = (step + 1).astype(jnp.float32)
  warmup = max(optim.warmup_steps, 1)
  factor = jnp.minimum(1.0, t / warmup)
  if optim.schedule == "inverse_sqrt":
    factor = jnp.minimum(factor, jnp.sqrt(warmup / t))
  return factor


class Trainer:
  """Compiled functions for one config: init, fused training, evaluation."""

  def __init__(self, c, mesh):
    self.c = c
    self.mesh = mesh
    self.spec = tasks.spec(c)
    self.task = self.spec.build(c)
    clip = ([optax.clip_by_global_norm(c.optim.clip_norm)]
            if c.optim.clip_norm > 0 else [])
    adam = optax.scale_by_adam(c.optim.b1, c.optim.b2, c.optim.eps)
    self.adam = optax.chain(*clip, adam) if clip else adam
    members = config_lib.members(c)
    self.use_l2 = any(m.l2 > 0 for m in members)
    # per-member group coefficients (config l2_<group>), when a member sets one
    self.l2_groups = [f.removeprefix("l2_") for f, _ in members[0].l2_groups]
    self.grafting = c.graft.mode != "none"  # the task reads weights["frozen"]
    self.replicated = NamedSharding(mesh, P())
    n_devices = mesh.devices.size
    self.members_sharded = config_lib.population_layout(c, n_devices) == "members"
    self.state_sharding = (NamedSharding(mesh, P("data")) if self.members_sharded
                           else self.replicated)
    self.n_members = len(config_lib.members(c))
    # population slots: the members, padded in the members layout
    self.n_slots = (-(-self.n_members // n_devices) * n_devices
                    if self.members_sharded else self.n_members)
    self.sequential_members = config_lib.members_in_sequence(
        c, self.members_sharded, jax.default_backend())
    self._replicate = jax.jit(lambda tree: tree, out_shardings=self.replicated)
    self._pad = jax.jit(self._pad_slots, out_shardings=self.state_sharding)
    self.snapshot = jax.jit(self._unstack, out_shardings=self.replicated)
    self.train_chunk = jax.jit(self._precise(self._train_chunk),
                               donate_argnums=(0, 2), static_argnames="length")

  def _precise(self, fn):
    """fn traced under the config's matmul precision (see config.py)."""
    @functools.wraps(fn)
    def traced(*args, **kwargs):
      with jax.default_matmul_precision(self.c.matmul_precision):
        return fn(*args, **kwargs)
    return traced

  @staticmethod
  def weights(state):
    """What the forward pass reads: params, model state, frozen graft model,
    and the member's numbers (hyper: a task may read its per-member fields in
    evaluation as in training)."""
    return {k: state[k] for k in ("params", "model_state", "frozen", "hyper")
            if k in state}

  # --- initialisation -------------------------------------------------------
  def _init_member(self, init_seed, data_seed, hyper):
    variables = self.task.init_weights(jax.random.PRNGKey(init_seed))
    params = variables["params"]
    state = {"params": params, "opt": self.adam.init(params),
             "step": jnp.zeros((), jnp.int32),
             "data_key": jax.random.PRNGKey(data_seed), "hyper": hyper}
    if "model_state" in variables:
      state["model_state"] = variables["model_state"]
    if self.grafting:  # a placeholder until the frozen model is loaded
      state["frozen"] = params
    return state

  @staticmethod
  def _member_arrays(members):
    seeds = [np.array([getattr(m, f) for m in members], np.uint32)
             for f in ("init_seed", "data_seed")]
    hyper = {k: np.array([m.hyper[k] for m in members], np.float32)
             for k in members[0].hyper}
    return seeds + [hyper]

  def init(self, members):
    """The population's initial state (n_slots members), laid out over the
    mesh."""
    members = members + members[-1:] * (self.n_slots - len(members))
    init = jax.jit(self._precise(jax.vmap(self._init_member)),
                   out_shardings=self.state_sharding)
    return init(*self._member_arrays(members))

  def fetch(self, tree):
    """Host (numpy) copies of device arrays in one transfer; arrays split
    over the members of a multi-process run are gathered first."""
    return jax.device_get(self._replicate(tree))

  def _pad_slots(self, state):
    pad = lambda x: jnp.concatenate(
        [x] + [x[-1:]] * (self.n_slots - x.shape[0])) if x.shape[0] < self.n_slots else x
    return jax.tree.map(pad, state)

  def place(self, state):
    """A stacked state of the members (or of all slots) in this trainer's
    layout, padded to n_slots."""
    return self._pad(state)

  def alive(self, flags):
    """The members' alive flags as the (n_slots,) device array training
    takes; padding slots start False."""
    flags = list(flags) + [False] * (self.n_slots - len(flags))
    return jax.device_put(np.array(flags, bool), self.state_sharding)

  def _unstack(self, state):
    """One tree per member (padding dropped): the checkpoint's items, copied
    on device in one call so the next training call may reuse the state's
    buffers while Orbax writes them."""
    return [jax.tree.map(lambda x, i=i: x[i], state) for i in range(self.n_members)]

  def abstract_state(self, members):
    """Shapes and shardings of the state, for restoring checkpoints."""
    shapes = jax.eval_shape(jax.vmap(self._init_member),
                            *self._member_arrays(members))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(
        s.shape, s.dtype, sharding=self.replicated), shapes)

  # --- one optimizer step (one member) --------------------------------------
  def _loss(self, params, state, batch):
    weights = dict(self.weights(state), params=params)
    loss, aux = self.task.loss(weights, batch, state["hyper"], state["step"])
    if self.use_l2:
      loss = loss + state["hyper"]["l2"] * l2_penalty(
          params, self.c.optim.l2_form, group_modules(self.spec, self.c.optim.l2_on))
    for group in self.l2_groups:
      loss = loss + state["hyper"][f"l2_{group}"] * l2_penalty(
          params, self.c.optim.l2_form, group_modules(self.spec, group))
    return loss, aux

  def _update(self, state, batch, alive):
    """One optimizer step. With the divergence guard, a step whose loss or
    gradients are not finite is not taken and the member stops (alive =
    False): it keeps its last finite state. The check needs only the loss and
    the gradients, so the update stays one fused pass."""
    grads, (metrics, model_state) = jax.grad(self._loss, has_aux=True)(
        state["params"], state, batch)
    if self.c.divergence_guard:
      finite = [jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]
      alive = alive & jnp.isfinite(metrics["loss"]) & jnp.all(jnp.stack(finite))
    updates, opt = self.adam.update(grads, state["opt"], state["params"])
    lr = state["hyper"]["lr"] * lr_factor(self.c.optim, state["step"])
    decay = self.c.optim.weight_decay
    params = jax.tree.map(lambda p, u: p - lr * (u + decay * p) if decay else
                          p - lr * u, state["params"], updates)
    new = dict(state, params=params, opt=opt, step=state["step"] + 1)
    if model_state is not None:
      new["model_state"] = model_state
    if self.c.divergence_guard:
      new = jax.tree.map(lambda n, o: jnp.where(alive, n, o), new, state)
    return new, alive, metrics

  def _shard_batch(self, x):
    """Leading (batch) axis over the 'data' mesh axis; under vmap the member
    axis is added unsharded. With members sharded, batches stay whole."""
    if self.members_sharded:
      return x
    spec = P("data", *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

  def _step(self, carry, consts):
    """One optimizer step of one member (unbatched); carry = (state, alive)."""
    state, alive = carry
    key = jax.random.fold_in(state["data_key"], state["step"])
    batch = self.task.sample_batch(key, consts, state["hyper"], state["step"])
    new, alive, metrics = self._update(
        state, jax.tree.map(self._shard_batch, batch), alive)
    return (new, alive), metrics

  def _train_chunk(self, state, consts, alive, length=None):
    """`length` (default steps_per_call) optimizer steps for every member;
    alive (P,) bool marks the members still training. Returns the state,
    alive and the chunk's mean metrics.

    Members run vmapped inside the scan, or, with `sequential_members`, one
    after another, each scanning its own steps unbatched (lax.map over the
    members outside the scan): on XLA's CPU backend batched matmuls cost
    more than plain ones, and a member's state is sliced once per call.
    """
    length = length or self.c.steps_per_call

    def scan(step, carry):
      carry, metrics = jax.lax.scan(lambda s, _: step(s, consts), carry, None,
                                    length=length)
      return carry, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
    if self.sequential_members:
      (state, alive), metrics = jax.lax.map(
          lambda carry: scan(self._step, carry), (state, alive))
      return state, alive, metrics
    (state, alive), metrics = scan(jax.vmap(self._step, in_axes=(0, None)),
                                   (state, alive))
    return state, alive, metrics

  # --- evaluation -----------------------------------------------------------
  def eval_sets(self):
    """The fixed sets of the task's evaluators, replicated on every device."""
    return evaluators_lib.fixed_sets(self.task.evaluators, self.c.eval_seed,
                                     self.replicated)

  def population_eval(self):
    """The task's evaluators over a stacked population (or checkpoints), jitted,
    eval_members_per_pass members at a time on each device: evaluation
    memory is bounded whatever the population size. In the members layout
    each device evaluates its own members."""
    per_pass = self.c.eval_members_per_pass

    def evaluate(weights, consts, eval_sets):
      n = jax.tree.leaves(weights)[0].shape[0]
      return jax.lax.map(lambda w: evaluators_lib.evaluate(
          self.task.evaluators, w, consts, eval_sets),
                         weights, batch_size=min(per_pass, n))
    if self.members_sharded:
      evaluate = jax.shard_map(evaluate, mesh=self.mesh,
                               in_specs=(P("data"), P(), P()), out_specs=P("data"))
    return jax.jit(self._precise(evaluate))
