"""One trainer per workdir: an OS lock on workdir/.trainer.lock.

The lock is an flock(2) held for the run's lifetime; the kernel releases it
when the holder exits or dies (kill -9 included), so a restarted job never
needs a manual clean-up. The file records the holder (host, pid, start
time) for the message a second trainer gets. Checkpoint-sweep jobs do not
take it. Object stores (gs://) have no locks: there, one trainer per
workdir is the user's to ensure.
"""
import contextlib
import datetime
import fcntl
import json
import os
import socket

from icl_transience.errors import UserError

FILENAME = ".trainer.lock"


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the workdir's trainer lock; UserError naming the holder if taken."""
  if "://" in workdir:
    yield
    return
  path = os.path.join(workdir, FILENAME)
  try:
    f = open(path, "a+", encoding="utf-8")
  except OSError as e:
    raise UserError(f"--workdir: cannot open the trainer lock {path} ({e.strerror}); "
                    "remove what is there, if no trainer runs") from e
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      try:
        holder = json.loads(f.read())
        who = (f"pid {holder['pid']} on {holder['host']}, started "
               f"{holder['started']}")
      except (ValueError, KeyError, TypeError):  # a damaged lock file
        who = "another process"
      raise UserError(f"--workdir: {workdir} is in use by a trainer ({who}); "
                      "wait for it to finish or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().isoformat(timespec="seconds")}))
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
