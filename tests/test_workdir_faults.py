"""Damaged workdir files: a recovery with one warning, or one line naming the
file and what to do, never a traceback."""
import json
import logging
import os

import pytest
from etils import epath

from icl_transience import config as config_lib
from icl_transience import evaluate
from icl_transience import metrics_table
from icl_transience import monitoring
from icl_transience import report
from icl_transience.errors import UserError
from icl_transience.train import loop

from helpers import copy_run, run_cli, smoke_config


def tear_last_line(workdir):
  """Cuts the table's last line in half and ends the file with a newline
  (what a partial copy or sync leaves); returns the torn row."""
  p = metrics_table.path(workdir)
  lines = open(p, encoding="utf-8").read().splitlines()
  with open(p, "w", encoding="utf-8") as f:
    f.write("\n".join(lines[:-1] + [lines[-1][:len(lines[-1]) // 2]]) + "\n")
  return json.loads(lines[-1])


def test_a_torn_last_line_is_ignored_cut_and_re_evaluated_on_resume(
    smoke_run, tmp_path, caplog):
  workdir = copy_run(smoke_run, tmp_path / "run")
  torn = tear_last_line(workdir)
  with caplog.at_level(logging.WARNING):
    rows = metrics_table.read(workdir)  # plot, report, sweep read it so
  assert torn not in rows and len(rows) == len(metrics_table.read(smoke_run)) - 1
  warnings = [r for r in caplog.records if "is not a metrics row" in r.getMessage()]
  assert len(warnings) == 1
  loop.train(smoke_config(total_sequences=1200), workdir)  # a longer horizon
  after = metrics_table.read(workdir)
  key = lambda r: (r["member"], r["step"], r["evaluator"], r["metric"])
  # the evaluators' rows at the restored checkpoint are re-evaluated, bit-exact;
  # the torn row was the training batch's loss of that step, which no
  # checkpoint can give back
  assert torn["evaluator"] == "train_batch" and key(torn) not in map(key, after)
  before = {key(r): r for r in metrics_table.read(smoke_run)}
  assert [r for r in after if r["step"] <= 100] == [
      r for r in before.values() if key(r) != key(torn)]
  assert max(r["sequences"] for r in after) == 1200
  text = open(metrics_table.path(workdir), encoding="utf-8").read()
  assert all(json.loads(line) for line in text.splitlines())  # no torn line left


def test_a_bad_middle_line_is_refused_by_number_and_repair_keeps_every_row(
    smoke_run, tmp_path):
  workdir = copy_run(smoke_run, tmp_path / "run")
  p = metrics_table.path(workdir)
  lines = open(p, encoding="utf-8").read().splitlines()
  damaged = lines[:5] + ["\x00\x17garbage", '["valid JSON", "wrong shape"]'] + lines[5:]
  with open(p, "w", encoding="utf-8") as f:
    f.write("\n".join(damaged) + "\n")
  with pytest.raises(UserError, match=(
      rf"^{p}: line 6 is not a metrics row \('\\x00\\x17garbage'\); `python -m "
      r"icl_transience.metrics_table --repair --workdir=DIR` keeps every good "
      r"row and moves the bad lines to metrics.jsonl.bad$")):
    report.write_report(workdir, report.Settings())
  result = run_cli(["-m", "icl_transience.metrics_table", "--repair",
                    f"--workdir={workdir}"])
  assert result.returncode == 0, result.stderr
  assert result.stdout == (f"{p}: {len(lines)} rows kept; 2 bad lines moved to "
                           f"{p}.bad\n")
  assert open(p + ".bad", encoding="utf-8").read().splitlines() == damaged[5:7]
  assert metrics_table.read(workdir) == metrics_table.read(smoke_run)


@pytest.mark.parametrize("text,detail", [
    ('{"task": "classify", "batch_', "Unterminated string"),
    ("[1, 2]", "a JSON list, not an object")])
def test_a_damaged_config_json_is_one_line(smoke_run, tmp_path, text, detail):
  workdir = copy_run(smoke_run, tmp_path / "run")
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(text)
  with pytest.raises(UserError, match=(
      rf"^{workdir}/config.json: not a run's config \({detail}.*\); restore it "
      r"from a copy, or use a new --workdir$")):
    config_lib.load_run_config(workdir)
  with pytest.raises(UserError, match=r"config.json: not a run's config"):
    loop.train(smoke_config(), workdir)


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("x")
  result = run_cli(["main.py", "--config=configs/smoke.py", f"--workdir={path}"])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --workdir: {path} is a file, not a folder (name a folder for the run)")
  assert "Traceback" not in result.stderr


def damage(path, kind: str):
  """One kind of damage to the file at path."""
  text = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
  if kind == "missing":
    os.remove(path)
  elif kind == "folder":
    os.remove(path)
    os.makedirs(os.path.join(path, "x"))
  else:
    body = {"empty": "", "torn": text[:len(text) // 2],
            "garbage": text[:len(text) // 3] + "\x00\xff garbage\n" + text[len(text) // 3:],
            "shape": "[1, 2, 3]\n" + text}[kind]
    with open(path, "w", encoding="utf-8") as f:
      f.write(body)


RECOVERED, REFUSED = "recovered", "refused"
KINDS = ("missing", "empty", "torn", "garbage", "shape", "folder")
ALL_RECOVERED = {k: (RECOVERED,) * 3 for k in KINDS}
CHECKPOINT_META = "checkpoints/00000100/meta/metadata"
CHECKPOINT_ARRAYS = "checkpoints/00000100/main/_METADATA"
# (file, damage): what (resuming the run to its end, the checkpoint-sweep
# job, report) give; report reads the table as plot, sweep and the windows
# tool do
MATRIX = {
    "metrics.jsonl": {
        "missing": (RECOVERED, RECOVERED, REFUSED), "empty": (RECOVERED, RECOVERED, REFUSED),
        "torn": (RECOVERED,) * 3, "garbage": (REFUSED,) * 3, "shape": (REFUSED,) * 3,
        "folder": (REFUSED,) * 3},
    "config.json": {"missing": (RECOVERED, REFUSED, RECOVERED),
                    # the report reads the run's task (its curves) there
                    **{k: (REFUSED, REFUSED, REFUSED) for k in KINDS[1:]}},
    "tensorboard/written.json": ALL_RECOVERED,
    ".trainer.lock": dict(ALL_RECOVERED, folder=(REFUSED, RECOVERED, RECOVERED)),
    CHECKPOINT_META: ALL_RECOVERED,      # quarantined on resume, skipped by the sweep
    CHECKPOINT_ARRAYS: ALL_RECOVERED,
}


def outcome(fn) -> str:
  try:
    fn()
  except UserError:
    return REFUSED
  return RECOVERED


def evaluated(workdir) -> dict:
  return {(r["step"], r["evaluator"], r["metric"]): r["value"]
          for r in metrics_table.read(workdir) if r["evaluator"] != "train_batch"}


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_every_damage_to_a_workdir_file_is_recovered_or_one_line(
    smoke_run, tmp_path, name):
  """Each kind of damage to one file, on copies of one run: resuming it, the
  checkpoint-sweep job and report either recover or stop with one line (a
  UserError, exit status 2 at the command line), never another exception;
  a recovered table loses nothing the checkpoints hold."""
  tools = (lambda w: loop.train(smoke_config(), w), evaluate.evaluate_checkpoints,
           lambda w: report.write_report(w, report.Settings()))
  for kind, expected in MATRIX[name].items():
    got = []
    for i, tool in enumerate(tools):
      workdir = copy_run(smoke_run, tmp_path / f"{kind}_{i}")
      path = os.path.join(workdir, name)
      if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
          f.write('{"pid": 1}')
      damage(path, kind)
      got.append(outcome(lambda t=tool, w=workdir: t(w)))
      if i < 2 and got[-1] == RECOVERED and name != "config.json":
        if i == 0 and name == "metrics.jsonl":
          evaluate.evaluate_checkpoints(workdir)  # what a lost table held
        assert evaluated(workdir) == pytest.approx(evaluated(smoke_run), abs=1e-6), (
            name, kind, i)
    assert tuple(got) == expected, (name, kind)


@pytest.mark.parametrize("kind", ["empty", "torn", "garbage", "shape", "folder"])
def test_a_damaged_wandb_id_cache_is_rebuilt(tmp_path, kind, caplog):
  path = tmp_path / monitoring.WANDB_IDS
  path.write_text(json.dumps({"-/p/train/main": "abc123"}))
  assert monitoring.read_wandb_ids(str(tmp_path)) == {"-/p/train/main": "abc123"}
  damage(str(path), kind)
  with caplog.at_level(logging.WARNING):
    assert monitoring.read_wandb_ids(str(tmp_path)) == {}
  assert "not a JSON object of W&B run ids; it is rebuilt" in caplog.text


def test_plot_and_ablate_on_damaged_files_recover_or_say_one_line(smoke_run, tmp_path):
  """plot reads the table as report does; ablate reads config.json and one
  checkpoint: a damaged one is one line naming it."""
  from icl_transience import plot  # pylint: disable=g-import-not-at-top
  from icl_transience.proj.transience import ablate  # pylint: disable=g-import-not-at-top
  torn = copy_run(smoke_run, tmp_path / "torn")
  tear_last_line(torn)
  assert plot.plot_runs([torn])  # figures drawn from the whole lines
  garbage = copy_run(smoke_run, tmp_path / "garbage")
  damage(metrics_table.path(garbage), "garbage")
  with pytest.raises(UserError, match=r"metrics.jsonl: line \d+ is not a metrics row"):
    plot.plot_runs([garbage])
  arrays = copy_run(smoke_run, tmp_path / "arrays")
  damage(os.path.join(arrays, CHECKPOINT_ARRAYS), "garbage")
  with pytest.raises(UserError, match=(
      rf"^--workdir: cannot restore {arrays}/checkpoints/00000100/main \(")):
    ablate.ablate(arrays, evaluators=("icl",))
  config = copy_run(smoke_run, tmp_path / "config")
  damage(os.path.join(config, "config.json"), "torn")
  with pytest.raises(UserError, match=r"config.json: not a run's config"):
    ablate.ablate(config, evaluators=("icl",))


def test_a_folder_where_a_figure_goes_is_one_line(smoke_run, tmp_path):
  from icl_transience import plot  # pylint: disable=g-import-not-at-top
  workdir = copy_run(smoke_run, tmp_path / "run")
  figure = os.path.join(workdir, "figures", "curves_main.png")
  os.makedirs(os.path.join(figure, "x"))
  with pytest.raises(UserError, match=(
      rf"^{figure}: cannot write the figure \(.*\); move what is there or "
      r"choose another --out$")):
    plot.plot_runs([workdir])


def test_an_unreadable_config_or_table_is_one_line(smoke_run, tmp_path, monkeypatch):
  """Unreadable permissions (made here by the reading call, since the tests
  may run as root, which reads anything)."""
  workdir = copy_run(smoke_run, tmp_path / "run")
  real = epath.Path.read_text

  def denied(self, *args, **kwargs):
    if self.name in ("config.json", metrics_table.FILENAME):
      raise PermissionError(13, "Permission denied", str(self))
    return real(self, *args, **kwargs)
  monkeypatch.setattr(epath.Path, "read_text", denied)
  with pytest.raises(UserError, match=r"config.json: not a run's config \(\[Errno 13\] "
                     r"Permission denied: .*\); restore it from a copy"):
    config_lib.load_run_config(workdir)
  with pytest.raises(UserError, match=r"metrics.jsonl: cannot read the metrics table "
                     r"\(\[Errno 13\] Permission denied"):
    report.write_report(workdir, report.Settings(), curves=())
