"""The host loop: fused training calls, periodic probes, checkpoints, resume.

The host wakes once per fused call (steps_per_call optimizer steps), keeps
one call in flight, fetches metrics only at evaluation points, and saves
checkpoints on the schedule. SIGINT/SIGTERM finish the current call, save a
checkpoint and exit; a restarted run resumes bit-for-bit from the newest
checkpoint.
"""
import contextlib
import json
import math
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience import monitoring
from icl_transience import tasks
from icl_transience.errors import Diverged, UserError
from icl_transience.train import checkpoints
from icl_transience.train import multihost
from icl_transience.train import pretrained
from icl_transience.train import progress
from icl_transience.train import step as step_lib
from icl_transience.train import workdir_lock

PROFILED_CALLS = 3  # fused calls traced by --profile
# Fields a resumed run may change: horizons, schedules, layouts, views; a task
# adds its own (tasks.TaskSpec.resumable, e.g. its evaluation batch size).
RESUMABLE_CHANGES = ("total_sequences", "eval_every", "ckpt", "steps_per_call",
                     "num_devices", "population_sharding",
                     "eval_members_per_pass", "population_map", "log")


def profile_dir(workdir: str) -> str:
  """Where --profile writes its trace: a TensorBoard run of the workdir's
  tensorboard/ folder, so that the profile plugin finds it there."""
  return str(epath.Path(workdir) / monitoring.TENSORBOARD_DIR / "profile")


def make_mesh(num_devices: int = 0):
  """A 1-axis 'data' mesh over the first num_devices devices (0 = all; in a
  multi-process run, all devices of all processes)."""
  if num_devices < 0:
    raise UserError(f"num_devices: {num_devices} (use -1 only in a config)")
  if jax.process_count() > 1 and num_devices not in (0, jax.device_count()):
    raise UserError(f"num_devices: a multi-process run uses all "
                    f"{jax.device_count()} devices (set 0)")
  devices = jax.devices()[:num_devices or None]
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def run_mesh(c):
  """The mesh a run of `c` trains and evaluates on: num_devices N (0 = all),
  or with -1 (auto) one device for a single member of a one-process run
  (splitting its small batch over more only adds communication), else all."""
  if c.num_devices != -1:
    return make_mesh(c.num_devices)
  single = len(config_lib.members(c)) == 1 and jax.process_count() == 1
  return make_mesh(1 if single else 0)


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def save_config(c, workdir: str):
  """Writes config.json (the task's fields only: config.fit_to_task);
  refuses a workdir that holds a different run."""
  path = str(epath.Path(workdir) / "config.json")
  new = json.loads(config_lib.fit_to_task(ml_collections.ConfigDict(c.to_dict())).to_json())
  if epath.Path(path).exists():
    old = json.loads(config_lib.load_run_config(workdir).to_json())
    flat_old, flat_new = _flatten(old), _flatten(new)
    resumable = RESUMABLE_CHANGES + tasks.spec(c).resumable
    for field in sorted(set(flat_old) | set(flat_new)):  # every process checks
      if any(field == r or field.startswith(r + ".") for r in resumable):
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
  """Table rows from host copies of the population's results."""
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


def train(c, workdir: str, profile_dir: str = ""):
  """Trains (or resumes) the population of `c` in `workdir`; with
  profile_dir, writes a profiler trace of PROFILED_CALLS fused calls there.
  The run's config holds exactly its task's fields (config.fit_to_task)."""
  c = config_lib.fit_to_task(ml_collections.ConfigDict(c.to_dict()))
  mesh = run_mesh(c)
  config_lib.validate(c, n_devices=mesh.devices.size)
  if epath.Path(workdir).exists() and not epath.Path(workdir).is_dir():
    raise UserError(f"--workdir: {workdir} is a file, not a folder (name a folder "
                    "for the run)")
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  lock = (workdir_lock.hold(workdir) if jax.process_index() == 0
          else contextlib.nullcontext())
  with lock:
    save_config(c, workdir)
    with jax.set_mesh(mesh):
      _train(c, workdir, mesh, profile_dir)


