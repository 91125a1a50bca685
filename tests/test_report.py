"""The transience detector: verdicts, peak / final numbers, report.json, the
figure, threshold boundaries and one-line errors."""
import json
import os

import pytest

from helpers import run_cli
from icl_transience import metrics_table
from icl_transience import report
from icl_transience.analysis import figures
from icl_transience.errors import UserError
from icl_transience.proj.transience import spec as classifier

BATCH = 32
# In-context ICL accuracy at evaluations 0..6 (every 1 M sequences).
ICL_CURVES = {
    "transient": [0.5, 0.6, 0.9, 0.8, 0.7, 0.6, 0.55],
    "persistent": [0.5, 0.7, 0.85, 0.9, 0.9, 0.88, 0.89],
    "flat": [0.5, 0.52, 0.55, 0.53, 0.51, 0.5, 0.5],
}
PURE_IWL_ACC = [0.0, 0.0, 0.1, 0.3, 0.5, 0.6, 0.7]


def write_metrics(workdir):
  rows = []
  for member, icl in ICL_CURVES.items():
    for i, value in enumerate(icl):
      step = i * 1_000_000 // BATCH
      rows += metrics_table.rows_from(member, step, step * BATCH, {
          "icl": {"in_context_acc": value, "acc": 0.0},
          "pure_iwl": {"in_context_acc": 0.0, "acc": PURE_IWL_ACC[i]},
          "train_batch": {"loss": 3.0 / (1 + i), "acc": 0.4}})
  metrics_table.atomic_write_text(metrics_table.path(str(workdir)),
                                  "".join(json.dumps(r) + "\n" for r in rows))


def by_member(rows, evaluator):
  return {r["member"]: r for r in rows if r["evaluator"] == evaluator}


