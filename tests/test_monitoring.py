"""Live views: TensorBoard event files and the W&B logger hold exactly the
metrics rows; the population overview figure draws them."""
import glob
import json
import os
import shutil
import struct
import time

import numpy as np
import pytest

from icl_transience import config as config_lib
from icl_transience import evaluate
from icl_transience import metrics_table
from icl_transience import monitoring
from icl_transience import tasks
from icl_transience.analysis import figures
from icl_transience.errors import UserError
from icl_transience.train import loop

from helpers import copy_run, smoke_config, table_curve

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tests read event files with TensorBoard (the test extra)")

POPULATION = "init_seed=1; init_seed=2"
NAMES = ["init_seed1", "init_seed2"]


@pytest.fixture(scope="module")
def population_run(tmp_path_factory):
  """A finished two-member smoke run (TensorBoard on, the default)."""
  workdir = str(tmp_path_factory.mktemp("population") / "run")
  loop.train(smoke_config(population=POPULATION), workdir)
  return workdir


def scalars(path) -> dict:
  """{(tag, step): value} of an event file or folder, read by TensorBoard."""
  acc = event_accumulator.EventAccumulator(
      str(path), size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["scalars"]:
    for event in acc.Scalars(tag):
      assert (tag, event.step) not in out, (tag, event.step)  # each once
      out[(tag, event.step)] = event.value
  return out


def expected(rows, member) -> dict:
  """The two views of a member's rows, as float32 like TensorBoard's scalars."""
  out = {}
  for r in rows:
    if r["member"] == member:
      tag = f"{r['evaluator']}/{r['metric']}"
      out[(tag, r["sequences"])] = np.float32(r["value"])
      out[(f"vs_step/{tag}", r["step"])] = np.float32(r["value"])
  return out


def test_tensorboard_holds_exactly_the_rows_of_a_population(population_run):
  rows = metrics_table.read(population_run)
  assert {r["member"] for r in rows} == set(NAMES)
  assert sorted(os.listdir(os.path.join(population_run, "tensorboard"))) == NAMES + [
      "written.json"]
  for member in NAMES:
    got = scalars(os.path.join(population_run, "tensorboard", member))
    assert got == expected(rows, member)
    assert ("icl/in_context_acc", 800) in got and ("vs_step/icl/in_context_acc", 100) in got


def test_the_sweep_job_writes_its_rows_to_tensorboard(population_run, tmp_path):
  workdir = copy_run(population_run, tmp_path / "run")
  trainer_files = {p: open(p, "rb").read() for p in glob.glob(
      os.path.join(workdir, "tensorboard", "*", "*.train.*"))}
  trained = metrics_table.read(workdir)
  metrics_table.atomic_write_text(metrics_table.path(workdir), "".join(
      json.dumps(r) + "\n" for r in trained if r["evaluator"] == "train_batch"))
  assert evaluate.evaluate_checkpoints(workdir) == 6  # 2 members x 3 checkpoints
  swept = [r for r in metrics_table.read(workdir) if r["evaluator"] != "train_batch"]
  assert len(swept) == len(trained) - sum(r["evaluator"] == "train_batch" for r in trained)
  for member in NAMES:
    folder = os.path.join(workdir, "tensorboard", member)
    (sweep_file,) = glob.glob(os.path.join(folder, "*.evaluate.*"))
    assert scalars(sweep_file) == expected(swept, member)
    assert len(os.listdir(folder)) == 2  # TensorBoard reads both files
  assert len(trainer_files) == 2 and all(  # the trainer's files are untouched
      open(p, "rb").read() == data for p, data in trainer_files.items())


def test_a_new_tensorboard_view_first_receives_the_rows_on_disk(population_run, tmp_path):
  """A run trained with TensorBoard off (or before it existed) gets its
  whole table when the view is opened on it; a run killed between its table
  and its view gets the rows past the view's mark; non-lead processes and
  log.tensorboard=False write nothing."""
  workdir = copy_run(population_run, tmp_path / "run")
  shutil.rmtree(os.path.join(workdir, "tensorboard"))
  c = smoke_config(population=POPULATION)
  for table, log in ((metrics_table.MetricsTable(workdir, write=False), True),
                     (metrics_table.MetricsTable(workdir), False)):
    c.log.tensorboard = log
    with monitoring.attached(c, workdir, table, "train", NAMES):
      table.append([dict(table.rows[0], step=7, sequences=56)])
    assert not os.path.exists(os.path.join(workdir, "tensorboard"))
  c.log.tensorboard = True
  table = metrics_table.MetricsTable(workdir)
  with monitoring.attached(c, workdir, table, "train", NAMES):
    pass
  for member in NAMES:
    got = scalars(os.path.join(workdir, "tensorboard", member))
    assert got == expected(table.rows, member)
  # killed after the step-50 evaluation reached the view, before step 100 did
  shutil.rmtree(os.path.join(workdir, "tensorboard"))
  os.makedirs(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "tensorboard", "written.json"), "w") as f:
    json.dump({NAMES[0]: 50}, f)
  with monitoring.attached(c, workdir, table, "train", NAMES):
    pass
  late = [r for r in table.rows if r["member"] != NAMES[0] or r["step"] > 50]
  for member in NAMES:
    assert scalars(os.path.join(workdir, "tensorboard", member)) == expected(late, member)
  marks = json.loads(open(os.path.join(workdir, "tensorboard", "written.json")).read())
  assert marks == {NAMES[0]: 100, NAMES[1]: 100}


