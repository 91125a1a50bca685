"""The host loop: fused training calls, periodic probes, checkpoints, resume.

The host wakes once per fused call (steps_per_call optimizer steps), keeps
one call in flight, fetches metrics only at evaluation points, and saves
checkpoints on the schedule. SIGINT/SIGTERM finish the current call, save a
checkpoint and exit; a restarted run resumes bit-for-bit from the newest
checkpoint.
"""
import contextlib
import json
import signal
import time

import jax
import jax.numpy as jnp
import tqdm
from absl import logging
from etils import epath

from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.errors import UserError
from icl_transience.train import checkpoints
from icl_transience.train import pretrained
from icl_transience.train import step as step_lib

# Fields a resumed run may change: horizons, schedules, eval batching.
RESUMABLE_CHANGES = ("total_sequences", "eval_every", "ckpt", "steps_per_call",
                     "evals.batch_size", "num_devices", "population_sharding",
                     "lds.eval_batch", "omniglot.eval_batch_size")


def make_mesh(num_devices: int = 0):
  """A 1-axis 'data' mesh over the first num_devices devices (0 = all; in a
  multi-process run, all devices of all processes)."""
  if jax.process_count() > 1 and num_devices not in (0, jax.device_count()):
    raise UserError(f"num_devices: a multi-process run uses all "
                    f"{jax.device_count()} devices (set 0)")
  devices = jax.devices()[:num_devices or None]
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def save_config(c, workdir: str):
  """Writes config.json; refuses a workdir that holds a different run."""
  path = str(epath.Path(workdir) / "config.json")
  new = json.loads(c.to_json())
  if epath.Path(path).exists():
    old = json.loads(config_lib.load_run_config(workdir).to_json())
    flat_old, flat_new = _flatten(old), _flatten(new)
    for field in sorted(set(flat_old) | set(flat_new)):  # every process checks
      if any(field == r or field.startswith(r + ".") for r in RESUMABLE_CHANGES):
        continue
      if flat_old.get(field) != flat_new.get(field):
        raise UserError(
            f"{field}: workdir {workdir} holds a run with {field}="
            f"{flat_old.get(field)!r}, not {flat_new.get(field)!r} (use a new "
            "--workdir, or the same config to resume)")
  if jax.process_index() == 0:
    metrics_table.atomic_write_text(path, json.dumps(new, indent=2) + "\n")


class StopRequest:
  """First SIGINT/SIGTERM: stop after the current call; second SIGINT: abort."""

  def __init__(self):
    self.requested = False

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    logging.warning("signal %d: saving a checkpoint and stopping", signum)

  @contextlib.contextmanager
  def installed(self):
    old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield self
    finally:
      for s, h in old.items():
        signal.signal(s, h)


def _result_rows(names, step, batch_size, results, train_metrics=None):
  results = jax.device_get(results)
  rows = []
  for i, name in enumerate(names):
    member = {ev: {m: v[i] for m, v in ms.items()} for ev, ms in results.items()}
    if train_metrics is not None:
      member["train_batch"] = {m: v[i] for m, v in train_metrics.items()}
    rows += metrics_table.rows_from(name, step, step * batch_size, member)
  return rows


def _postfix(rows, names, step, batch_size, shown_probes):
  first = [r for r in rows if r["member"] == names[0]]
  shown = {"seqs": f"{step * batch_size / 1e6:.2f}M"}
  for r in first:
    if shown_probes.get(r["evaluator"]) == r["metric"]:
      shown[r["evaluator"]] = f"{r['value']:.2f}"
    if r["evaluator"] == "train_batch" and r["metric"] == "loss":
      shown["loss"] = f"{r['value']:.3f}"
  return shown