def test_verdicts_numbers_json_and_figures(tmp_path, capsys, monkeypatch):
  write_metrics(tmp_path)
  drawn = {}
  save = figures.save

  def capture(fig, path):
    drawn[os.path.basename(path)] = {
        line.get_label(): list(line.get_ydata()) for ax in fig.axes
        for line in ax.get_lines() if not line.get_label().startswith("_")}
    save(fig, path)
  monkeypatch.setattr(figures, "save", capture)
  result = report.write_report(str(tmp_path), report.Settings(),
                               classifier.CLASSIFIER_CURVES)
  printed = capsys.readouterr().out
  icl = by_member(result["transience"], "icl")
  assert {m: r["verdict"] for m, r in icl.items()} == {
      "transient": "transient", "persistent": "persistent", "flat": "never emerged"}
  t = icl["transient"]
  assert (t["peak"], t["final"], t["peak_sequences"], t["peak_step"]) == (
      0.9, 0.55, 2_000_000, 2_000_000 // BATCH)
  assert (t["final_sequences"], t["chance"], t["metric"]) == (6_000_000, 0.5,
                                                              "in_context_acc")
  assert t["decay"] == pytest.approx(0.35)
  p = icl["persistent"]
  assert (p["peak"], p["peak_sequences"], p["final"]) == (0.9, 3_000_000, 0.89)
  assert icl["flat"]["peak"] == 0.55
  # pure_iwl is read from the full-vocabulary acc (chance 0); train_batch has
  # no in-context accuracy and is left out.
  iwl = by_member(result["transience"], "pure_iwl")["transient"]
  assert (iwl["metric"], iwl["chance"], iwl["peak"], iwl["verdict"]) == (
      "acc", 0.0, 0.7, "persistent")
  assert len(result["transience"]) == 6
  saved = json.loads((tmp_path / report.REPORT_FILENAME).read_text())
  assert saved == result and saved["settings"]["emerge"] == 0.2
  for member in ICL_CURVES:
    figure = tmp_path / "figures" / f"transience_{member}.png"
    assert figure.stat().st_size > 10_000 and str(figure) in printed
  # each figure draws the member's curves as logged, labelled with verdicts
  lines = drawn["transience_transient.png"]
  assert lines["icl: transient"] == ICL_CURVES["transient"]
  assert lines["pure_iwl: persistent"] == PURE_IWL_ACC
  assert lines["train (batch)"] == [3.0 / (1 + i) for i in range(7)]
  assert "never emerged" in printed and "decay" in printed
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_each_curve_of_a_transience_figure_has_its_own_colour(tmp_path, monkeypatch):
  # pairs_icl has a fixed colour; the evaluators without one (b2_train_eval,
  # a plug-in) must not be given the same one
  names = ("icl", "flip_icl", "pairs_icl", "iwl_copy_avail", "b2_train_eval", "extra")
  rows = [r for step in (0, 1) for r in metrics_table.rows_from(
      "main", step, step * BATCH, {**{n: {"in_context_acc": 0.5} for n in names},
                                   "train_batch": {"loss": 1.0}})]
  colours = {}
  monkeypatch.setattr(figures, "save", lambda fig, path: colours.update(
      {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()
       if not line.get_label().startswith("_")}))
  task_colours = {c.evaluator: c.colour for c in classifier.CLASSIFIER_CURVES}
  figures.transience_figure(rows, "main", [(n, "in_context_acc", n, (0, 0.5))
                                           for n in names], str(tmp_path / "f.png"),
                            task_colours)
  assert set(colours) == set(names)
  assert len(set(colours.values())) == len(names)


@pytest.mark.parametrize("peak,final,expected", [
    (0.59, 0.59, "never emerged"),   # below chance + 0.2 * 0.5
    (0.6, 0.6, "persistent"),        # exactly at the emergence threshold
    (0.9, 0.81, "persistent"),       # fell by 0.09 < 0.2 * 0.5
    (0.9, 0.8, "transient"),         # fell by exactly 0.1
    (0.9, 0.3, "transient"),         # fell below chance
])
def test_verdict_thresholds(peak, final, expected):
  assert report.verdict(peak, final, 0.5, report.Settings()) == expected


def test_thresholds_scale_with_chance_and_flags():
  settings = report.Settings(metric="acc", emerge=0.5, decay=0.5)
  assert report.verdict(0.45, 0.45, 0.0, settings) == "never emerged"
  assert report.verdict(0.9, 0.45, 0.0, settings) == "persistent"
  assert report.verdict(0.9, 0.4, 0.0, settings) == "transient"
  assert report.chance_level("acc", settings) == 0.0
  assert report.chance_level("loss", report.Settings(chance=0.25)) == 0.25
  with pytest.raises(UserError, match="--chance"):
    report.chance_level("loss", settings)
  with pytest.raises(UserError, match="--decay"):
    report.Settings(decay=0).validate()


def test_sections_pick_the_longest_prefix(monkeypatch):
  other = report.Section("other", report.transience, ("member",))
  monkeypatch.setitem(report.SECTIONS, "lds_", other)
  assert report.section_for("lds_tokens") is other
  assert report.section_for("icl") is report.TRANSIENCE


def test_cli_metric_flag_and_one_line_errors(tmp_path):
  write_metrics(tmp_path)
  result = run_cli(["-m", "icl_transience.report", f"--workdir={tmp_path}",
                    "--metric=acc", "--emerge=0.5"], timeout=60)
  assert result.returncode == 0, result.stderr
  rows = json.loads((tmp_path / report.REPORT_FILENAME).read_text())["transience"]
  assert {r["metric"] for r in rows} == {"acc"}
  assert by_member(rows, "train_batch")["flat"]["verdict"] == "never emerged"
  assert by_member(rows, "pure_iwl")["flat"]["verdict"] == "persistent"
  missing = run_cli(["-m", "icl_transience.report", f"--workdir={tmp_path / 'nope'}"],
                    timeout=60)
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines() == [
      f"error: --workdir: no metrics in {tmp_path / 'nope'} (metrics.jsonl missing or empty)"]
  lds_run = tmp_path / "lds"
  lds_run.mkdir()
  (lds_run / "config.json").write_text('{"task": "lds"}')
  ignored = run_cli(["-m", "icl_transience.report", f"--workdir={lds_run}",
                     "--emerge=0.3"], timeout=60)
  assert ignored.returncode == 2
  assert ignored.stderr.strip().splitlines() == [
      "error: --emerge: applies to the curve report, not to the lds task's "
      "own report"]
  (tmp_path / "metrics.jsonl").write_text("{not json\n{not json either\n")
  with pytest.raises(UserError, match=r"metrics.jsonl: line 1 is not a metrics row "
                     r"\('\{not json'\); `python -m icl_transience.metrics_table"):
    report.write_report(str(tmp_path), report.Settings())
  write_metrics(tmp_path)
  with pytest.raises(UserError, match="--metric: no evaluator logs 'nope'"):
    report.write_report(str(tmp_path), report.Settings(metric="nope", chance=0.5))


def test_plot_against_a_config_field_gives_each_runs_peak_and_decay(tmp_path):
  """One point per run: the curve's peak (earliest step reaching it) and the
  first later evaluation at or below peak - drop, or none by the horizon;
  a range field counts its size; a curve never above chance (the report's
  rule) gets no decay time; one line for a missing or non-number field."""
  from icl_transience import plot  # pylint: disable=g-import-not-at-top
  from icl_transience.train import loop  # pylint: disable=g-import-not-at-top
  from helpers import smoke_config  # pylint: disable=g-import-not-at-top
  flips = {8: [0.5, 0.8, 0.9, 0.85, 0.8, 0.7],     # falls 0.1 at the 4th point
           16: [0.5, 0.6, 0.9, 0.9, 0.85, 0.81],   # not 0.1 below by the end
           32: [0.5, 0.6, 0.7, 0.7, 0.65, 0.6],    # exactly 0.1 below: fallen
           64: [0.5, 0.45, 0.3, 0.2, 0.2, 0.1]}    # never above chance
  workdirs = []
  for n, flip in flips.items():
    workdir = str(tmp_path / f"c{n}")
    os.makedirs(workdir)
    loop.save_config(smoke_config(**{"train.n_classes": n,
                                     "train.exemplars": (0, n // 8)}), workdir)
    rows = []
    for i, value in enumerate(flip):
      rows += metrics_table.rows_from("main", i * 100, i * 100 * BATCH,
                                      {"flip_icl": {"in_context_acc": value}})
    metrics_table.atomic_write_text(metrics_table.path(workdir), "".join(
        json.dumps(r) + "\n" for r in rows))
    workdirs.append(workdir)
  out = str(tmp_path / "against.png")
  lines = plot.plot_runs(workdirs, "flip_icl:in_context_acc", out,
                         "train.n_classes", 0.1)
  assert lines[0] == ("c8: train.n_classes=8, flip_icl in_context_acc peak 0.900 "
                      "at 6,400, fallen 0.1 below it at 12,800")
  assert lines[1] == ("c16: train.n_classes=16, flip_icl in_context_acc peak 0.900 "
                      "at 6,400, not fallen 0.1 below it by 16,000 (final 0.810)")
  assert lines[2].endswith("peak 0.700 at 6,400, fallen 0.1 below it at 16,000")
  assert lines[3] == ("c64: train.n_classes=64, flip_icl in_context_acc peak 0.500 "
                      "at 0, never emerged above chance (no decay time)")
  assert lines[4] == out and os.path.getsize(out) > 0
  assert plot.plot_runs(workdirs[:1], "flip_icl:in_context_acc", out,
                        "train.exemplars", 0.1)[0].startswith("c8: train.exemplars=1,")
  with pytest.raises(UserError, match="--against: .*c8 has no config field train.nope"):
    plot.plot_runs(workdirs, "flip_icl:in_context_acc", out, "train.nope", 0.1)
  with pytest.raises(UserError, match="--against: model.positions is 'learned' in"):
    plot.plot_runs(workdirs, "flip_icl:in_context_acc", out, "model.positions", 0.1)
  with pytest.raises(UserError, match="--against: give the curve too"):
    plot.plot_runs(workdirs, "", out, "train.n_classes", 0.1)