def test_each_evaluation_is_on_disk_when_the_append_returns(tmp_path):
  view = monitoring.TensorBoard(str(tmp_path), "train")
  rows = [dict(member="m", step=s, sequences=8 * s, evaluator="icl", metric="acc",
               value=0.5 + s / 100) for s in (1, 2)]
  view.write(rows[:1])
  (path,) = glob.glob(str(tmp_path / "tensorboard" / "m" / "events*"))
  assert scalars(path) == expected(rows[:1], "m")  # read before close()
  view.write(rows[1:])
  assert scalars(path) == expected(rows, "m")
  view.close()


def test_a_resumed_run_writes_each_evaluation_once(population_run, tmp_path):
  workdir = copy_run(population_run, tmp_path / "run")
  loop.train(smoke_config(population=POPULATION, total_sequences=1200), workdir)
  rows = metrics_table.read(workdir)
  assert max(r["sequences"] for r in rows) == 1200
  for member in NAMES:
    folder = os.path.join(workdir, "tensorboard", member)
    assert len(os.listdir(folder)) == 2  # the first run's file and the resumed run's
    assert scalars(folder) == expected(rows, member)  # each (tag, step) once


def wandb_history(run_dir) -> list[dict]:
  """The history rows of an offline W&B run: its .wandb file is a LevelDB
  log (32 KiB blocks; 7-byte record headers: crc, length, type) of Record
  protos after a 7-byte W&B header."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B"
  records, pending, offset, block = [], b"", 7, 32768
  while offset + 7 <= len(data):
    if block - offset % block < 7:  # a block's tail too short for a header
      offset += block - offset % block
      continue
    _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
    pending += data[offset + 7:offset + 7 + length]
    offset += 7 + length
    if kind in (1, 4):  # a full record, or the last piece of one
      records.append(wandb_internal_pb2.Record.FromString(pending))
      pending = b""
  return [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
           for item in r.history.item}
          for r in records if r.WhichOneof("record_type") == "history"]


def logged_points(run_dirs) -> list:
  """Every (tag, sequences, step, value) the runs' histories hold."""
  return [(key, p["sequences"], p["step"], value)
          for run_dir in run_dirs for p in wandb_history(run_dir)
          for key, value in p.items()
          if not key.startswith("_") and key not in ("sequences", "step")]


def settled_points(run_dirs, expected, seconds: float = 30.0) -> list:
  """logged_points, read again until they equal `expected` or `seconds`
  pass: W&B's own service may still be writing an offline run's file
  after finish() returns."""
  deadline = time.monotonic() + seconds
  while True:
    points = sorted(logged_points(run_dirs))
    if points == expected or time.monotonic() > deadline:
      return points
    time.sleep(0.5)


def as_points(rows, member) -> list:
  return [(f"{r['evaluator']}/{r['metric']}", r["sequences"], r["step"], r["value"])
          for r in rows if r["member"] == member]


def test_wandb_offline_logs_the_rows_per_member_resumes_and_takes_the_sweep_job(
    tmp_path, monkeypatch):
  pytest.importorskip("wandb", reason="the optional wandb package is not installed")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  workdir = str(tmp_path / "run")
  c = smoke_config(population=POPULATION, total_sequences=400)
  c.log.update(wandb="icl-test", wandb_tags=("smoke",), tensorboard=False)
  loop.train(c, workdir)
  keys = [f"-/icl-test/train/{n}" for n in NAMES]
  first = monitoring.read_wandb_ids(workdir)
  assert sorted(first) == keys
  c.total_sequences = 800  # resumed offline: a new W&B run of the same name
  loop.train(c, workdir)
  second = monitoring.read_wandb_ids(workdir)
  assert sorted(second) == keys and all(first[k] != second[k] for k in keys)
  assert not os.path.exists(os.path.join(workdir, "tensorboard"))
  rows = metrics_table.read(workdir)
  for member, key in zip(NAMES, keys):
    runs = [glob.glob(os.path.join(workdir, "wandb", f"offline-run-*-{ids[key]}"))[0]
            for ids in (first, second)]
    # every row once, none twice, across the run and its resumption
    expected = sorted(as_points(rows, member))
    assert settled_points(runs, expected) == expected
  # the checkpoint-sweep job logs its rows to W&B runs of its own
  metrics_table.atomic_write_text(metrics_table.path(workdir), "".join(
      json.dumps(r) + "\n" for r in rows if r["member"] != NAMES[0]))
  assert evaluate.evaluate_checkpoints(workdir) == 3
  ids = monitoring.read_wandb_ids(workdir)
  assert sorted(ids) == sorted(keys + [f"-/icl-test/evaluate/{NAMES[0]}"])
  (sweep_run,) = glob.glob(os.path.join(
      workdir, "wandb", f"offline-run-*-{ids[f'-/icl-test/evaluate/{NAMES[0]}']}"))
  swept = [r for r in metrics_table.read(workdir) if r["member"] == NAMES[0]]
  expected = sorted(as_points(swept, NAMES[0]))
  assert settled_points([sweep_run], expected) == expected