def train(c, workdir: str):
  """Trains (or resumes) the population of `c` in `workdir`."""
  mesh = make_mesh(c.num_devices)
  config_lib.validate(c, n_devices=mesh.devices.size)
  members = config_lib.members(c)
  names = [m.name for m in members]
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  save_config(c, workdir)
  bs, k = c.batch_size, c.steps_per_call
  total = c.total_sequences // bs
  eval_period = c.eval_every // bs
  ckpt_steps = set(checkpoints.schedule(c.ckpt, bs, k, total))
  logging.info("%d member(s) %s on %d device(s); %d steps = %d sequences",
               len(names), names, mesh.devices.size, total, c.total_sequences)

  with jax.set_mesh(mesh):
    trainer = step_lib.Trainer(c, mesh)
    table = trainer.task.constants(trainer.replicated)
    evaluate = trainer.population_eval()
    eval_sets = trainer.task.eval_sets(trainer.replicated)
    # Every process computes the rows; process 0 writes them.
    table_rows = metrics_table.MetricsTable(workdir, write=jax.process_index() == 0)
    with checkpoints.manager(workdir, c.ckpt.keep) as mngr, \
         StopRequest().installed() as stop:
      start = checkpoints.latest_step(mngr)
      if start is None:
        state, start = pretrained.prepare(c, trainer, trainer.init(members))
        table_rows.append(_result_rows(
            names, start, bs, evaluate(trainer.weights(state), table, eval_sets)))
        checkpoints.save(mngr, state, names,
                         dict(step=start, sequences=start * bs, members=names))
      else:
        state = trainer.place(checkpoints.restore_population(
            mngr, start, trainer.abstract_state(members), names))
        logging.info("resumed from step %d (%d sequences)", start, start * bs)
      _run(c, trainer, evaluate, state, table, eval_sets, table_rows, mngr,
           stop, names, start, total, eval_period, ckpt_steps)
      mngr.wait_until_finished()


def _run(c, trainer, evaluate, state, table, eval_sets, table_rows, mngr, stop,
         names, step, total, eval_period, ckpt_steps):
  bs, k = c.batch_size, c.steps_per_call
  pending, in_flight = [], None
  bar = tqdm.tqdm(total=total, initial=step, unit="step", dynamic_ncols=True,
                  disable=None if jax.process_index() == 0 else True,
                  smoothing=0.1)
  last_time, last_step = time.time(), step
  while step < total:
    # A run resumed with another steps_per_call first steps onto its grid.
    length = k - step % k
    state, metrics = trainer.train_chunk(state, table, length=length)
    step += length
    if in_flight is not None:  # keep one call in flight, no more
      jax.block_until_ready(in_flight[0])
      bar.update(in_flight[1])
    in_flight = (metrics, length)
    pending.append(in_flight)
    if step % eval_period == 0 or step == total:
      weights = jnp.array([n for _, n in pending], jnp.float32)
      train_metrics = jax.tree.map(
          lambda *m: jnp.average(jnp.stack(m), 0, weights), *(m for m, _ in pending))
      pending = []
      rows = _result_rows(names, step, bs,
                          evaluate(trainer.weights(state), table, eval_sets),
                          train_metrics)
      table_rows.append(rows)
      shown = _postfix(rows, names, step, bs, trainer.task.shown)
      bar.set_postfix(shown, refresh=False)
      now = time.time()  # rate since the previous log (the first includes compiling)
      rate = (step - last_step) / max(now - last_time, 1e-9)
      last_time, last_step = now, step
      logging.info("step %d (%d sequences, %.0f steps/s): %s", step, step * bs,
                   rate, " ".join(f"{a}={b}" for a, b in shown.items()))
    if step in ckpt_steps or stop.requested:
      checkpoints.save(mngr, state, names,
                       dict(step=step, sequences=step * bs, members=names))
    if stop.requested:
      logging.warning("stopped at step %d; run again to resume", step)
      break
  bar.update(step - bar.n)
  bar.close()
  jax.block_until_ready(state)
  if step >= total:
    logging.info("done: %d steps (%d sequences)", step, step * bs)
