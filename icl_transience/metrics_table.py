"""The run's tidy metrics table: workdir/metrics.jsonl.

One JSON object per line: member, step, sequences, evaluator, metric, value.
Rows are unique on (member, step, evaluator, metric): the training loop and
the checkpoint-sweep job both append, and duplicates are dropped. Every
write replaces the file atomically (temporary file + rename), so a crash
never leaves a half-written table.
"""
import contextlib
import fcntl
import json
import os
import tempfile

from etils import epath

FILENAME = "metrics.jsonl"
KEY = ("member", "step", "evaluator", "metric")
# The evaluator of the one row that marks a member whose training diverged
# (metric "step", value = the optimizer steps it took); it has no rows after.
DIVERGED = "diverged"


def path(workdir: str) -> str:
  return str(epath.Path(workdir) / FILENAME)


def is_remote(filename: str) -> bool:
  return "://" in str(filename)  # gs://... and other etils paths


def read(workdir: str) -> list[dict]:
  p = epath.Path(path(workdir))
  if not p.exists():
    return []
  return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def atomic_write(filename: str, write, binary: bool = False):
  """Calls write(file) on a temporary file, then renames it to filename:
  readers see the old or the new file, whole. (A remote object store such
  as gs:// replaces whole objects on its own: written directly there.)"""
  if is_remote(filename):
    with epath.Path(filename).open("wb" if binary else "w") as f:
      write(f)
    return
  directory = os.path.dirname(os.path.abspath(filename))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb" if binary else "w") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, filename)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_text(filename: str, text: str):
  atomic_write(filename, lambda f: f.write(text))


class MetricsTable:
  """Appends rows without duplicates; keeps the table in memory."""

  def __init__(self, workdir: str, write: bool = True):
    self.workdir = workdir
    self.write = write  # False: keep rows in memory only (non-lead processes)
    self.rows = read(workdir)
    self._keys = {tuple(r[k] for k in KEY) for r in self.rows}
    self._evaluated = {k[:3] for k in self._keys}

  def has(self, member: str, step: int, evaluator: str) -> bool:
    return (member, step, evaluator) in self._evaluated

  def append(self, rows: list[dict]) -> int:
    """Adds the rows not already present; returns how many were added."""
    fresh = []
    for row in rows:
      key = tuple(row[k] for k in KEY)
      if key not in self._keys:
        self._keys.add(key)
        self._evaluated.add(key[:3])
        fresh.append(row)
    if fresh:
      self.rows.extend(fresh)
    if fresh and self.write:
      with _locked(self.workdir):  # other sweep jobs may append concurrently
        self._merge_from_disk()
        atomic_write_text(path(self.workdir), "".join(
            json.dumps(r) + "\n" for r in self.rows))
    return len(fresh)

  def _merge_from_disk(self):
    """Takes in rows that another process wrote since this table was read."""
    for row in read(self.workdir):
      key = tuple(row[k] for k in KEY)
      if key not in self._keys:
        self._keys.add(key)
        self._evaluated.add(key[:3])
        self.rows.append(row)


@contextlib.contextmanager
def _locked(workdir: str):
  """An exclusive lock on workdir/.metrics.lock (local and shared POSIX
  filesystems; object stores have no locks, and one writer is assumed)."""
  if is_remote(workdir):
    yield
    return
  with open(os.path.join(workdir, ".metrics.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def diverged(rows) -> dict[str, int]:
  """{member: sequences seen when its training diverged}."""
  return {r["member"]: r["sequences"] for r in rows if r["evaluator"] == DIVERGED}


def rows_from(member: str, step: int, sequences: int,
              results: dict[str, dict[str, float]]) -> list[dict]:
  """{evaluator: {metric: value}} -> table rows."""
  return [dict(member=member, step=step, sequences=sequences, evaluator=ev,
               metric=m, value=float(v))
          for ev, metrics in results.items() for m, v in metrics.items()]
