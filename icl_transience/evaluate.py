"""Checkpoint-sweep job: evaluates every saved checkpoint not yet evaluated.

  python -m icl_transience.evaluate --workdir=runs/coop

Reads the run's config.json, restores each member at each checkpoint step
whose evaluator rows are missing from metrics.jsonl, runs the evaluators
(--parallel checkpoints at a time, stacked into one compiled program) and
appends the rows. Safe to run while training continues, and again later:
finished work is skipped; an unreadable checkpoint is skipped with a warning.
"""
import jax
import tqdm
from absl import app
from absl import flags
from absl import logging

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience import monitoring
from icl_transience.errors import UserError
from icl_transience.train import checkpoints
from icl_transience.train import loop
from icl_transience.train import step as step_lib

def _restore(mngr, step, abstract, name):
  try:
    return checkpoints.restore_member(mngr, step, abstract, name)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("skipping unreadable checkpoint %d/%s: %s", step, name,
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
    return None


def evaluate_checkpoints(workdir: str, parallel: int = 0, shard: int = 0,
                         num_shards: int = 1) -> int:
  """Evaluates what is missing, `parallel` (member, step) checkpoints per
  compiled call; shard i of n takes every n-th of them. Returns the number
  evaluated."""
  try:
    c = config_lib.load_run_config(workdir)
  except UserError as e:
    raise UserError(f"--workdir: {e}") from e
  mesh = loop.run_mesh(c)
  config_lib.validate(c, n_devices=mesh.devices.size)
  members = config_lib.members(c)
  names = [m.name for m in members]
  table_rows = metrics_table.MetricsTable(workdir)
  with jax.set_mesh(mesh), checkpoints.manager(workdir, read_only=True) as mngr:
    trainer = step_lib.Trainer(c, mesh)
    abstract = trainer.abstract_state(members)
    consts = trainer.task.constants(trainer.replicated)
    eval_sets = trainer.eval_sets()
    evaluators = list(trainer.task.evaluators)
    # Shard the fixed list of (step, member) checkpoints, then drop what is
    # done: shard jobs started at different times still split the work.
    mine = [(s, n) for s in mngr.all_steps() for n in names][shard::num_shards]
    # a member that diverged has no rows after its divergence marker
    diverged = metrics_table.diverged(table_rows.rows)
    todo = [(s, n) for s, n in mine
            if s * c.batch_size <= diverged.get(n, s * c.batch_size)
            and not all(table_rows.has(n, s, e) for e in evaluators)]
    if not todo:
      logging.info("every checkpoint is already evaluated")
      return 0
    parallel = parallel or (1 if jax.default_backend() == "cpu" else 8)
    if trainer.members_sharded:  # whole checkpoints on each device
      parallel = -(-parallel // mesh.devices.size) * mesh.devices.size
    job = "evaluate" if num_shards == 1 else f"evaluate_{shard}of{num_shards}"
    with monitoring.attached(c, workdir, table_rows, job,
                             list(dict.fromkeys(n for _, n in todo))):
      done = _evaluate(c, mngr, trainer, abstract, (consts, eval_sets), todo,
                       parallel, table_rows)
  logging.info("evaluated %d member checkpoint(s)", done)
  return done


def _evaluate(c, mngr, trainer, abstract, constants, todo, parallel,
              table_rows) -> int:
  """Evaluates the (step, member) checkpoints of todo, `parallel` per
  compiled call; returns how many."""
  consts, eval_sets = constants
  evaluate = trainer.population_eval()
  done = 0
  with tqdm.tqdm(total=len(todo), unit="ckpt", disable=None) as bar:
    for start in range(0, len(todo), parallel):
      batch = [(step, name, _restore(mngr, step, abstract, name))
               for step, name in todo[start:start + parallel]]
      batch = [b for b in batch if b[2] is not None]
      bar.update(parallel)
      if not batch:
        continue
      weights = [trainer.weights(state) for _, _, state in batch]
      weights += weights[-1:] * (parallel - len(weights))  # one compiled shape
      stacked = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *weights)
      results = trainer.fetch(evaluate(stacked, consts, eval_sets))
      for i, (step, name, _) in enumerate(batch):
        table_rows.append(metrics_table.rows_from(
            name, step, step * c.batch_size, jax.tree.map(lambda v: v[i], results)))
      done += len(batch)
  return done


def define_flags():
  """The command-line flags, defined only when run as a program (every entry
  point defines --workdir; the modules import side by side)."""
  flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  flags.DEFINE_string(
      "shard", "0/1", "i/n: this job evaluates every n-th checkpoint, from the "
      "i-th (run n jobs, e.g. one per host, on a shared filesystem).")
  flags.DEFINE_integer(
      "parallel", 0, "Checkpoints evaluated together in one compiled program "
      "(0: 1 on CPU, 8 on an accelerator).")


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  cli.start_logging()
  if f.parallel < 0:
    raise UserError("--parallel: must be >= 0")
  shard, _, num_shards = f.shard.partition("/")
  if not (shard.isdigit() and num_shards.isdigit() and
          int(shard) < int(num_shards)):
    raise UserError(f"--shard: '{f.shard}' is not i/n with 0 <= i < n")
  evaluate_checkpoints(f.workdir, f.parallel, int(shard), int(num_shards))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
