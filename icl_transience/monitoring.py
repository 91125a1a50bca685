"""Live views of a run: TensorBoard event files (on by default) and an
opt-in Weights & Biases logger.

Every row this process appends to metrics.jsonl (the trainer's, and the
checkpoint-sweep job's) also goes to each view:

- TensorBoard: workdir/tensorboard/<member>/, one TensorBoard run per member
  (so `tensorboard --logdir=runs/` overlays a population), scalar
  `<evaluator>/<metric>` at x = sequences seen, and the same value as
  `vs_step/<evaluator>/<metric>` at x = optimizer steps; flushed after each
  evaluation. Written by tensorboardX (no TensorFlow). `log.tensorboard=False`
  turns it off.
- Weights & Biases (`log.wandb=PROJECT`): one W&B run per member (and job),
  grouped by workdir, x = `sequences`, holding the run's config. The run ids
  are kept in workdir/wandb_runs.json, so a resumed workdir logs into the
  same W&B runs. `WANDB_MODE=offline` works without a network (then
  `wandb sync workdir/wandb/offline-run-*`); W&B cannot append to an offline
  run, so there each resumption is a run of its own (same name and group).

The table stays the record: a view is written after the rows are on disk,
and a view that fails warns once and is dropped, never stopping training.
The trainer's TensorBoard view notes the last step it wrote per member
(tensorboard/written.json); on start it first writes the table's rows past
that mark, so a run trained with the view off, or killed between its table
and its view, has no gap. A W&B run new to the workdir first receives its
member's rows.
"""
import collections
import contextlib
import importlib.util
import json
import os
import time
import uuid

import ml_collections
from absl import logging
from etils import epath

from icl_transience import metrics_table
from icl_transience.errors import UserError

TENSORBOARD_DIR = "tensorboard"   # workdir/tensorboard/<member>/
WANDB_IDS = "wandb_runs.json"     # {"<entity>/<project>/<job>/<member>": W&B run id}
WRITTEN = "written.json"          # tensorboard/: {member: last step the trainer wrote}
VS_STEP = "vs_step"               # tag prefix of the optimizer-step view (listed last)


def log_block() -> ml_collections.ConfigDict:
  """The config's `log` block (resumable: a run may change it)."""
  return ml_collections.ConfigDict(dict(
      tensorboard=True,   # workdir/tensorboard/<member>/ event files
      wandb="",           # W&B project ('' = off)
      wandb_entity="",    # W&B entity ('' = your default)
      wandb_group="",     # W&B group ('' = the workdir)
      wandb_tags=(),      # W&B tags
  ))


# The package each view needs: a view whose package is missing is off, with
# one warning; it never stops a run (metrics.jsonl is the record).
VIEW_PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb"}


def missing_view_packages(c) -> dict:
  """{config field: package} of the views the config asks for whose package
  is not installed."""
  asked = {"tensorboard": bool(c.log.tensorboard), "wandb": bool(c.log.wandb)}
  return {field: package for field, package in VIEW_PACKAGES.items()
          if asked[field] and importlib.util.find_spec(package) is None}


def _warn_missing(field: str, package: str):
  logging.warning("log.%s: the %s package is not installed, so this view is off "
                  "(metrics.jsonl is the record; `pip install %s` turns it on)",
                  field, package, package)


def tag(row: dict) -> str:
  return f"{row['evaluator']}/{row['metric']}"


def by_evaluation(rows) -> dict:
  """{(member, step, sequences): [rows]}, in the rows' order."""
  points = collections.defaultdict(list)
  for row in rows:
    points[(row["member"], row["step"], row["sequences"])].append(row)
  return points


