"""Trains a population of ICL sequence classifiers.

  python main.py --config=configs/coopetition.py --workdir=runs/coop
  python main.py --config=configs/smoke.py --workdir=/tmp/smoke \
      --config.total_sequences=64000

Any config field can be overridden with --config.<field>=<value>. A run
killed or interrupted resumes from its newest checkpoint when started again
with the same --workdir.
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from icl_transience import cli
from icl_transience.train import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
flags.mark_flags_as_required(["config", "workdir"])


@cli.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  cli.quiet_library_logs()
  loop.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
