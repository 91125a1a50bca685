"""Error against the needle's position in the haystack (Daniels et al. 2025).

  python -m icl_transience.proj.lds_recall.needle_positions --workdir=runs/lds_big \
      --haystack=19 [--sequences=N | --best] [--examples=50 --trials=1000]

At one checkpoint, the "k after final" errors of the needle prompts of
haystack length H in every rotation: configuration c puts the needle's
segment H - 1 - c segments before the query (c = 0 farthest back, the
evaluators' default; c = H - 1 just before the query). Beside them, at
position -2, the "final segment extended" control: H - 1 haystack segments,
then the last haystack system shown without a break, read at the same
trajectory times (no label to recall). For each position and step k:
the median over examples of the trial-median errors, with the 25-75th
percentiles. --best takes the saved checkpoint whose logged "2 after final"
median of needle_h{H} is lowest, as the authors pick theirs. Writes
workdir/needle_positions/<sequences>_<member>_h<H>.json and a figure beside it.
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience import tasks
from icl_transience.analysis import figures  # selects matplotlib's Agg backend
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall import lds_prompts
from icl_transience.proj.lds_recall import task as lds_task
from icl_transience.train import checkpoints
from icl_transience.train import loop
from icl_transience.train import pretrained
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

EXTENDED = -2  # the position the control is drawn at (as the authors do)


def best_checkpoint(workdir: str, c, member: str, haystack: int) -> int:
  """Saved checkpoint (sequences) with the lowest logged "2 after final"
  median of needle_h{haystack}."""
  with checkpoints.manager(workdir, read_only=True) as mngr:
    saved = {s * c.batch_size for s in mngr.all_steps()}
  logged = {r["sequences"]: r["value"] for r in metrics_table.read(workdir)
            if r["member"] == member and r["evaluator"] == f"needle_h{haystack}"
            and r["metric"] == "after_final_2_median" and r["sequences"] in saved}
  if not logged:
    raise UserError(f"--best: {workdir} logged no needle_h{haystack} errors at "
                    "a saved checkpoint (choose --sequences)")
  return min(logged, key=logged.get)


def _quartiles(medians, steps) -> dict:
  """{k: [q25, median, q75]} over examples of (n_examples, K) medians."""
  q = np.percentile(np.asarray(medians), [25, 50, 75], axis=0)
  return {str(k): [float(v) for v in q[:, i]] for i, k in enumerate(steps)}


def positions(predict, key, spec: lds_prompts.NeedleSpec, steps,
              batch: int) -> dict:
  """{position: {k: [q25, median, q75]}}: every rotation, then the control."""
  out = {}
  for config in range(spec.haystack_len):
    stats = lds_prompts.needle_statistics(predict, key, spec, config, batch)
    chosen = stats.after_final[:, np.asarray(steps) - 1]
    out[spec.haystack_len - 1 - config] = _quartiles(chosen, steps)
  make = jax.jit(lds_prompts.extended_final_prompts, static_argnames="spec")
  medians = []
  for example in range(spec.n_examples):
    errors = lds_prompts.prompt_errors(
        predict, make(key, spec=spec, example=example), spec.lds_spec, batch)
    medians.append(lds_prompts.trial_medians(
        lds_prompts.extended_steps(errors, spec, steps)))
  out[EXTENDED] = _quartiles(jnp.stack(medians), steps)
  return out


def figure(result: dict, path: str):
  fig, ax = plt.subplots(figsize=(7, 4.5))
  colours = plt.get_cmap("viridis")
  steps = result["steps"]
  for i, k in enumerate(steps):
    points = sorted((int(p), v[str(k)]) for p, v in result["positions"].items())
    x = [p for p, _ in points]
    q25, median, q75 = (np.array([v[j] for _, v in points]) for j in range(3))
    ax.errorbar(x, median, yerr=[median - q25, q75 - median], fmt="o-", ms=3,
                capsize=2, color=colours(0.85 * i / max(len(steps) - 1, 1)),
                label=f"{k} after final")
  ax.axvline(-1, color="grey", lw=0.8, ls=":")
  ax.set(xlabel="needle position from the end of the haystack "
         f"({EXTENDED}: final segment extended, no label)",
         ylabel="error |y_hat - y|^2 (median, 25-75%)", yscale="log",
         title=f"{result['member']} at {result['sequences']:,} sequences, "
         f"H = {result['haystack']}")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  figures.save(fig, path)


def run(workdir: str, sequences: int, member: str, haystack: int, steps,
        examples: int, trials: int, best: bool) -> dict:
  c = config_lib.load_run_config(workdir)
  if tasks.task_name(c) != "lds":
    raise UserError(f"--workdir: {workdir} is a '{tasks.task_name(c)}' run; "
                    "needle positions need an LDS run")
  member = member or config_lib.members(c)[0].name
  task = lds_task.LDSTask(c)
  spec = dataclasses.replace(
      lds_task.needle_spec(c, haystack, "normal", task.spec),
      n_examples=examples or c.lds.needle_examples,
      n_trials=trials or c.lds.needle_trials)
  if not all(1 <= k <= spec.query_len for k in steps):
    raise UserError(f"--steps: each k must lie in [1, {spec.query_len}]")
  if best:
    sequences = best_checkpoint(workdir, c, member, haystack)
  ref = ml_collections.ConfigDict(dict(workdir=workdir, sequences=sequences,
                                       member=member))
  with jax.set_mesh(loop.run_mesh(c)):
    params, seen = pretrained.load_params(ref, "--workdir", loop.run_mesh(c))
  params = jax.device_get(params)
  predict = jax.jit(lambda x: task.model.apply({"params": params}, x))
  key = task.eval_keys()["needle"]  # the run's own needle prompts
  result = {"sequences": seen, "member": member, "haystack": haystack,
            "steps": list(steps), "examples": spec.n_examples,
            "trials": spec.n_trials,
            "positions": positions(predict, key, spec, steps, c.lds.eval_batch)}
  base = os.path.join(workdir, "needle_positions", f"{seen}_{member}_h{haystack}")
  os.makedirs(os.path.dirname(base), exist_ok=True)
  metrics_table.atomic_write_text(base + ".json", json.dumps(result, indent=2) + "\n")
  figure(result, base + ".png")
  print_table(result, base)
  return result


def print_table(result: dict, base: str):
  steps = result["steps"]
  print(f"needle position at {result['sequences']:,} sequences "
        f"({result['member']}, H = {result['haystack']}): median error "
        "[25%, 75%] of k after final")
  print(f"{'position':>9}  " + "  ".join(f"{f'k={k}':>22}" for k in steps))
  for position, row in sorted(result["positions"].items(), key=lambda p: -int(p[0])):
    name = "extended" if int(position) == EXTENDED else str(position)
    print(f"{name:>9}  " + "  ".join(
        f"{row[str(k)][1]:>8.4f} [{row[str(k)][0]:.3f}, {row[str(k)][2]:.3f}]"
        for k in steps))
  print(base + ".json")


def define_flags():
  flags.DEFINE_string("workdir", None, "LDS run directory.", required=True)
  flags.DEFINE_integer("sequences", -1, "Checkpoint (sequences seen); -1: newest.")
  flags.DEFINE_bool("best", False, "Use the checkpoint with the lowest logged "
                    "'2 after final' median of needle_h{haystack}.")
  flags.DEFINE_string("member", "", "Population member ('' = first).")
  flags.DEFINE_integer("haystack", 5, "Haystack length H (the paper's figure: 19).")
  flags.DEFINE_list("steps", ["1", "2", "3", "5", "10"], "k of 'k after final'.")
  flags.DEFINE_integer("examples", 0, "Examples (0: the run's needle_examples).")
  flags.DEFINE_integer("trials", 0, "Trials per example (0: the run's needle_trials).")


@cli.exit_on_user_error
def main(argv):
  del argv
  cli.quiet_library_logs()
  f = flags.FLAGS
  try:
    steps = tuple(int(k) for k in f.steps)
  except ValueError as e:
    raise UserError(f"--steps: not a list of whole numbers: {','.join(f.steps)}") from e
  if f.examples < 0 or f.trials < 0:
    raise UserError("--examples and --trials must be >= 0")
  run(f.workdir, f.sequences, f.member, f.haystack, steps, f.examples, f.trials,
      f.best)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
