"""Draws a run's figures from its metrics table, or compares runs.

  python -m icl_transience.plot --workdir=runs/coop
  python -m icl_transience.plot --workdir=runs/coop --workdir=runs/mq \
      --compare=flip_icl:in_context_acc --out=flip.png

One workdir: writes workdir/figures/curves_<member>.png (the curves its task
shows, e.g. the classifier's train, ICL, flip, CIWL and IWL accuracy against
sequences seen) and workdir/figures/losses_<member>.png, and prints each
curve's peak and final value. With --compare=EVALUATOR:METRIC, draws that curve of every workdir
(first member, or workdir@member) on one figure.
"""
import math
import os

from absl import app
from absl import flags

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import metrics_table
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


def compare(workdirs, spec: str, out: str) -> str:
  evaluator, sep, metric = spec.partition(":")
  if not sep or not evaluator or not metric:
    raise UserError("--compare: use EVALUATOR:METRIC, e.g. icl:loss")
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


def plot_runs(workdirs, spec: str = "", out: str = "") -> list[str]:
  """What the command prints: the comparison figure's path (spec =
  EVALUATOR:METRIC), or one run's figure paths and its curves' summary."""
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


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  print("\n".join(plot_runs(f.workdir, f.compare, f.out)))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
