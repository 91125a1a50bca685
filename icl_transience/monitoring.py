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
  `wandb sync workdir/wandb/offline-run-*`).

The table stays the record: a view is written after the rows are on disk,
and a view that fails warns once and is dropped, never stopping training. A
view opened on a workdir whose table already has rows (a run started before
the view was turned on) first receives those rows.
"""
import collections
import contextlib
import importlib.util
import json
import os
import uuid

import ml_collections
from absl import logging
from etils import epath

from icl_transience import metrics_table
from icl_transience.errors import UserError

TENSORBOARD_DIR = "tensorboard"   # workdir/tensorboard/<member>/
WANDB_IDS = "wandb_runs.json"     # {"<job>/<member>": W&B run id}
VS_STEP = "vs_step"               # tag prefix of the optimizer-step view (listed last)


def log_block() -> ml_collections.ConfigDict:
  """The config's `log` block (resumable: a run may change it)."""
  return ml_collections.ConfigDict(dict(
      tensorboard=True,   # workdir/tensorboard/<member>/ event files
      wandb="",           # W&B project ('' = off)
      wandb_entity="",    # W&B entity ('' = your default)
      wandb_group="",     # W&B group ('' = the workdir's name)
      wandb_tags=(),      # W&B tags
  ))


def validate(c):
  """Refuses a W&B logger whose package is missing (one line, no import)."""
  if c.log.wandb and importlib.util.find_spec("wandb") is None:
    raise UserError("log.wandb: the wandb package is not installed "
                    "(pip install 'icl_transience[wandb]', or leave log.wandb empty)")


def tag(row: dict) -> str:
  return f"{row['evaluator']}/{row['metric']}"


class TensorBoard:
  """One tensorboardX event file per member, under workdir/tensorboard/:
  one event per (member, evaluation) and view, holding all its scalars."""

  def __init__(self, workdir: str, job: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    self._file_writer, self._summary = tensorboardX.FileWriter, summary_pb2.Summary
    self.root = os.path.join(workdir, TENSORBOARD_DIR)
    # Two jobs (trainer, sweep job) may write one member's folder at once:
    # each writes its own file (TensorBoard reads them all).
    self.suffix = f".{job}.{os.getpid()}"
    self.writers = {}

  def write(self, rows):
    points = collections.defaultdict(list)
    for row in rows:
      points[(row["member"], row["step"], row["sequences"])].append(row)
    for (member, step, sequences), group in points.items():
      if member not in self.writers:
        self.writers[member] = self._file_writer(
            os.path.join(self.root, member), flush_secs=3600,
            filename_suffix=self.suffix)
      for prefix, x in (("", sequences), (f"{VS_STEP}/", step)):
        self.writers[member].add_summary(self._summary(value=[
            self._summary.Value(tag=prefix + tag(r), simple_value=r["value"])
            for r in group]), global_step=x)
    for member in dict.fromkeys(m for m, _, _ in points):
      self.writers[member].flush()

  def close(self):
    for writer in self.writers.values():
      writer.close()


class WandB:
  """One W&B run per member of this job, resumed from workdir/wandb_runs.json."""

  def __init__(self, c, workdir: str, job: str, names):
    import wandb  # pylint: disable=g-import-not-at-top
    self.runs, self.new = {}, set()
    ids_path = os.path.join(workdir, WANDB_IDS)
    ids = read_wandb_ids(workdir)
    run_name = os.path.basename(os.path.normpath(workdir))
    for name in names:
      key = f"{job}/{name}"
      if key not in ids:
        ids[key] = uuid.uuid4().hex[:12]
        self.new.add(name)
        metrics_table.atomic_write_text(ids_path, json.dumps(ids, indent=2) + "\n")
      run = wandb.init(
          project=c.log.wandb, entity=c.log.wandb_entity or None,
          group=c.log.wandb_group or run_name, job_type=job,
          name=f"{run_name}/{name}" + ("" if job == "train" else f" ({job})"),
          id=ids[key], resume="allow", tags=list(c.log.wandb_tags), dir=workdir,
          config=dict(json.loads(c.to_json()), member=name),
          reinit="create_new", settings=wandb.Settings(console="off", silent=True))
      run.define_metric("sequences")
      run.define_metric("*", step_metric="sequences")
      self.runs[name] = run

  def write(self, rows):
    points = collections.defaultdict(dict)  # one W&B step per evaluation
    for row in rows:
      points[(row["member"], row["step"], row["sequences"])][tag(row)] = row["value"]
    for (member, step, sequences), values in points.items():
      if member in self.runs:
        self.runs[member].log(dict(values, sequences=sequences, step=step))

  def close(self):
    for run in self.runs.values():
      run.finish()


def read_wandb_ids(workdir: str) -> dict:
  path = epath.Path(workdir) / WANDB_IDS
  if not path.exists():
    return {}
  try:
    ids = json.loads(path.read_text())
  except ValueError as e:
    raise UserError(f"{path}: not a JSON object of W&B run ids ({e})") from e
  if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
    raise UserError(f"{path}: not a JSON object of W&B run ids")
  return ids


def _first_line(e: Exception) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


class Views:
  """The views a table's appends go to; a failing view is dropped."""

  def __init__(self, views):
    self.views = list(views)

  def write(self, rows):
    if not rows:
      return
    for view in list(self.views):
      try:
        view.write(rows)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("live view %s stopped: %s (metrics.jsonl is unaffected)",
                        type(view).__name__, _first_line(e))
        self.views.remove(view)

  def close(self):
    for view in self.views:
      with contextlib.suppress(Exception):
        view.close()


@contextlib.contextmanager
def attached(c, workdir: str, table: metrics_table.MetricsTable, job: str, names):
  """Opens the config's views for this job, sends them every row the table
  appends from now on, and closes them at the end. Rows already in the
  table go to a view that is new to the workdir (only for the trainer: the
  sweep job's views start empty)."""
  views = []
  if table.write:
    if c.log.tensorboard:
      fresh = not epath.Path(os.path.join(workdir, TENSORBOARD_DIR)).exists()
      views.append(TensorBoard(workdir, job))
      if fresh and job == "train":
        views[-1].write(table.rows)
    if c.log.wandb:
      validate(c)
      try:
        views.append(WandB(c, workdir, job, names))
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise UserError(f"log.wandb: W&B did not start ({_first_line(e)}); "
                        "run `wandb login`, or set WANDB_MODE=offline") from e
      if job == "train":
        views[-1].write([r for r in table.rows if r["member"] in views[-1].new])
  live = Views(views)
  table.listeners.append(live.write)
  try:
    yield live
  finally:
    table.listeners.remove(live.write)
    live.close()
