"""Ablations and recordings at one checkpoint (Singh et al. 2025, Fig. 2 and App. B).

  python -m icl_transience.proj.transience.ablate --workdir=runs/coop --sequences=20000000
  python -m icl_transience.proj.transience.ablate --workdir=runs/coop --ablate='0:1,4,7' \\
      --keep='1:q' --evaluators=flip_icl
  python -m icl_transience.proj.transience.ablate --workdir=runs/coop --record=flip.npz
  python -m icl_transience.proj.transience.ablate --workdir=runs/coop --fig2b \
      --induction_strength=0,0.25,0.5,0.75,1

Without --ablate/--keep/--drop_embedding/--zero_tokens/--induction it runs
every intervention of the ablation table (Singh et al. 2025, App. B).
--fig2b is the combination of Fig. 2b: layer-1 heads ablated, every
layer-2 head but --head ablated, clean patterns and values everywhere, and
the kept head's query clamped to an induction pattern of each
--induction_strength s (induction strength 2s - 1). Prints in-context accuracy per
intervention and evaluator and saves every metric to
workdir/ablations/<sequences>.json. --record saves the
attention patterns, q/k/v and residual streams of the first --record_n
sequences of --record_evaluator to an .npz file.
"""
import json
import os

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import evaluators as evaluators_lib
from icl_transience import tasks
from icl_transience import metrics_table
from icl_transience.proj.transience import classifier_config
from icl_transience.proj.transience import interventions
from icl_transience.proj.transience import sources
from icl_transience.errors import UserError
from icl_transience.proj.transience import probes
from icl_transience.train import loop
from icl_transience.train import pretrained
from icl_transience.proj.transience import classifier

DEFAULT_EVALUATORS = ("train_eval", "iwl_copy_avail", "flip_icl")


def fig2b(depth: int, n_heads: int, head: int, strengths) -> dict:
  """Singh et al. 2025, Fig. 2b: {name: Intervention} per clamp strength."""
  if depth != 2:
    raise UserError(f"--fig2b: needs the 2-layer model, this run has {depth} layers")
  if not 0 <= head < n_heads:
    raise UserError(f"--head: {head} outside 0..{n_heads - 1}")
  others = tuple(h for h in range(n_heads) if h != head)
  clean = ((0, ("pattern", "v")), (1, ("pattern", "v")))
  return {f"fig2b_s={s:g}": interventions.Intervention(
      ablate=((0, "all"), (1, others)), keep=clean, induction=((1, (head,)),),
      induction_strength=float(s)) for s in strengths}


def run_table(c, params, table, eval_sets, named: dict) -> dict:
  """{intervention: {evaluator: {metric: value}}}."""
  model = classifier.build_model(c.model, classifier_config.n_outputs(c), c.clamp)
  results = {}
  for name, iv in named.items():
    interventions.check(iv, c.model.depth, c.model.n_heads, name)
    apply_fn = lambda p, f, l, t, iv=iv: interventions.forward(model, p, f, l, iv, t)
    metrics = probes.set_metrics(apply_fn, c.data.n_classes, c.evals.batch_size,
                                 with_target=True)
    evaluate = jax.jit(lambda p, t, sets, metrics=metrics: {
        n: metrics(p, t, s) for n, s in sets.items()})
    results[name] = jax.tree.map(float, jax.device_get(evaluate(params, table, eval_sets)))
  return results


