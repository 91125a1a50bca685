"""Weights from another run's checkpoint: warm starts and frozen graft models.

Warm start (Singh et al. 2025): the new run starts from the checkpoint's params
with a fresh Adam state (moments 0, count 0) and keeps its sequence counter;
the data and evaluator streams come from the new run's own seeds. Grafting
(Singh et al. 2025, Figs. 3-4): the checkpoint's params become every member's
frozen model.
Both apply only to a fresh run; a resumed run restores its own checkpoint.
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from icl_transience import config as config_lib
from icl_transience.errors import UserError
from icl_transience.train import checkpoints
from icl_transience.train import step as step_lib


def load_params(ref, field: str, mesh):
  """(params, sequences seen) of the checkpoint `ref` = {workdir, sequences,
  member}; errors name `field`.workdir etc. (a config block such as
  warm_start), or --workdir etc. when field is a tool's flag, '--workdir'."""
  name_of = lambda sub: f"--{sub}" if field.startswith("--") else f"{field}.{sub}"
  src = config_lib.load_run_config(ref.workdir)
  members = config_lib.members(src)
  names = [m.name for m in members]
  name = ref.member or names[0]
  if name not in names:
    raise UserError(f"{name_of('member')}: '{name}' is not a member of {ref.workdir} "
                    f"({', '.join(names)})")
  trainer = step_lib.Trainer(src, mesh)
  with checkpoints.manager(ref.workdir, read_only=True) as mngr:
    steps = list(mngr.all_steps())
    if not steps:
      raise UserError(f"{name_of('workdir')}: {ref.workdir} holds no checkpoint")
    step = max(steps) if ref.sequences < 0 else ref.sequences // src.batch_size
    if step not in steps or (ref.sequences >= 0 and
                             step * src.batch_size != ref.sequences):
      saved = ", ".join(f"{s * src.batch_size:,}" for s in sorted(steps))
      raise UserError(f"{name_of('sequences')}: no checkpoint at {ref.sequences:,} "
                      f"sequences in {ref.workdir} (saved: {saved})")
    try:
      state = checkpoints.restore_member(
          mngr, step, trainer.abstract_state(members), name)
    except Exception as e:  # pylint: disable=broad-except
      path = f"{ref.workdir}/checkpoints/{step:0{checkpoints.STEP_DIGITS}d}/{name}"
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise UserError(f"{name_of('workdir')}: cannot restore {path} ({reason})") from e
  logging.info("%s: %s member %s at %d sequences", field, ref.workdir, name,
               step * src.batch_size)
  return state["params"], step * src.batch_size


def _check_same_model(params, like, field: str):
  shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)
  if shapes(params) != shapes(like):
    count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
    raise UserError(f"{name_of('workdir')}: its model ({count(params):,} params) "
                    f"differs from this config's ({count(like):,} params)")


def prepare(c, trainer, state):
  """A fresh population state with warm start / graft applied; its start step."""
  n_members = state["step"].shape[0]
  stack = lambda tree: jax.tree.map(lambda x: jax.device_put(
      jnp.broadcast_to(x, (n_members,) + x.shape), trainer.state_sharding), tree)
  like = jax.tree.map(lambda x: x[0], state["params"])
  start = 0
  if c.warm_start.workdir:
    params, seen = load_params(c.warm_start, "warm_start", trainer.mesh)
    _check_same_model(params, like, "warm_start")
    grid = c.batch_size * c.steps_per_call
    if seen % grid or seen >= c.total_sequences:
      raise UserError(
          f"warm_start.sequences: the checkpoint is at {seen:,} sequences; it "
          f"must be a multiple of batch_size x steps_per_call = {grid} and "
          f"below total_sequences = {c.total_sequences:,}")
    start = seen // c.batch_size
    state = dict(state, params=stack(params),  # state["opt"] is freshly made
                 step=trainer.place(jnp.full_like(state["step"], start)))
  if c.graft.mode != "none":
    frozen, _ = load_params(c.graft, "graft", trainer.mesh)
    _check_same_model(frozen, like, "graft")
    state = dict(state, frozen=stack(frozen))
  return state, start
