"""Trains a population of ICL sequence classifiers.

  python main.py --config=configs/coopetition.py --workdir=runs/coop
  python main.py --config=configs/smoke.py --workdir=/tmp/smoke \
      --config.total_sequences=64000

Any config field can be overridden with --config.<field>=<value>. A run
killed or interrupted resumes from its newest checkpoint when started again
with the same --workdir.

Multi-host (TPU pod slices, GPU clusters): run the same command on every host
with --multihost. JAX's distributed runtime finds the coordinator, process
count and process id from the TPU / SLURM / Open MPI environment, or from
--coordinator_address, --num_processes and --process_id. Every process trains
on its local devices of one global mesh; Orbax writes checkpoints
collectively; process 0 writes config.json and metrics.jsonl. If a process
dies, the others stop with one line naming it and the newest complete
checkpoint: restart every process to resume from it.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from icl_transience import cli
from icl_transience.train import loop
from icl_transience.train import multihost

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
flags.mark_flags_as_required(["config", "workdir"])
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Initialise JAX's distributed runtime first.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Process count (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process (multi-host).")
_LOST_AFTER = flags.DEFINE_float(
    "lost_process_after_s", 60, "Multi-host: seconds another process may go "
    "without a heartbeat before this one stops with one line (the newest "
    "checkpoint; restart every process to resume).")
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Write a jax.profiler trace of 3 fused training calls "
    "(after the first, which compiles) to WORKDIR/tensorboard/profile/, where "
    "TensorBoard's profile plugin finds it (tensorboard --logdir=WORKDIR/.., "
    "Profile tab; the monitor extra).")


@cli.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.start_logging()
  if _MULTIHOST.value:
    multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         _LOST_AFTER.value)
  loop.train(_CONFIG.value, _WORKDIR.value,
             loop.profile_dir(_WORKDIR.value) if _PROFILE.value else "")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
