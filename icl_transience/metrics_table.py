"""The run's tidy metrics table: workdir/metrics.jsonl.

One JSON object per line: member, step, sequences, evaluator, metric, value.
Rows are unique on (member, step, evaluator, metric): the training loop and
the checkpoint-sweep job both append, and duplicates are dropped.

Appends are O(new rows): under an exclusive lock (other sweep jobs may
append concurrently) a writer reads only what others appended since its last
read, then appends its new lines in one write and fsyncs. A write that fails
(disk full) is cut back, and a line left partial by a crash is ignored by
readers and cut before the next append, so the table is always whole lines.
A last line that is not a row (torn by a partial copy or sync that then
ended the file with a newline) is treated the same way, with one warning; a
bad line before the last stops every reader with one line naming it, and
`python -m icl_transience.metrics_table --repair --workdir=DIR` keeps every
good row and moves the bad lines to metrics.jsonl.bad. On object stores
(gs://), which cannot append, the one writer replaces the whole object.

  python -m icl_transience.metrics_table --repair --workdir=runs/coop
"""
import contextlib
import fcntl
import json
import os
import tempfile

from absl import logging
from etils import epath

from icl_transience.errors import UserError

FILENAME = "metrics.jsonl"
KEY = ("member", "step", "evaluator", "metric")
# The evaluator of the one row that marks a member whose training diverged
# (metric "step", value = the optimizer steps it took); it has no rows after.
DIVERGED = "diverged"


def path(workdir: str) -> str:
  return str(epath.Path(workdir) / FILENAME)


def is_remote(filename: str) -> bool:
  return "://" in str(filename)  # gs://... and other etils paths


FIELDS = {"member": str, "step": int, "sequences": int, "evaluator": str,
          "metric": str, "value": (int, float)}
BAD_SUFFIX = ".bad"  # --repair moves the bad lines of metrics.jsonl here
_WARNED = set()  # (file, torn line) already warned about


def _row(line: str):
  """The row a line holds, or None when it is not one."""
  try:
    row = json.loads(line)
  except ValueError:
    return None
  ok = isinstance(row, dict) and all(
      isinstance(row.get(k), t) and not isinstance(row.get(k), bool)
      for k, t in FIELDS.items())
  return row if ok else None


def _parse(text: str, where: str) -> tuple[list[dict], int]:
  """The complete lines' rows (text after the last newline is partial), and
  how many characters of text they span: a last line that is not a row
  counts as torn (a warning; left out of the span, so the next append cuts
  it); a bad line before it is refused, naming it."""
  lines = text.split("\n")[:-1]
  rows, span = [], 0
  for number, line in enumerate(lines, 1):
    row = _row(line) if line.strip() else {}
    if row is None and number == len(lines):
      if (where, line) not in _WARNED:  # once per process, not once per read
        _WARNED.add((where, line))
        logging.warning("%s: the last line is not a metrics row (torn by a partial "
                        "write or copy); it is ignored, and cut at the next append",
                        where)
      break
    if row is None:
      raise UserError(
          f"{where}: line {number} is not a metrics row ({line[:40]!r}); "
          "`python -m icl_transience.metrics_table --repair --workdir=DIR` keeps "
          f"every good row and moves the bad lines to {FILENAME}{BAD_SUFFIX}")
    if row:
      rows.append(row)
    span += len(line) + 1
  return rows, span


def read(workdir: str) -> list[dict]:
  p = epath.Path(path(workdir))
  if not p.exists():
    return []
  return _parse(_read_text(p), str(p))[0]


def _read_text(p) -> str:
  try:
    return p.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{p}: cannot read the metrics table ({e})") from e


def repair(workdir: str) -> tuple[int, int]:
  """Keeps every row of the table and moves its other lines to the side
  file (appended); returns (rows kept, lines moved)."""
  p = path(workdir)
  with locked(workdir):
    lines = [l for l in _read_text(epath.Path(p)).split("\n") if l.strip()]
    is_row = [_row(l) is not None for l in lines]
    good = [l for l, ok in zip(lines, is_row) if ok]
    bad = [l for l, ok in zip(lines, is_row) if not ok]
    if bad:
      with open(p + BAD_SUFFIX, "a", encoding="utf-8") as f:
        f.write("".join(l + "\n" for l in bad))
      atomic_write_text(p, "".join(l + "\n" for l in good))
  return len(good), len(bad)


