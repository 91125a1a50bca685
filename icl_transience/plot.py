"""Draws a run's figures from its metrics table, or compares runs.

  python -m icl_transience.plot --workdir=runs/coop
  python -m icl_transience.plot --workdir=runs/coop --workdir=runs/mq \
      --compare=flip_icl:in_context_acc --out=flip.png

One workdir: writes workdir/figures/curves_<member>.png (the curves its task
shows, e.g. the classifier's train, ICL, flip, CIWL and IWL accuracy against
sequences seen) and workdir/figures/losses_<member>.png, and prints each
curve's peak and final value. With --compare=EVALUATOR:METRIC, draws that curve of every workdir
(first member, or workdir@member) on one figure. With --against=FIELD as well,
draws instead that curve's peak and the sequences at which it had fallen
--drop below its peak, against a config field of the runs (a range such as
train.exemplars=(0, 5) counts its size, 5), and prints them. A curve
whose peak never rose above chance by the report's rule (`report --emerge`,
default 0.2 of the headroom: 0.6 for in_context_acc) is drawn as never
emerged, with no decay time: its "peak" is the untrained model's.

  python -m icl_transience.plot --workdir=runs/c3200 --workdir=runs/c6400 \
      --compare=flip_icl:in_context_acc --against=train.n_classes --out=classes.png
"""
import math
import os

from absl import app
from absl import flags

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience import report
from icl_transience.analysis import curves as curves_lib
from icl_transience.analysis import figures
from icl_transience.errors import UserError

# Chance levels drawn as a reference line on comparison figures.
REFERENCE = {"in_context_acc": 0.5, "loss": math.log(2)}


def _rows(workdir: str):
  rows = metrics_table.read(workdir)
  if not rows:
    raise UserError(f"--workdir: no metrics in {workdir} "
                    f"({metrics_table.FILENAME} missing or empty)")
  return rows


def _spec(spec: str):
  evaluator, sep, metric = spec.partition(":")
  if not sep or not evaluator or not metric:
    raise UserError("--compare: use EVALUATOR:METRIC, e.g. icl:loss")
  return evaluator, metric


def compare(workdirs, spec: str, out: str) -> str:
  evaluator, metric = _spec(spec)
  runs = {}
  for entry in workdirs:
    workdir, _, member = entry.partition("@")
    rows = _rows(workdir)
    member = member or rows[0]["member"]
    if not figures.series(rows, member, evaluator, metric)[0]:
      raise UserError(f"--compare: {workdir} has no {evaluator} {metric} "
                      f"for member {member}")
    label = f"{os.path.basename(os.path.normpath(workdir))} ({member})"
    if label in runs:  # same folder name (or the same run) twice: the path
      label = f"{os.path.normpath(workdir)} ({member}) #{len(runs) + 1}"
    runs[label] = (rows, member)
  out = out or os.path.join(workdirs[0].partition("@")[0], "figures",
                            f"compare_{evaluator}_{metric}.png")
  figures.compare_figure(runs, evaluator, metric, out, REFERENCE.get(metric))
  return out


def field_value(workdir: str, field: str) -> float:
  """A run's config field as a number (a range (lo, hi): its size)."""
  value = config_lib.load_run_config(workdir)
  for part in field.split("."):
    if not hasattr(value, "get") or part not in value:
      raise UserError(f"--against: {workdir} has no config field {field}")
    value = value[part]
  if isinstance(value, (tuple, list)) and len(value) == 2:
    value = value[1] - value[0]
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise UserError(f"--against: {field} is {value!r} in {workdir}, not a number")
  return float(value)


def _emerged(peak: float, metric: str) -> bool:
  """The report's emergence rule with its defaults (True for a metric with
  no known chance level)."""
  if metric not in report.CHANCE:
    return True
  return report.emerged(peak, report.CHANCE[metric], report.Settings())


def against(workdirs, spec: str, field: str, drop: float, out: str) -> list[str]:
  """Each run's peak and decay (curves.peak_and_decay) of one curve against
  a config field: a figure and one line per run."""
  evaluator, metric = _spec(spec)
  points, lines = [], []
  for entry in workdirs:
    workdir, _, member = entry.partition("@")
    rows = _rows(workdir)
    member = member or rows[0]["member"]
    x, y = figures.series(rows, member, evaluator, metric)
    if not x:
      raise UserError(f"--compare: {workdir} has no {evaluator} {metric} "
                      f"for member {member}")
    value = field_value(workdir, field)
    peak, peak_at, fallen_at = curves_lib.peak_and_decay(x, y, drop)
    label = os.path.basename(os.path.normpath(workdir))
    emerged = _emerged(peak, metric)
    points.append((value, peak, peak_at, fallen_at, x[-1], label, emerged))
    if not emerged:
      fallen = "never emerged above chance (no decay time)"
    elif not math.isnan(fallen_at):
      fallen = f"fallen {drop:g} below it at {fallen_at:,.0f}"
    else:
      fallen = f"not fallen {drop:g} below it by {x[-1]:,} (final {y[-1]:.3f})"
    lines.append(f"{label}: {field}={value:g}, {evaluator} {metric} peak "
                 f"{peak:.3f} at {peak_at:,.0f}, {fallen}")
  out = out or os.path.join(workdirs[0].partition("@")[0], "figures",
                            f"against_{field}_{evaluator}.png")
  figures.against_figure(sorted(points), field, evaluator, metric, drop, out)
  return lines + [out]


def plot_runs(workdirs, spec: str = "", out: str = "", field: str = "",
              drop: float = 0.1) -> list[str]:
  """What the command prints: the comparison figure's path (spec =
  EVALUATOR:METRIC), or with a field each run's peak and decay and that
  figure's path, or one run's figure paths and its curves' summary."""
  if field and not spec:
    raise UserError("--against: give the curve too, --compare=EVALUATOR:METRIC")
  if field:
    return against(workdirs, spec, field, drop, out)
  if spec:
    return [compare(workdirs, spec, out)]
  if len(workdirs) > 1:
    raise UserError("--workdir: several runs need --compare=EVALUATOR:METRIC")
  rows = _rows(workdirs[0])
  curves = config_lib.run_curves(workdirs[0])
  lines = figures.plot_run(rows, os.path.join(workdirs[0], "figures"), curves)
  for member in dict.fromkeys(r["member"] for r in rows):
    lines += figures.summary(rows, member, curves)
  return lines


def define_flags():
  """The command-line flags, defined only when run as a program."""
  flags.DEFINE_multi_string("workdir", None, "Run directory (repeatable).",
                            required=True)
  flags.DEFINE_string("compare", "", "EVALUATOR:METRIC to overlay across runs.")
  flags.DEFINE_string("out", "", "Comparison figure path.")
  flags.DEFINE_string("against", "", "Config field: draw the --compare curve's "
                      "peak and decay time against it, one point per run.")
  flags.DEFINE_float("drop", 0.1, "With --against: how far below its peak a "
                     "curve must fall to count as decayed (the report's "
                     "'transient' for in-context accuracy).")


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  print("\n".join(plot_runs(f.workdir, f.compare, f.out, f.against, f.drop)))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
