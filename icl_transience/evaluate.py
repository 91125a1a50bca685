"""Checkpoint-sweep job: evaluates every saved checkpoint not yet evaluated.

  python -m icl_transience.evaluate --workdir=runs/coop

Reads the run's config.json, restores each member at each checkpoint step
whose evaluator rows are missing from metrics.jsonl, runs the evaluators and
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
from icl_transience.data import sources
from icl_transience.errors import UserError
from icl_transience.evals import probes
from icl_transience.train import checkpoints
from icl_transience.train import loop
from icl_transience.train import step as step_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


def evaluate_checkpoints(workdir: str) -> int:
  """Evaluates what is missing; returns the number of (member, step) done."""
  try:
    c = config_lib.load_run_config(workdir)
  except UserError as e:
    raise UserError(f"--workdir: {e}") from e
  mesh = loop.make_mesh(c.num_devices)
  config_lib.validate(c, n_devices=mesh.devices.size)
  members = config_lib.members(c)
  names = [m.name for m in members]
  table_rows = metrics_table.MetricsTable(workdir)
  done = 0
  with jax.set_mesh(mesh), checkpoints.manager(workdir, read_only=True) as mngr:
    todo = [(s, n) for s in mngr.all_steps() for n in names
            if not all(table_rows.has(n, s, e) for e in c.evals.names)]
    if not todo:
      logging.info("every checkpoint is already evaluated")
      return 0
    table = sources.load_table(c.data)
    trainer = step_lib.Trainer(c, mesh)
    evaluate = jax.jit(probes.make_evaluate(trainer.apply, c.data.n_classes,
                                            c.evals.batch_size))
    eval_sets = probes.build_eval_sets(c)
    abstract = trainer.abstract_state(members)
    for step, name in tqdm.tqdm(todo, unit="ckpt", disable=None):
      try:
        state = checkpoints.restore_member(mngr, step, abstract, name)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("skipping unreadable checkpoint %d/%s: %s", step, name,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
        continue
      results = jax.device_get(evaluate(trainer.weights(state), table, eval_sets))
      table_rows.append(metrics_table.rows_from(
          name, step, step * c.batch_size, results))
      done += 1
  logging.info("evaluated %d member checkpoint(s)", done)
  return done


@cli.exit_on_user_error
def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  cli.quiet_library_logs()
  evaluate_checkpoints(_WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