REPORT_FILENAME = "report.json"  # what `python -m icl_transience.report` writes


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
    # Called with the rows this table appends, once they are on disk (the
    # live views of monitoring.py).
    self.listeners = []
    self.rows, self._keys, self._evaluated = [], set(), set()
    self._file = (None, 0)  # (inode, bytes of whole lines) read so far
    self._take(self._read_new())

  def has(self, member: str, step: int, evaluator: str) -> bool:
    return (member, step, evaluator) in self._evaluated

  def append(self, rows: list[dict]) -> int:
    """Adds the rows not already present; returns how many were added."""
    if not self.write:
      return len(self._take(rows))
    if is_remote(self.workdir):
      self._take(self._read_new())  # the sweep job's or the trainer's rows
      fresh = self._take(rows)
      if fresh:
        atomic_write_text(path(self.workdir), "".join(
            json.dumps(r) + "\n" for r in self.rows))
    else:
      with locked(self.workdir):
        self._take(self._read_new())  # what other jobs appended meanwhile
        fresh = self._take(rows)
        if fresh:
          self._append_lines("".join(json.dumps(r) + "\n" for r in fresh))
    for listener in self.listeners:
      listener(fresh)
    return len(fresh)

  def _take(self, rows) -> list[dict]:
    """Keeps the rows whose key is new; returns them."""
    fresh = []
    for row in rows:
      key = tuple(row[k] for k in KEY)
      if key not in self._keys:
        self._keys.add(key)
        self._evaluated.add(key[:3])
        fresh.append(row)
    self.rows.extend(fresh)
    return fresh

  def _read_new(self) -> list[dict]:
    """Rows of the whole lines written since the last read (all of them if
    the file was replaced)."""
    p = path(self.workdir)
    if is_remote(p):
      return read(self.workdir)
    try:
      f = open(p, "rb")
    except FileNotFoundError:
      return []
    except OSError as e:
      raise UserError(f"{p}: cannot read the metrics table ({e})") from e
    with f:
      inode, done = self._file
      info = os.fstat(f.fileno())
      if info.st_ino != inode or info.st_size < done:  # replaced, or cut
        done = 0
      f.seek(done)
      data = f.read()
      whole = data[:data.rfind(b"\n") + 1].decode(errors="replace")
      rows, span = _parse(whole, p)
      self._file = (os.fstat(f.fileno()).st_ino, done + len(whole[:span].encode()))
    return rows

  def _append_lines(self, text: str):
    """Appends whole lines after the last whole line read (a partial line
    left by a crash is cut); a failed write is cut back."""
    fd = os.open(path(self.workdir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      inode, done = self._file
      info = os.fstat(fd)
      if info.st_ino != inode or info.st_size < done:  # a new or cut file
        done = 0
      os.ftruncate(fd, done)
      os.lseek(fd, done, os.SEEK_SET)
      try:
        _write_all(fd, text.encode())
        os.fsync(fd)
      except OSError:
        os.ftruncate(fd, done)
        raise
      self._file = (os.fstat(fd).st_ino, done + len(text.encode()))
    finally:
      os.close(fd)


def _write_all(fd: int, data: bytes):
  while data:
    data = data[os.write(fd, data):]


@contextlib.contextmanager
def locked(workdir: str):
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


def main():
  """python -m icl_transience.metrics_table --repair --workdir=DIR"""
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description="Repairs a run's metrics table.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--repair", action="store_true", required=True,
                      help="keep every good row; move the other lines aside")
  args = parser.parse_args()
  if not os.path.isfile(path(args.workdir)):
    print(f"error: --workdir: no {FILENAME} in {args.workdir}", file=sys.stderr)
    sys.exit(2)
  try:
    kept, moved = repair(args.workdir)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"{path(args.workdir)}: {kept} rows kept; {moved} bad lines "
        + (f"moved to {path(args.workdir)}{BAD_SUFFIX}" if moved else "(nothing to do)"))


if __name__ == "__main__":
  main()
