"""Run report: the task's own, or the generic curve report (the transience
detector: emergence and decay of each curve, as in Singh et al. 2023).

  python -m icl_transience.report --workdir=runs/coop [--metric=in_context_acc]
      [--emerge=0.2] [--decay=0.2] [--chance=0.5]

Reads workdir/metrics.jsonl and, for every member and evaluator, prints a
table and writes workdir/report.json (atomically) and one figure per member,
workdir/figures/transience_<member>.png (the evaluators' accuracy curves with
their peaks marked, over the training loss).

Transience detector. One curve v is an evaluator's metric against sequences
seen (default `in_context_acc`, or the metric the task's curves give that
evaluator, e.g. a full-vocabulary `acc` where the in-context one is 0 by
construction; tasks.TaskSpec.curves). With
chance level c (Singh et al. 2025: 0.5 for the in-context metrics of the K = 2
evaluators, 0 for full-vocabulary ones; --chance overrides it, e.g. for K = 8
evaluators) and headroom h = 1 - c:

  peak   = max v, at the earliest evaluated step that reaches it;
  final  = v at the last evaluated step;  decay = peak - final;
  "never emerged"  if peak - c <  --emerge * h;
  "transient"      if it emerged and decay >= --decay * h;
  "persistent"     otherwise (still there at the last step; it may decay later).

The defaults --emerge = --decay = 0.2 read, for in_context_acc, as "peak >= 0.6"
and "at least 0.10 below the peak" (the band our runs measured);
evaluation noise on 5,000 sequences is ~0.007, far below either.

Evaluators go to the section of SECTIONS with the longest matching name
prefix, and each section adds its own list of rows to report.json.

A task with a report of its own (tasks.TaskSpec.report) gets that instead,
e.g. token errors and timescale checks, plateau lengths and probe curves;
each writes report.json and its figures into the workdir.
"""
import dataclasses
import json
import os
from typing import Callable, NamedTuple

from absl import app
from absl import flags
from etils import epath

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience import tasks
from icl_transience.analysis import figures
from icl_transience.errors import UserError

REPORT_FILENAME = metrics_table.REPORT_FILENAME
# Chance level of each accuracy-like metric (Singh et al. 2025): a 2-way choice among
# the context labels, or an argmax over the whole vocabulary.
CHANCE = {"in_context_acc": 0.5, "in_context_prob": 0.5, "acc": 0.0, "prob": 0.0}
# Keeps the thresholds inclusive under float rounding (0.6 - 0.5 < 0.1).
_ROUNDING = 1e-9


@dataclasses.dataclass(frozen=True)
class Settings:
  """The report's knobs (one flag each)."""
  metric: str = "in_context_acc"
  chance: float | None = None   # None: CHANCE[metric]
  emerge: float = 0.2           # peak - chance, as a fraction of 1 - chance
  decay: float = 0.2            # peak - final, as a fraction of 1 - chance

  def validate(self):
    for name in ("emerge", "decay"):
      if not 0 < getattr(self, name) <= 1:
        raise UserError(f"--{name} must be in (0, 1], got {getattr(self, name)}")
    if self.chance is not None and not 0 <= self.chance < 1:
      raise UserError(f"--chance must be in [0, 1), got {self.chance}")


def metric_for(evaluator: str, metric: str, named: dict) -> str:
  """The metric read for an evaluator: with the default metric, the one the
  task's curves name for it (named: {evaluator: metric})."""
  return named.get(evaluator, metric) if metric == Settings.metric else metric


def chance_level(metric: str, settings: Settings, own: float | None = None) -> float:
  """--chance, else the curve's own (own), else CHANCE[metric]."""
  if settings.chance is not None:
    return settings.chance
  if own is not None:
    return own
  if metric not in CHANCE:
    raise UserError(f"--chance: no default chance level for metric {metric!r} "
                    f"(known: {', '.join(CHANCE)}); give --chance")
  return CHANCE[metric]


def emerged(peak: float, chance: float, settings: Settings) -> bool:
  """Whether a curve's peak rose --emerge of the headroom above chance."""
  return peak - chance >= settings.emerge * (1.0 - chance) - _ROUNDING


def verdict(peak: float, final: float, chance: float, settings: Settings) -> str:
  if not emerged(peak, chance, settings):
    return "never emerged"
  if peak - final >= settings.decay * (1.0 - chance) - _ROUNDING:
    return "transient"
  return "persistent"


def transience(rows, member: str, evaluator: str, settings: Settings,
               named: dict):
  """Peak, final, decay and verdict of one curve; None if it is not logged.
  named: {evaluator: the task's Curve}."""
  curve = named.get(evaluator)
  metric = metric_for(evaluator, settings.metric,
                      {e: c.metric for e, c in named.items()})
  points = sorted((r["sequences"], r["step"], r["value"]) for r in rows
                  if r["member"] == member and r["evaluator"] == evaluator
                  and r["metric"] == metric)
  if not points:
    return None
  peak_sequences, peak_step, peak = max(points, key=lambda p: (p[2], -p[0]))
  final_sequences, final_step, final = points[-1]
  chance = chance_level(metric, settings, curve.chance if curve and
                        metric == curve.metric else None)
  return dict(member=member, evaluator=evaluator, metric=metric, chance=chance,
              peak_step=peak_step, peak_sequences=peak_sequences, peak=peak,
              final_step=final_step, final_sequences=final_sequences,
              final=final, decay=peak - final,
              verdict=verdict(peak, final, chance, settings))


