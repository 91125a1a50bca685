"""One run over several processes: starting JAX's distributed runtime, and
saying in one line when another process of the run dies.

When a process is killed, each survivor learns it at its next collective
with it: the collective either fails at once (an evaluation's gather) or
waits (a checkpoint's barrier) until JAX's coordination service aborts the
survivor 100 s later with pages of C++ and Python traces.
`exit_if_a_process_dies` catches the first and watches heartbeats for the
second, and says either in one line naming the lost process and the newest
complete checkpoint. (When process 0, the coordinator, dies, the runtime may
abort the others before that line.)
"""
import contextlib
import os
import sys
import threading
import time

import jax
from jax._src import distributed as jax_distributed
from absl import logging

from icl_transience.errors import UserError
from icl_transience.train import checkpoints

LOST_PROCESS_EXIT = 3
_settings = {"lost_after_s": 60.0}
# What a collective with a dead process raises (Gloo on CPU hosts, NCCL on
# GPUs, the coordination service everywhere).
_LOST_PEER_SIGNS = ("gloo", "nccl", "connection reset", "connection refused",
                    "unavailable", "heartbeat", "barrier")


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               lost_after_s: float = 60):
  """jax.distributed.initialize (None: detected from the TPU / SLURM / Open
  MPI environment); one line for a bad address or count. lost_after_s: how
  long another process may go without a heartbeat before it counts as lost
  (exit_if_a_process_dies)."""
  if not lost_after_s > 0:
    raise UserError(f"--lost_process_after_s: must be > 0, not {lost_after_s}")
  _settings["lost_after_s"] = lost_after_s
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  except (RuntimeError, ValueError) as e:
    raise UserError(f"--multihost: {str(e).splitlines()[0]}") from e
  logging.info("process %d of %d; %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def lost_process_message(workdir: str, batch_size: int, lost, cause: str) -> str:
  """The one line: this process, the lost one(s), the newest checkpoint."""
  me, n = jax.process_index(), jax.process_count()
  lost = [str(p) for p in lost]
  who = f"process {lost[0]}" if len(lost) == 1 else f"one of processes {', '.join(lost)}"
  step = checkpoints.newest_on_disk(workdir)
  saved = ("no checkpoint is complete" if step is None else
           f"the newest complete checkpoint is step {step} "
           f"({step * batch_size} sequences)")
  return (f"process {me} of {n}: lost contact with {who} ({cause}); {saved} "
          f"in {workdir}: restart every process to resume")


def _exit_lost(workdir, batch_size, lost, cause):
  print(f"error: {lost_process_message(workdir, batch_size, lost, cause)}",
        file=sys.stderr, flush=True)
  logging.flush()
  os._exit(LOST_PROCESS_EXIT)  # pylint: disable=protected-access


class _Watchdog:
  """Each process sets its key in the coordination service's key-value store
  every BEAT_S seconds; a peer whose key stops changing for lost_after_s (or
  a coordinator that stops answering) is lost. A process that finishes sets
  its key to "done" and is never counted lost; one stopped by an error
  does not, so the others stop too instead of waiting for it."""
  BEAT_S = 1.0
  PREFIX = "icl_transience/alive"

  def __init__(self, workdir, batch_size, lost_after_s):
    self.workdir, self.batch_size, self.lost_after_s = workdir, batch_size, lost_after_s
    self.client = jax_distributed.global_state.client
    self.me = jax.process_index()
    self.peers = [p for p in range(jax.process_count()) if p != self.me]
    self.stopped = threading.Event()
    self.thread = threading.Thread(target=self._run, daemon=True, name="watchdog")

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, exc_type, *_):
    self.stopped.set()
    self.thread.join()
    if exc_type is not None:
      return  # stopped by an error: the others will find this process lost
    try:
      self.client.key_value_set(f"{self.PREFIX}/{self.me}", "done", allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass  # the coordinator is gone: nobody is left to watch this process

  def _run(self):
    now = time.monotonic()
    seen = {p: (None, now) for p in self.peers}  # last value, when it changed
    answered, beat = now, 0
    while not self.stopped.wait(self.BEAT_S):
      beat += 1
      now = time.monotonic()
      try:
        self.client.key_value_set(f"{self.PREFIX}/{self.me}", str(beat),
                                  allow_overwrite=True)
        answered = now
      except Exception:  # pylint: disable=broad-except
        if now - answered > self.lost_after_s:
          _exit_lost(self.workdir, self.batch_size, [0],
                     f"the coordinator has not answered for {now - answered:.0f} s")
        continue
      for p in self.peers:
        try:
          value = self.client.key_value_try_get(f"{self.PREFIX}/{p}")
        except Exception:  # pylint: disable=broad-except
          value = None  # not started beating yet
        if value == "done":
          continue
        if value != seen[p][0]:
          seen[p] = (value, now)
        elif now - seen[p][1] > self.lost_after_s:
          _exit_lost(self.workdir, self.batch_size, [p],
                     f"no heartbeat for {now - seen[p][1]:.0f} s")


@contextlib.contextmanager
def exit_if_a_process_dies(workdir: str, batch_size: int):
  """In a run of several processes, another process that dies ends this one
  with one line on stderr and exit status LOST_PROCESS_EXIT, without the
  runtime's shutdown (which would abort): at once when a collective with it
  fails, or after `initialize`'s lost_after_s without its heartbeat when a
  collective waits for it (before the coordination service's own timeout
  aborts)."""
  if jax.process_count() == 1 or jax_distributed.global_state.client is None:
    yield
    return
  with _Watchdog(workdir, batch_size, _settings["lost_after_s"]):
    try:
      yield
    except jax.errors.JaxRuntimeError as e:
      if not any(sign in str(e).lower() for sign in _LOST_PEER_SIGNS):
        raise
      cause = str(e).strip().splitlines()[0]
      _exit_lost(workdir, batch_size, [p for p in range(jax.process_count())
                                       if p != jax.process_index()], cause)
