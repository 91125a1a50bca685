"""Draws a run's figures from its metrics table, or compares runs.

  python -m icl_transience.plot --workdir=runs/coop
  python -m icl_transience.plot --workdir=runs/coop --workdir=runs/mq \
      --compare=flip_icl:in_context_acc --out=flip.png

One workdir: writes workdir/figures/fig1b_<member>.png (the paper's Figure
1b: train, ICL, flip, CIWL and IWL accuracy against sequences seen) and
workdir/figures/losses_<member>.png, and prints each curve's peak and final
value. With --compare=EVALUATOR:METRIC, draws that curve of every workdir
(first member, or workdir@member) on one figure.
"""
import math
import os

from absl import app
from absl import flags

from icl_transience import cli
from icl_transience import metrics_table
from icl_transience.analysis import figures
from icl_transience.errors import UserError

_WORKDIR = flags.DEFINE_multi_string("workdir", None, "Run directory (repeatable).",
                                     required=True)
_COMPARE = flags.DEFINE_string("compare", "", "EVALUATOR:METRIC to overlay across runs.")
_OUT = flags.DEFINE_string("out", "", "Comparison figure path.")
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
    runs[f"{os.path.basename(os.path.normpath(workdir))} ({member})"] = (rows, member)
  out = out or os.path.join(workdirs[0].partition("@")[0], "figures",
                            f"compare_{evaluator}_{metric}.png")
  figures.compare_figure(runs, evaluator, metric, out, REFERENCE.get(metric))
  return out


@cli.exit_on_user_error
def main(argv):
  del argv
  if _COMPARE.value:
    print(compare(_WORKDIR.value, _COMPARE.value, _OUT.value))
    return
  if len(_WORKDIR.value) > 1:
    raise UserError("--workdir: several runs need --compare=EVALUATOR:METRIC")
  rows = _rows(_WORKDIR.value[0])
  for path in figures.plot_run(rows, os.path.join(_WORKDIR.value[0], "figures")):
    print(path)
  for member in dict.fromkeys(r["member"] for r in rows):
    print("\n".join(figures.summary(rows, member)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