def _train(c, workdir, mesh, profile_dir):
  members = config_lib.members(c)
  names = [m.name for m in members]
  bs = c.batch_size
  total = c.total_sequences // bs
  trainer = step_lib.Trainer(c, mesh)
  layout = ("members" if trainer.members_sharded else "batch") + (
      f", padded to {trainer.n_slots}" if trainer.n_slots > len(names) else "")
  logging.info("%d member(s) %s on %d device(s) (%s layout); %d steps = %d "
               "sequences", len(names), names, mesh.devices.size, layout, total,
               c.total_sequences)
  consts = trainer.task.constants(trainer.replicated)
  # Every process computes the rows; process 0 writes them.
  table_rows = metrics_table.MetricsTable(workdir, write=jax.process_index() == 0)
  with checkpoints.manager(workdir, c.ckpt.keep) as mngr, \
       monitoring.attached(c, workdir, table_rows, "train", names), \
       StopRequest().installed() as stop, \
       multihost.exit_if_a_process_dies(workdir, bs):
    run = Run(c, workdir, trainer, consts, mngr, table_rows, profile_dir)
    found, unreadable = checkpoints.restore_newest(
        mngr, workdir, trainer.abstract_state(members), names)
    if found is None and unreadable:
      if not c.ckpt.restart_if_corrupt:
        newest = max(unreadable)
        raise UserError(
            f"--workdir: no readable checkpoint in {workdir} (steps "
            f"{sorted(unreadable)}; step {newest}: {unreadable[newest]}); nothing "
            "was moved. If they are damaged, set "
            "--config.ckpt.restart_if_corrupt=True to move them to "
            "checkpoints/corrupt and start the run afresh")
      checkpoints.quarantine(mngr, workdir, unreadable)
    if found is None:
      state, start = pretrained.prepare(c, trainer, trainer.init(members))
      run.append(_result_rows(names, start, bs, run.evaluate_now(state)))
      run.save(state, start)
    else:
      start, state, meta = found
      state = trainer.place(state)
      run.diverged = dict(meta.get("diverged", {}))
      logging.info("resumed from step %d (%d sequences)", start, start * bs)
      if len(run.diverged) == len(names):
        raise Diverged(f"every member diverged; see {metrics_table.path(workdir)}")
    run.loop(state, start, total, stop)
    run.wait()


