"""Orbax checkpoints: schedules in sequences, one item per population member.

Layout: workdir/checkpoints/<step, 8 digits>/{meta, <member>...}; the step
is the optimizer step. Each member's state is its own item, so a single
member can be restored (warm starts, grafting, the checkpoint-sweep job).
Orbax writes each step to a temporary directory and renames it when
complete, so a crash never leaves a half-written checkpoint behind.
"""
import functools
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from absl import logging

STEP_DIGITS = 8


def schedule(ckpt_cfg, batch_size: int, steps_per_call: int, total_steps: int):
  """Sorted checkpoint steps: every N and log-spaced ones rounded up onto the
  fused-call grid; explicit ones (`at`, in sequences) exactly where asked
  (the call before one is shortened to land on it); always the last step."""
  steps = set()
  if ckpt_cfg.every:
    every = ckpt_cfg.every // batch_size
    steps.update(range(every, total_steps + 1, every))
  if ckpt_cfg.log_spaced:
    points = np.geomspace(steps_per_call, total_steps, ckpt_cfg.log_spaced)
    steps.update(int(p) for p in points)
  grid = steps_per_call
  steps = {min(-(-s // grid) * grid, total_steps) for s in steps if s > 0}
  steps.update(s for s in explicit_steps(ckpt_cfg, batch_size, total_steps))
  steps.add(total_steps)
  return sorted(steps)


def explicit_steps(ckpt_cfg, batch_size: int, total_steps: int) -> list[int]:
  """The `at` checkpoints (sequence counts) as steps inside the run."""
  return sorted({int(seqs) // batch_size for seqs in ckpt_cfg.at
                 if 0 < int(seqs) // batch_size <= total_steps})


@functools.cache
def _save_arrays_whole():
  """Each array is written whole by the device holding its replica 0.
  Orbax's default off GPU, replica-parallel saving, splits every replicated
  array into slices written by different devices, one eager slicing op
  each: with our small states that cost more than the writing, and it
  stalls training (benchmarks/checkpoint_save.py).
  Registered on first use, once the CLI's log filter is in place (Orbax
  warns of the override)."""
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
      override=True)


def manager(workdir: str, keep: int = 0, read_only: bool = False):
  _save_arrays_whole()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep or None, step_format_fixed_length=STEP_DIGITS,
      read_only=read_only, create=not read_only,
      enable_async_checkpointing=not read_only)
  root = workdir if "://" in workdir else os.path.abspath(workdir)  # gs://...
  return ocp.CheckpointManager(epath.Path(root) / "checkpoints", options=options)


def newest_on_disk(workdir: str):
  """The newest complete step in workdir/checkpoints, or None, read from the
  folder names alone (no manager, so no collective: safe when another
  process of the run is gone). Orbax gives a step's folder its bare number
  only once the step is complete."""
  root = epath.Path(workdir) / "checkpoints"
  steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.exists() else []
  return max(steps, default=None)


def save(mngr, member_states, member_names, meta: dict):
  """Saves one item per member (Trainer.snapshot's trees); Orbax copies them
  to the host, then writes in the background."""
  items = {"meta": ocp.args.JsonSave(meta)}
  for name, member in zip(member_names, member_states, strict=True):
    items[name] = ocp.args.StandardSave(member)
  mngr.save(int(meta["step"]), args=ocp.args.Composite(**items), force=True)


def _member_target(abstract_state):
  """One member's shapes, replicated over the state's mesh."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(
      s.shape[1:], s.dtype,
      sharding=jax.sharding.NamedSharding(s.sharding.mesh, jax.sharding.PartitionSpec())),
                      abstract_state)


def restore_population(mngr, step: int, abstract_state, member_names):
  """The stacked population state at `step`."""
  target = _member_target(abstract_state)
  items = {name: ocp.args.StandardRestore(target) for name in member_names}
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return _stack([restored[name] for name in member_names])


@jax.jit
def _stack(members):  # jitted: every process of a multi-process run takes part
  return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *members)


def restore_member(mngr, step: int, abstract_state, name: str):
  """One member's state at `step` (no population axis)."""
  target = _member_target(abstract_state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{name: ocp.args.StandardRestore(target)}))
  return restored[name]


def restore_meta(mngr, step: int) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))["meta"]


def restore_newest(mngr, workdir: str, abstract_state, member_names):
  """(step, population state, meta) of the newest readable checkpoint, or
  None; and the unreadable steps (partial, damaged, wrong shapes) as
  {step: first line of the error}. Those newer than a readable one are
  damage and move to checkpoints/corrupt/<step> with a warning. When none
  is readable nothing moves: an error that hits every checkpoint (memory,
  a library version) is likelier than damage to all of them; `quarantine`
  moves them when the user says so."""
  unreadable = {}
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state = restore_population(mngr, step, abstract_state, member_names)
      meta = restore_meta(mngr, step)
    except Exception as e:  # pylint: disable=broad-except
      unreadable[step] = str(e).splitlines()[0] if str(e) else type(e).__name__
      continue
    quarantine(mngr, workdir, unreadable)
    return (step, state, meta), unreadable
  return None, unreadable


def quarantine(mngr, workdir: str, unreadable: dict):
  """Moves each unreadable step to checkpoints/corrupt/<step> (process 0; a
  remote workdir is left in place), warning why."""
  root = os.path.join(workdir, "checkpoints")
  for step, error in unreadable.items():
    target = os.path.join(root, "corrupt", str(step))
    if "://" in workdir:
      logging.warning("checkpoint %d is unreadable (%s): left in place "
                      "(remote workdir)", step, error)
      continue
    if jax.process_index() == 0:
      if os.path.exists(target):
        shutil.rmtree(target)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(os.path.join(root, f"{step:0{STEP_DIGITS}d}"), target)
    logging.warning("checkpoint %d is unreadable (%s): moved to %s", step, error, target)
  mngr.reload()
