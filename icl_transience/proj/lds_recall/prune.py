"""Edge pruning of an LDS run's checkpoint (after Bhaskar et al. 2024).

  python -m icl_transience.proj.lds_recall.prune --workdir=runs/lds_big [--sequences=N] \
      [--token=1|2|both] [--sparsity=0.95] [--haystack=5]

Finds the circuit that keeps the model's first-token ("1 after final", the
prediction at the query's open label) or later-token ("k >= 2 after final")
predictions on needle prompts of haystack length H (needle farthest back),
by proj/lds_recall/edge_pruning.py. Prompts: --examples x --trials needle prompts
for the optimisation and as many from another key (held out) for the
errors. For each circuit it reports the kept edges, the achieved sparsity,
its MSE to the full model on both position types and its needle error
(|y_hat - y|^2, mean and median over prompts) on both; with both circuits,
their Jaccard overlap. Results go to workdir/pruning/<sequences>_<member>_h<H>_s<sparsity>.json; a
later run with the other --token and the same settings adds its circuit there.
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
from icl_transience.proj.lds_recall import edge_pruning
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall import lds_prompts
from icl_transience.proj.lds_recall import task as lds_task
from icl_transience.train import loop
from icl_transience.train import pretrained

TOKENS = ("1", "2")


def needle_tokens(c, haystack: int, examples: int, trials: int, seed: int):
  """(examples * trials, prompt_len, token_dim) prompts and their spec."""
  spec = dataclasses.replace(lds_task.needle_spec(c, haystack),
                             n_examples=examples, n_trials=trials)
  make = jax.jit(lds_prompts.needle_prompts, static_argnames="spec")
  key = jax.random.PRNGKey(seed)
  return jnp.concatenate([make(key, spec=spec, example=e) for e in
                          range(examples)]), spec


def rows_of(spec: lds_prompts.NeedleSpec) -> dict[str, tuple]:
  """Prediction rows: token 1 = at the query's open label; token 2 = the
  predictions of observations 2 .. query_len of the query segment."""
  return {"1": (spec.query_row,),
          "2": tuple(spec.query_row + k - 1 for k in range(2, spec.query_len + 1))}


def circuit_errors(params, graph, masks, tokens, reference, rows, lds_spec):
  """MSE to the full model and needle error (mean, median) per position type."""
  predictions = edge_pruning.pruned_forward(params, tokens[:, :-1], masks, graph)
  errors = lds_prompts.prediction_errors(predictions, tokens, lds_spec)
  out = {}
  for token, r in rows.items():
    r = np.asarray(r)
    faithful = jnp.sum((predictions[:, r] - reference[:, r]) ** 2, -1)
    out[f"token{token}"] = {"mse_to_full": float(faithful.mean()),
                            "error_mean": float(errors[:, r].mean()),
                            "error_median": float(jnp.median(errors[:, r]))}
  return out


def run(workdir: str, sequences: int, member: str, which: tuple, sparsity: float,
        haystack: int, examples: int, trials: int, seed: int,
        prune_spec: edge_pruning.PruneSpec) -> dict:
  c = config_lib.load_run_config(workdir)
  if tasks.task_name(c) != "lds":
    raise UserError(f"--workdir: {workdir} is a '{tasks.task_name(c)}' run; "
                    "edge pruning needs an LDS run")
  if not 0.0 < sparsity < 1.0:
    raise UserError(f"--sparsity must be in (0, 1), got {sparsity}")
  ref = ml_collections.ConfigDict(dict(workdir=workdir, sequences=sequences,
                                       member=member))
  mesh = loop.run_mesh(c)
  with jax.set_mesh(mesh):
    params, seen = pretrained.load_params(ref, "--workdir", mesh)
  params = jax.device_get(params)
  model = tasks.build(c).model
  graph = edge_pruning.Graph(c.model.depth, c.model.n_heads)
  train, spec = needle_tokens(c, haystack, examples, trials, seed)
  held_out, _ = needle_tokens(c, haystack, examples, trials, seed + 1)
  predict = jax.jit(lambda x: model.apply({"params": params}, x[:, :-1]))
  reference, held_reference = predict(train), predict(held_out)
  rows = rows_of(spec)
  prune_spec = dataclasses.replace(prune_spec, target_sparsity=sparsity)
  member = member or config_lib.members(c)[0].name
  settings = {"haystack": haystack, "examples": examples, "trials": trials,
              "seed": seed, "steps": prune_spec.steps,
              "batch_size": prune_spec.batch_size}
  path = os.path.join(workdir, "pruning",
                      f"{seen}_{member}_h{haystack}_s{sparsity:g}.json")
  result = {"sequences": seen, "member": member, "sparsity": sparsity,
            "settings": settings, "n_edges": graph.n_edges(), "circuits": {}}
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get("settings") == settings:  # the other token's circuit
      result["circuits"] = saved.get("circuits", {})
    else:
      print(f"{path}: other settings; its circuits are replaced")
  result["full_model"] = circuit_errors(
      params, graph, edge_pruning.full_masks(graph), held_out, held_reference,
      rows, spec.lds_spec)
  for token in which:
    log_alpha, history = edge_pruning.prune(
        jax.random.PRNGKey(seed), params, graph, train, reference, rows[token],
        prune_spec)
    masks = edge_pruning.binary_masks(log_alpha, prune_spec)
    kept = edge_pruning.kept_edges(masks, graph)
    result["circuits"][token] = {
        "kept_edges": kept, "n_kept": len(kept),
        "achieved_sparsity": 1.0 - len(kept) / graph.n_edges(),
        "history": {str(s): {"mse": m, "expected_sparsity": e}
                    for s, (m, e) in history.items()},
        "errors": circuit_errors(params, graph, masks, held_out, held_reference,
                                 rows, spec.lds_spec)}
  circuits = result["circuits"]
  if all(t in circuits for t in TOKENS):
    a, b = (set(circuits[t]["kept_edges"]) for t in TOKENS)
    result["overlap"] = {"jaccard": edge_pruning.jaccard(a, b), "shared": len(a & b),
                         "only_token1": len(a - b), "only_token2": len(b - a)}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  metrics_table.atomic_write_text(path, json.dumps(result, indent=2) + "\n")
  print_summary(result, path)
  return result


def print_summary(result: dict, path: str):
  print(f"edge pruning of {result['member']} at {result['sequences']:,} "
        f"sequences, H = {result['settings']['haystack']}, "
        f"{result['n_edges']} edges, target sparsity "
        f"{result['sparsity']:g}")
  print(f"{'circuit':<10} {'kept':>6}  {'mse->full tok1':>14} {'mse->full tok2':>14}"
        f"  {'error tok1':>10} {'error tok2':>10}")
  for name, entry in [("full", {"n_kept": result["n_edges"],
                                "errors": result["full_model"]})] + [
      (f"token {t}", result["circuits"][t]) for t in TOKENS
      if t in result["circuits"]]:
    e = entry["errors"]
    print(f"{name:<10} {entry['n_kept']:>6}  {e['token1']['mse_to_full']:>14.4f} "
          f"{e['token2']['mse_to_full']:>14.4f}  {e['token1']['error_median']:>10.4f} "
          f"{e['token2']['error_median']:>10.4f}")
  if "overlap" in result:
    o = result["overlap"]
    print(f"overlap: Jaccard {o['jaccard']:.3f} ({o['shared']} shared, "
          f"{o['only_token1']} only token 1, {o['only_token2']} only token 2)")
  print(path)


def define_flags():
  flags.DEFINE_string("workdir", None, "LDS run directory.", required=True)
  flags.DEFINE_integer("sequences", -1, "Checkpoint (sequences seen); -1: newest.")
  flags.DEFINE_string("member", "", "Population member ('' = first).")
  flags.DEFINE_enum("token", "both", ["1", "2", "both"],
                    "Circuit of the first (1), later (2) or both tokens.")
  flags.DEFINE_float("sparsity", 0.95, "Target fraction of edges removed.")
  flags.DEFINE_integer("haystack", 5, "Haystack length H of the needle prompts.")
  flags.DEFINE_integer("examples", 16, "Needle examples (systems sets).")
  flags.DEFINE_integer("trials", 16, "Trajectories per example.")
  flags.DEFINE_integer("seed", 0, "Prompt and mask-sampling seed.")
  flags.DEFINE_integer("steps", edge_pruning.PruneSpec.steps, "Optimisation steps.")
  flags.DEFINE_integer("batch_size", edge_pruning.PruneSpec.batch_size,
                       "Prompts per step.")


@cli.exit_on_user_error
def main(argv):
  del argv
  cli.quiet_library_logs()
  f = flags.FLAGS
  if f.steps < 1 or f.batch_size < 1:
    raise UserError("--steps and --batch_size must be >= 1")
  run(f.workdir, f.sequences, f.member,
      TOKENS if f.token == "both" else (f.token,), f.sparsity, f.haystack,
      f.examples, f.trials, f.seed,
      edge_pruning.PruneSpec(steps=f.steps, batch_size=f.batch_size))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