class Run:
  """The host side of one training run: calls, evaluations, rows, saves."""

  def __init__(self, c, workdir, trainer, consts, mngr, table_rows,
               profile_dir=""):
    self.c, self.workdir, self.trainer = c, workdir, trainer
    self.names = [m.name for m in config_lib.members(c)]
    self.consts, self.mngr, self.table_rows = consts, mngr, table_rows
    self.eval_sets, self.evaluate = trainer.eval_sets(), trainer.population_eval()
    self.diverged = {}  # member -> optimizer steps it took before diverging
    self.profile_dir, self.tracing = profile_dir, False

  def evaluate_now(self, state):
    """{evaluator: {metric: (members,) values}} of the state, on the host."""
    return self.trainer.fetch(self.evaluate(self.trainer.weights(state),
                                            self.consts, self.eval_sets))

  def append(self, rows):
    try:
      self.table_rows.append(rows)
    except OSError as e:
      raise UserError(
          f"{metrics_table.path(self.workdir)}: cannot write ({e.strerror or e}); "
          "the table and the newest checkpoint on disk are whole: free space "
          "or fix the folder's permissions, then run again to resume") from e

  def save(self, state, step):
    self.write(self.trainer.snapshot(state), step)

  def write(self, snapshot, step):
    """Saves a trainer.snapshot (asynchronously, after the copy to host)."""
    meta = dict(step=step, sequences=step * self.c.batch_size,
                members=self.names, diverged=dict(self.diverged))
    try:
      checkpoints.save(self.mngr, snapshot, self.names, meta)
    except OSError as e:
      raise self._save_error(step, e) from e

  def wait(self):
    try:
      self.mngr.wait_until_finished()
    except OSError as e:
      raise self._save_error(None, e) from e

  def _save_error(self, step, e):
    which = "a checkpoint" if step is None else f"the step-{step} checkpoint"
    return UserError(
        f"{self.workdir}/checkpoints: cannot write {which} ({e.strerror or e}); "
        "the newest complete checkpoint and the table are whole: free space "
        "or fix the folder's permissions, then run again to resume")

  def loop(self, state, step, total, stop):
    c, trainer = self.c, self.trainer
    bs, k = c.batch_size, c.steps_per_call
    eval_period = c.eval_every // bs
    ckpt_steps = set(checkpoints.schedule(c.ckpt, bs, k, total))
    landings = checkpoints.explicit_steps(c.ckpt, bs, total)
    alive = trainer.alive([n not in self.diverged for n in self.names])
    pending, in_flight, snapshot = [], None, None
    last_time, last_step = time.time(), step
    calls = 0
    with progress.bar(total, step, jax.process_index() == 0) as bar:
      while step < total:
        self._profile(calls, state)
        calls += 1
        # A run resumed with another steps_per_call first steps onto its
        # grid; a call stops short to land on an explicit checkpoint.
        length = k - step % k
        length = min([length] + [s - step for s in landings if s > step])
        state, alive, metrics = trainer.train_chunk(state, self.consts, alive,
                                                    length=length)
        if snapshot is not None:  # copied while this call trains
          self.write(*snapshot)
          snapshot = None
        step += length
        if in_flight is not None:  # keep one call in flight, no more
          jax.block_until_ready(in_flight[0])
          bar.update(in_flight[1])
        in_flight = (metrics, length)
        pending.append(in_flight)
        if step % eval_period == 0 or step == total:
          results, chunks = trainer.fetch((self.evaluate(
              trainer.weights(state), self.consts, self.eval_sets),
                                           [m for m, _ in pending]))
          train_metrics = jax.tree.map(  # the calls' means, weighted by length
              lambda *m: np.average(np.stack(m), 0, [n for _, n in pending]),
              *chunks)
          pending = []
          rows = _result_rows(self.names, step, bs, results, train_metrics)
          rows, alive = self._guard(rows, state, alive, step)
          self.append(rows)
          shown = _postfix(rows, self.names, step, bs, trainer.task.shown)
          bar.set_postfix(shown, refresh=False)
          now = time.time()  # rate since the previous log (the first includes compiling)
          rate = (step - last_step) / max(now - last_time, 1e-9)
          last_time, last_step = now, step
          logging.info("step %d (%d sequences, %.0f steps/s): %s", step, step * bs,
                       rate, " ".join(f"{a}={b}" for a, b in shown.items()))
          if len(self.diverged) == len(self.names):
            self.save(state, step)
            self.wait()
            raise Diverged(f"every member diverged (the last at step {step}); "
                            f"the run stopped; see {metrics_table.path(self.workdir)}")
        if step in ckpt_steps or stop.requested:  # written after the next call starts
          snapshot = (trainer.snapshot(state), step)
        if stop.requested:
          logging.warning("stopped at step %d; run again to resume", step)
          break
      if snapshot is not None:
        self.write(*snapshot)
      bar.update(step - bar.n)
    jax.block_until_ready(state)
    self._profile(-1, state)
    if step >= total:
      logging.info("done: %d steps (%d sequences)", step, step * bs)

  def _profile(self, calls: int, state):
    """Traces calls 1..PROFILED_CALLS (the first compiles) into
    profile_dir/plugins/profile/, where TensorBoard's profile tab looks;
    calls = -1 at the end stops a trace still running."""
    if not self.profile_dir or jax.process_index() != 0:
      return
    if calls == 1:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.profile_dir)
      self.tracing = True
    elif self.tracing and calls in (1 + PROFILED_CALLS, -1):
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.tracing = False
      logging.info("profile of %d fused calls written to %s", PROFILED_CALLS,
                   self.profile_dir)

  def _guard(self, rows, state, alive, step):
    """Members that diverged since the last evaluation (non-finite training
    step, or non-finite evaluation loss): one warning and one `diverged`
    marker row each; no further rows. Returns the rows and alive."""
    if not self.c.divergence_guard:
      return rows, alive
    flags, steps = self.trainer.fetch((alive, state["step"]))
    flags = [bool(a) for a in flags[:len(self.names)]]
    bad_eval = {r["member"]: f"{r['evaluator']} loss {r['value']}" for r in rows
                if r["metric"] == "loss" and not math.isfinite(r["value"])}
    train_loss = {r["member"]: r["value"] for r in rows
                  if (r["evaluator"], r["metric"]) == ("train_batch", "loss")}
    for i, name in enumerate(self.names):
      if name in self.diverged or (flags[i] and name not in bad_eval):
        continue
      loss = train_loss.get(name, math.nan)
      reason = (bad_eval[name] if flags[i] else f"loss {loss}"
                if not math.isfinite(loss) else "non-finite gradients")
      at = int(steps[i])
      self.diverged[name] = at
      flags[i] = False
      logging.warning("member %s diverged at step %d (%d sequences): %s", name,
                      at, at * self.c.batch_size, reason)
      rows = rows + [dict(member=name, step=at, sequences=at * self.c.batch_size,
                          evaluator=metrics_table.DIVERGED, metric="step", value=float(at))]
    rows = [r for r in rows if r["member"] not in self.diverged or
            r["evaluator"] == metrics_table.DIVERGED]
    if flags != [bool(a) for a in self.trainer.fetch(alive)[:len(self.names)]]:
      alive = self.trainer.alive(flags)
    return rows, alive