class TensorBoard:
  """One event file per member and job under workdir/tensorboard/<member>/:
  one event per (member, evaluation) and view, holding all its scalars,
  written and flushed synchronously."""

  def __init__(self, workdir: str, job: str):
    from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top
    from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    self._open, self._mkdir = event_file_writer.EventsWriter, record_writer.directory_check
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self.root = os.path.join(workdir, TENSORBOARD_DIR)
    self.job = job
    # Two jobs (trainer, sweep job) may write one member's folder at once:
    # each writes its own file (TensorBoard reads them all).
    self.suffix = f".{job}.{os.getpid()}"
    self.writers = {}
    self.written = self._read_written() if job == "train" else {}

  def _read_written(self) -> dict:
    path = epath.Path(self.root) / WRITTEN
    try:  # a cache: when damaged, every row is written again
      return {k: int(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):
      return {}

  def unwritten(self, rows) -> list:
    """The rows past the trainer's mark of their member."""
    return [r for r in rows if r["step"] > self.written.get(r["member"], -1)]

  def write(self, rows):
    points = by_evaluation(rows)
    for (member, step, sequences), group in points.items():
      if member not in self.writers:
        folder = os.path.join(self.root, member)
        self._mkdir(folder)
        self.writers[member] = self._open(os.path.join(folder, "events"), self.suffix)
      for prefix, x in (("", sequences), (f"{VS_STEP}/", step)):
        self.writers[member].write_event(self._event(
            wall_time=time.time(), step=x, summary=self._summary(value=[
                self._summary.Value(tag=prefix + tag(r), simple_value=r["value"])
                for r in group])))
    for member in dict.fromkeys(m for m, _, _ in points):
      self.writers[member].flush()
    if self.job == "train" and points:
      for member, step, _ in points:
        self.written[member] = max(step, self.written.get(member, -1))
      metrics_table.atomic_write_text(os.path.join(self.root, WRITTEN),
                                      json.dumps(self.written) + "\n")

  def close(self, failed: bool = False):
    del failed
    for writer in self.writers.values():
      with contextlib.suppress(Exception):
        writer.close()


def offline() -> bool:
  return os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun")


class WandB:
  """One W&B run per member of this job. Online, a resumed workdir logs
  into the runs whose ids workdir/wandb_runs.json keeps; offline, each
  start is a new run of the same name (W&B cannot append to an offline run)."""

  def __init__(self, c, workdir: str, job: str, names):
    import wandb  # pylint: disable=g-import-not-at-top
    self.runs, self.new = {}, set()
    run_name = os.path.normpath(workdir)[-100:]  # W&B names: 128 characters
    known = read_wandb_ids(workdir)
    ids = {}
    try:
      for name in names:
        key = "/".join((c.log.wandb_entity or "-", c.log.wandb, job, name))
        if key not in known:
          self.new.add(name)
        ids[key] = known.get(key) if key in known and not offline() else uuid.uuid4().hex[:12]
        run = wandb.init(
            project=c.log.wandb, entity=c.log.wandb_entity or None,
            group=c.log.wandb_group or run_name, job_type=job.split("_")[0],
            name=f"{run_name}/{name}" + ("" if job == "train" else f" ({job})"),
            id=ids[key], resume="allow", tags=list(c.log.wandb_tags),
            dir=None if metrics_table.is_remote(workdir) else workdir,
            config=dict(json.loads(c.to_json()), member=name),
            reinit="create_new", settings=wandb.Settings(console="off", silent=True))
        run.define_metric("sequences")
        run.define_metric("*", step_metric="sequences")
        self.runs[name] = run
    except BaseException:
      self.close(failed=True)
      raise
    with metrics_table.locked(workdir):  # other jobs may add their ids
      merged = dict(read_wandb_ids(workdir), **ids)
      metrics_table.atomic_write_text(str(epath.Path(workdir) / WANDB_IDS),
                                      json.dumps(merged, indent=2) + "\n")

  def write(self, rows):
    for (member, step, sequences), group in by_evaluation(rows).items():
      if member in self.runs:  # one W&B step per evaluation
        self.runs[member].log(dict({tag(r): r["value"] for r in group},
                                   sequences=sequences, step=step))

  def close(self, failed: bool = False):
    for run in self.runs.values():
      with contextlib.suppress(Exception):
        run.finish(exit_code=1 if failed else 0)


def read_wandb_ids(workdir: str) -> dict:
  path = epath.Path(workdir) / WANDB_IDS
  if not path.exists():
    return {}
  try:
    ids = json.loads(path.read_text())
  except (OSError, ValueError):
    ids = None
  if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
    # a cache: rebuilt (the runs logged from now on are new W&B runs)
    logging.warning("%s: not a JSON object of W&B run ids; it is rebuilt, so this "
                    "run logs into new W&B runs", path)
    return {}
  return ids


def _first_line(e: BaseException) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


class Views:
  """The views a table's appends go to; a failing view is dropped."""

  def __init__(self):
    self.views = []

  def write(self, rows, views=None):
    if not rows:
      return
    for view in list(self.views if views is None else views):
      try:
        view.write(rows)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("live view %s stopped: %s (metrics.jsonl is unaffected)",
                        type(view).__name__, _first_line(e))
        self.views.remove(view)

  def close(self, failed: bool = False):
    for view in self.views:
      with contextlib.suppress(Exception):
        view.close(failed)


@contextlib.contextmanager
def attached(c, workdir: str, table: metrics_table.MetricsTable, job: str, names):
  """Opens the config's views for this job (train, evaluate, or
  evaluate_<i>of<n> for a shard), sends them every row the table appends
  from now on, and closes them at the end. Before that, the trainer's views
  receive the rows on disk they have not had."""
  live = Views()
  failed = False
  missing = missing_view_packages(c) if table.write else {}
  for field, package in missing.items():
    _warn_missing(field, package)
  try:
    if table.write and c.log.tensorboard and "tensorboard" not in missing:
      live.views.append(TensorBoard(workdir, job))
      if job == "train":
        live.write(live.views[-1].unwritten(table.rows), live.views[-1:])
    if table.write and c.log.wandb and "wandb" not in missing:
      try:
        live.views.append(WandB(c, workdir, job, names))
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise UserError(f"log.wandb: W&B did not start ({_first_line(e)}); "
                        "run `wandb login`, or set WANDB_MODE=offline") from e
      if job == "train":
        new = live.views[-1].new
        live.write([r for r in table.rows if r["member"] in new], live.views[-1:])
    table.listeners.append(live.write)
    yield live
  except BaseException:
    failed = True
    raise
  finally:
    if live.write in table.listeners:
      table.listeners.remove(live.write)
    live.close(failed)
