"""Draws a run's figures from its metrics table.

  python -m icl_transience.plot --workdir=runs/coop

Writes workdir/figures/fig1b_<member>.png (the paper's Figure 1b: train,
ICL, flip, CIWL and IWL accuracy against sequences seen) and
workdir/figures/losses_<member>.png, and prints each curve's peak and final
value.
"""
import os

from absl import app
from absl import flags

from icl_transience import cli
from icl_transience import metrics_table
from icl_transience.analysis import figures
from icl_transience.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


@cli.exit_on_user_error
def main(argv):
  del argv
  rows = metrics_table.read(_WORKDIR.value)
  if not rows:
    raise UserError(f"--workdir: no metrics in {_WORKDIR.value} "
                    f"({metrics_table.FILENAME} missing or empty)")
  for path in figures.plot_run(rows, os.path.join(_WORKDIR.value, "figures")):
    print(path)
  for member in dict.fromkeys(r["member"] for r in rows):
    print("\n".join(figures.summary(rows, member)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