def save_recording(path, c, params, table, seqs, n):
  model = classifier.build_model(c.model, classifier_config.n_outputs(c), c.clamp)
  seqs = jax.tree.map(lambda x: x[:n], seqs)
  feats = sources.gather_features(table, seqs.classes, seqs.exemplars, c.data.n_classes)
  out = jax.device_get(jax.jit(lambda p, f, l: interventions.record(model, p, f, l))(
      params, feats, seqs.labels))
  arrays = {"logits": out["logits"], "residual": out["residual"]}
  for i, block in enumerate(out["blocks"]):
    arrays.update({f"block{i}_{a}": v for a, v in block.items()})
  arrays.update(classes=seqs.classes, exemplars=seqs.exemplars, labels=seqs.labels,
                target=seqs.target)
  metrics_table.atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def ablate(workdir: str, sequences: int = -1, member: str = "",
           evaluators=DEFAULT_EVALUATORS, ablate_heads: str = "",
           keep: str = "", drop_embedding: bool = False,
           zero_tokens: bool = False, record: str = "",
           record_evaluator: str = "flip_icl", record_n: int = 100,
           induction: str = "", induction_strength=(1.0,),
           fig2b_head: int | None = None):
  """Runs the interventions (the table's, or the one the flags describe) at
  one checkpoint; saves workdir/ablations/<sequences>.json and, with record,
  the activations. Returns (sequences, {intervention: {evaluator: metrics}},
  path of the JSON)."""
  evaluators = list(evaluators)
  c = config_lib.load_run_config(workdir)
  if c.graft.mode != "none":
    raise UserError("--workdir: ablating a grafted run is not supported")
  if tasks.task_name(c) != "classify":
    raise UserError(f"--workdir: ablations apply to classifier runs, not "
                    f"task '{tasks.task_name(c)}' (see icl_transience.proj.lds_recall.prune)")
  for name in evaluators + ([record_evaluator] if record else []):
    if name not in probes.EVALUATORS:
      raise UserError(f"--evaluators: unknown evaluator '{name}'")
  custom = ablate_heads or keep or drop_embedding or zero_tokens or induction
  if fig2b_head is not None:
    if custom:
      raise UserError("--fig2b: sets its own interventions; drop --ablate, "
                      "--keep, --induction and the embedding flags")
    named = fig2b(c.model.depth, c.model.n_heads, fig2b_head, induction_strength)
  elif custom:
    strengths = induction_strength if induction else (1.0,)
    named = {f"custom{f'_s={s:g}' if len(strengths) > 1 else ''}": interventions.parse(
        ablate_heads, keep, drop_embedding, zero_tokens, induction, s)
             for s in strengths}
  else:
    named = interventions.TABLE
  mesh = loop.run_mesh(c)
  ref = ml_collections.ConfigDict(dict(workdir=workdir, sequences=sequences,
                                       member=member))
  with jax.set_mesh(mesh):
    params, seen = pretrained.load_params(ref, "--workdir", mesh)
    table = sources.load_table(c.data)
    # The run's own evaluator sets (a set depends on its index in the list).
    c.evals.names = tuple(dict.fromkeys(
        list(c.evals.names) + evaluators + [record_evaluator]))
    all_sets = evaluators_lib.fixed_sets(probes.run_evaluators(c, None), c.eval_seed)
    eval_sets = {name: all_sets[name] for name in evaluators}
    results = run_table(c, params, table, eval_sets, named)
    if record:
      save_recording(record, c, params, table, all_sets[record_evaluator],
                     record_n)
  out = os.path.join(workdir, "ablations", f"{seen}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  metrics_table.atomic_write_text(out, json.dumps(
      {"sequences": seen, "member": member, "results": results}, indent=2) + "\n")
  return seen, results, out


def define_flags():
  """The command-line flags, defined only when run as a program."""
  flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  flags.DEFINE_integer("sequences", -1, "Checkpoint (sequences seen); -1: newest.")
  flags.DEFINE_string("member", "", "Population member ('' = first).")
  flags.DEFINE_list("evaluators", list(DEFAULT_EVALUATORS),
                    "Evaluators to run under each intervention.")
  flags.DEFINE_string("ablate", "", "Heads to ablate: 'block:h,h;block:all'.")
  flags.DEFINE_string("keep", "", "Activations kept clean: 'block:q,k,v,pattern'.")
  flags.DEFINE_bool("drop_embedding", False,
                    "Subtract the token + position embedding at the readout.")
  flags.DEFINE_bool("zero_tokens", False,
                    "Zero the token embeddings at the input, keeping positions "
                    "(the authors' direct-embedding ablation).")
  flags.DEFINE_string("induction", "", "Heads whose query attention is clamped "
                      "to an induction pattern: 'block:h,h'.")
  flags.DEFINE_list("induction_strength", ["1.0"],
                    "Clamp strengths s (attention on the correct label; one "
                    "intervention per value).")
  flags.DEFINE_bool("fig2b", False, "Run the combination of Singh et al. 2025, "
                    "Fig. 2b at each --induction_strength.")
  flags.DEFINE_integer("head", 0, "--fig2b: the layer-2 head kept and clamped.")
  flags.DEFINE_string("record", "", "Save activations to this .npz file.")
  flags.DEFINE_string("record_evaluator", "flip_icl", "Evaluator to record.")
  flags.DEFINE_integer("record_n", 100, "Sequences to record.")


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  cli.quiet_library_logs()
  try:
    strengths = tuple(float(s) for s in f.induction_strength)
  except ValueError as e:
    raise UserError(f"--induction_strength: not a list of numbers: "
                    f"{','.join(f.induction_strength)}") from e
  seen, results, out = ablate(
      f.workdir, f.sequences, f.member, f.evaluators, f.ablate, f.keep,
      f.drop_embedding, f.zero_tokens, f.record, f.record_evaluator, f.record_n,
      f.induction, strengths, f.head if f.fig2b else None)
  if f.record:
    print(f"recorded {f.record_n} {f.record_evaluator} sequences to {f.record}")
  width = max(len(n) for n in results)
  print(f"in-context accuracy at {seen:,} sequences ({f.workdir})")
  print(f"{'intervention':<{width}}  " + "  ".join(f"{e:>14}" for e in f.evaluators))
  for name, by_eval in results.items():
    print(f"{name:<{width}}  " + "  ".join(
        f"{by_eval[e]['in_context_acc']:>14.4f}" for e in f.evaluators))
  print(out)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