class Section(NamedTuple):
  name: str                       # its key in report.json
  analyse: Callable   # (rows, member, evaluator, settings, {evaluator: Curve}) -> dict | None
  columns: tuple[str, ...]        # the printed columns


TRANSIENCE = Section("transience", transience, (
    "member", "evaluator", "metric", "peak_sequences", "peak", "final",
    "decay", "verdict"))
# Report kinds by evaluator-name prefix ("" matches every evaluator).
SECTIONS = {"": TRANSIENCE}


def section_for(evaluator: str) -> Section:
  prefix = max((p for p in SECTIONS if evaluator.startswith(p)), key=len)
  return SECTIONS[prefix]


def build_report(rows, settings: Settings, curves=()) -> dict:
  """{"settings": ..., section name: [row per (member, evaluator)]};
  curves: the task's (tasks.Curve), which name each evaluator's metric."""
  named = {curve.evaluator: curve for curve in curves}
  report = {"settings": dataclasses.asdict(settings)}
  evaluators = dict.fromkeys(r["evaluator"] for r in rows
                             if r["evaluator"] != metrics_table.DIVERGED)
  for member in dict.fromkeys(r["member"] for r in rows):
    for evaluator in evaluators:
      section = section_for(evaluator)
      row = section.analyse(rows, member, evaluator, settings, named)
      if row is not None:
        report.setdefault(section.name, []).append(row)
  if len(report) == 1:
    raise UserError(f"--metric: no evaluator logs {settings.metric!r}")
  if metrics_table.diverged(rows):
    report["diverged"] = metrics_table.diverged(rows)  # member: sequences
  return report


def format_table(section_rows: list[dict], columns: tuple[str, ...]) -> str:
  cells = [list(columns)] + [
      [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in columns]
      for r in section_rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
  return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                   for row in cells)


def transience_figures(rows, transience_rows: list[dict], out_dir: str,
                       curves=()) -> list[str]:
  """One figure per member: its curves, peaks marked, over the train loss
  (in the colours of the task's curves)."""
  colours = {curve.evaluator: curve.colour for curve in curves}
  paths = []
  for member in dict.fromkeys(r["member"] for r in transience_rows):
    curves = [(t["evaluator"], t["metric"], f"{t['evaluator']}: {t['verdict']}",
               (t["peak_sequences"], t["peak"]))
              for t in transience_rows if t["member"] == member]
    paths.append(os.path.join(out_dir, f"transience_{member}.png"))
    figures.transience_figure(rows, member, curves, paths[-1], colours)
  return paths


def write_report(workdir: str, settings: Settings, curves=None) -> dict:
  """Builds, prints and saves the report and its figures; returns it.
  curves: the task's (default: those of the run's task, if it has a
  config.json)."""
  settings.validate()
  if curves is None:
    curves = config_lib.run_curves(workdir)
  try:
    rows = metrics_table.read(workdir)
    if not rows:
      raise UserError(f"--workdir: no metrics in {workdir} "
                      f"({metrics_table.FILENAME} missing or empty)")
    report = build_report(rows, settings, curves)
  except (ValueError, KeyError) as e:
    raise UserError(f"{metrics_table.path(workdir)}: not a metrics table "
                    f"({type(e).__name__}: {e})") from e
  for section in dict.fromkeys(SECTIONS.values()):
    if section.name in report:
      print(f"[{section.name}]\n{format_table(report[section.name], section.columns)}")
  for member, seen in report.get("diverged", {}).items():
    print(f"member {member} diverged at {seen:,} sequences (no rows after)")
  metrics_table.atomic_write_text(os.path.join(workdir, REPORT_FILENAME),
                                  json.dumps(report, indent=2) + "\n")
  for path in transience_figures(rows, report.get(TRANSIENCE.name, []),
                                 os.path.join(workdir, "figures"), curves):
    print(path)
  return report


def define_flags():
  """The command-line flags. Defined only when run as a program, so that this
  module imports beside the other entry points (each defines --workdir)."""
  flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  flags.DEFINE_string("metric", Settings.metric, "Metric of each evaluator's curve.")
  flags.DEFINE_float("chance", None, "Chance level (default: by metric).")
  flags.DEFINE_float("emerge", Settings.emerge,
                     "Emerged: peak - chance >= emerge * (1 - chance).")
  flags.DEFINE_float("decay", Settings.decay,
                     "Transient: peak - final >= decay * (1 - chance).")


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  has_config = (epath.Path(f.workdir) / "config.json").exists()
  c = config_lib.load_run_config(f.workdir) if has_config else None
  own = c is not None and tasks.spec(c).report
  if own:
    for name in ("metric", "chance", "emerge", "decay"):  # the detector's flags
      if f[name].present:
        raise UserError(f"--{name}: applies to the curve report, not to the "
                        f"{tasks.task_name(c)} task's own report")
    own(f.workdir, f.workdir)
    return
  write_report(f.workdir, Settings(metric=f.metric, chance=f.chance,
                                   emerge=f.emerge, decay=f.decay),
               tasks.curves(c) if c is not None else ())


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
