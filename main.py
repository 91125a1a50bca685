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
collectively; process 0 writes config.json and metrics.jsonl.
"""
import jax
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
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Initialise JAX's distributed runtime first.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Process count (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process (multi-host).")
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Write a jax.profiler trace of 3 fused training calls "
    "(after the first, which compiles) to WORKDIR/tensorboard/profile/, where "
    "TensorBoard's profile plugin finds it (tensorboard --logdir=WORKDIR/.., "
    "Profile tab; the monitor extra).")


def initialize_distributed():
  """jax.distributed.initialize with the flags given (None: auto-detect)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts
  try:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  except (RuntimeError, ValueError) as e:
    raise cli.UserError(f"--multihost: {str(e).splitlines()[0]}") from e
  logging.info("process %d of %d; %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


@cli.exit_on_user_error
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.start_logging()
  if _MULTIHOST.value:
    initialize_distributed()
  loop.train(_CONFIG.value, _WORKDIR.value,
             loop.profile_dir(_WORKDIR.value) if _PROFILE.value else "")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