def test_a_wandb_run_that_cannot_start_is_one_line(tmp_path, monkeypatch):
  wandb = pytest.importorskip("wandb", reason="the optional wandb package is not installed")
  def refuse(**kwargs):
    raise wandb.errors.UsageError("api_key not configured (no-tty)\nmore")
  monkeypatch.setattr(wandb, "init", refuse)
  c = smoke_config()
  c.log.update(wandb="p", tensorboard=False)
  table = metrics_table.MetricsTable(str(tmp_path))
  with pytest.raises(UserError, match=r"^log.wandb: W&B did not start \(api_key "
                     r"not configured \(no-tty\)\); run `wandb login`"):
    with monitoring.attached(c, str(tmp_path), table, "train", ["main"]):
      pass
  assert not os.path.exists(os.path.join(tmp_path, monitoring.WANDB_IDS))
  assert table.listeners == []


@pytest.mark.parametrize("field,package", [("tensorboard", "tensorboardX"),
                                           ("wandb", "wandb")])
def test_a_missing_view_package_turns_that_view_off_with_one_warning(
    field, package, tmp_path, monkeypatch, caplog):
  c = smoke_config()
  c.log.update(tensorboard=field == "tensorboard", wandb="p" if field == "wandb" else "")
  find_spec = monitoring.importlib.util.find_spec
  monkeypatch.setattr(monitoring.importlib.util, "find_spec",
                      lambda name, *a: None if name == package else find_spec(name, *a))
  config_lib.validate(c, n_devices=1)  # the config is still accepted
  table = metrics_table.MetricsTable(str(tmp_path))
  row = dict(member="main", step=1, sequences=32, evaluator="icl",
             metric="acc", value=0.5)
  with monitoring.attached(c, str(tmp_path), table, "train", ["main"]) as live:
    assert live.views == []
    table.append([row])
  assert metrics_table.read(str(tmp_path)) == [row]
  assert not os.path.exists(tmp_path / monitoring.TENSORBOARD_DIR)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert warnings == [f"log.{field}: the {package} package is not installed, so "
                      "this view is off (metrics.jsonl is the record; "
                      f"`pip install {package}` turns it on)"]


def test_a_failing_view_warns_once_and_the_others_go_on(caplog):
  class Broken:
    def write(self, rows):
      raise OSError(28, "No space left on device")

  class Kept:
    def __init__(self):
      self.rows = []

    def write(self, rows):
      self.rows += rows

  kept = Kept()
  views = monitoring.Views()
  views.views += [Broken(), kept]
  views.write([{"a": 1}])
  views.write([{"a": 2}])
  assert kept.rows == [{"a": 1}, {"a": 2}] and views.views == [kept]
  warnings = [r.getMessage() for r in caplog.records if "live view" in r.getMessage()]
  assert warnings == ["live view Broken stopped: [Errno 28] No space left on "
                      "device (metrics.jsonl is unaffected)"]


def test_the_population_figure_draws_every_member_and_their_mean(
    population_run, tmp_path, monkeypatch):
  drawn = {}
  save = figures.save

  def capture(fig, path):
    drawn[os.path.basename(path)] = {
        ax.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                         for line in ax.get_lines()} for ax in fig.axes}
    save(fig, path)
  monkeypatch.setattr(figures, "save", capture)
  rows = metrics_table.read(population_run)
  paths = figures.plot_run(rows, str(tmp_path / "figs"), tasks.curves(smoke_config()))
  assert os.path.basename(paths[0]) == "population.png"
  panels = drawn["population.png"]
  evaluators = sorted({r["evaluator"] for r in rows})
  assert len([t for t in panels if t]) == len(evaluators)
  for evaluator, metric in (("flip_icl", "in_context_acc"), ("pure_iwl", "acc")):
    lines = panels[f"{evaluator}: {metric}"]
    curves = [table_curve(rows, m, evaluator, metric) for m in NAMES]
    for member, curve in zip(NAMES, curves):
      assert lines[member] == tuple(map(list, curve))
    np.testing.assert_allclose(lines["mean"][1], np.mean([y for _, y in curves], 0))
    assert lines["mean"][0] == curves[0][0]
  # one member: no population figure
  one = [r for r in rows if r["member"] == NAMES[0]]
  assert "population.png" not in [os.path.basename(p) for p in
                                  figures.plot_run(one, str(tmp_path / "one"))]
