"""Eval-time analyses of an induction-head run on its whole training
distribution (the 78,400 enumerated sequences; Singh et al., ICML 2024).

  python -m icl_transience.proj.transience.induction_heads.analyse \\
      --workdir=runs/ih --fig4a [--member=...] [--sequences=-1]
  python -m icl_transience.proj.transience.induction_heads.analyse \\
      --workdir=runs/ih_noclamp --progress --subsample=9800

--fig4a (Fig. 4a, Table 1 text; one checkpoint): accuracy and loss of the
whole model, of each last-block head kept alone (the others ablated) and
ablated alone, and with layer 1's direct path removed (every layer-1 head
ablated, layer 2's patterns and values kept from the clean pass); with the
heads' induction strengths from the metrics table. Check K5.
--progress (Figs. 10 right and 12; every checkpoint): the composite
subcircuit's progress (the loss with head 0:2's pattern clamped to
previous-token, every layer-2 head but 1:3 ablated), the copy subcircuit's
(the loss with 1:3's match clamped), and the loss changes from removing layer
1's direct path (where the run's clamps are layer-2 ablations at most) and
from ablating every layer-2 head. Check K10.
The run's own clamps hold in every pass. Writes workdir/analyses/*.json and
figures/ih_fig4a_<member>.png or ih_progress_<member>.png.
"""
import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
from absl import app
from absl import flags

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience import tasks
from icl_transience.analysis import figures
from icl_transience.errors import UserError
from icl_transience.proj.transience import interventions
from icl_transience.proj.transience import probes
from icl_transience.proj.transience import sources
from icl_transience.proj.transience.induction_heads import circuits
from icl_transience.proj.transience.induction_heads import distribution
from icl_transience.proj.transience.induction_heads import task as ih_task
from icl_transience.train import checkpoints
from icl_transience.train import loop
from icl_transience.train import pretrained

CHUNKS = 16


class Run:
  """A run's model, clamps and whole training distribution."""

  def __init__(self, workdir: str, subsample: int = 0):
    self.workdir, self.c = workdir, config_lib.load_run_config(workdir)
    if tasks.task_name(self.c) != "induction_heads":
      raise UserError(f"--workdir: {workdir} is a '{tasks.task_name(self.c)}' "
                      "run, not an induction_heads one")
    self.task = ih_task.InductionHeadsTask(self.c)
    every = distribution.enumerate_training_sequences(self.task.splits[0],
                                                      self.c.ih.train_classes)
    pick = np.arange(len(every.query_class))
    if subsample:  # a fixed random subset (seed 0)
      pick = np.sort(np.random.default_rng(0).permutation(pick)[:subsample])
    seqs = ih_task.strength_set(every, pick)
    table = sources.load_table(self.c.data)
    self.feats = table[seqs["classes"], seqs["exemplars"]]
    self.labels, self.target = jnp.asarray(seqs["labels"]), jnp.asarray(seqs["target"])
    self.query_slot = jnp.asarray(seqs["query_slot"])
    self._programs = {}  # (clamps, intervention) -> its jitted measure

  def clamps(self, **extra) -> circuits.Clamps:
    """The run's clamps with `extra` added, block by block."""
    base = self.task.clamps
    return dataclasses.replace(base, **{
        k: circuits.merge(getattr(base, k), v) for k, v in extra.items()})

  def direct_path_removed(self, hyper):
    """Layer 1's direct path removed (every layer-1 head ablated, layer 2's
    patterns and values from the clean pass), as an intervention; None
    where the run's clamps are more than layer-2 ablations or one head is
    left alone (the clean pass would not be the run's model)."""
    clamps = self.task.clamps
    if (dataclasses.replace(clamps, ablate=()).any or float(hyper["only_head"]) >= 0
        or any(block != 1 for block, _ in clamps.ablate)):
      return None
    return interventions.Intervention(ablate=circuits.merge(((0, "all"),), clamps.ablate),
                                      keep=((1, ("pattern", "v")),))

  def measure(self, params, hyper, clamps=None, iv=None) -> dict:
    """{loss, acc} over the whole distribution, under clamps (circuits) or
    an intervention with clean activations (interventions.forward); one
    compiled program per clamp set, reused across checkpoints and members."""
    if (clamps, iv) not in self._programs:
      self._programs[clamps, iv] = jax.jit(functools.partial(
          self._measure, clamps=clamps, iv=iv))
    out = self._programs[clamps, iv](params, hyper)
    return {k: float(jnp.mean(v)) for k, v in out.items()}

  def _measure(self, params, hyper, clamps, iv):
    model = self.task.model

    def chunk(args):
      feats, labels, target = args
      if iv is not None:
        logits = interventions.forward(model, params, feats, labels, iv, target)
      else:
        logits = circuits.forward(model, params, feats, labels, target, clamps,
                                  hyper["match_strength"], hyper["only_head"])
      m = probes.query_metrics(logits, labels, target)
      return {"loss": m["loss"], "acc": m["acc"]}
    chunks = math.gcd(len(self.target), CHUNKS)
    split = lambda x: x.reshape((chunks, -1) + x.shape[1:])
    return jax.lax.map(chunk, tuple(map(split, (self.feats, self.labels,
                                                self.target))))


def load(workdir: str, sequences: int, member: str):
  ref = ml_collections.ConfigDict(dict(workdir=workdir, sequences=sequences,
                                       member=member))
  return pretrained.load_params(ref, "--workdir", loop.make_mesh(1))


def hyper_of(c, member: str) -> dict:
  members = config_lib.members(c)
  m = next((m for m in members if m.name == member), members[0])
  return {k: jnp.float32(v) for k, v in m.hyper.items()}


def spearman(x, y) -> float:
  rank = lambda v: np.argsort(np.argsort(v))
  return float(np.corrcoef(rank(np.asarray(x)), rank(np.asarray(y)))[0, 1])


def fig4a(run: Run, sequences: int = -1, member: str = "") -> dict:
  params, seen = load(run.workdir, sequences, member)
  member = member or config_lib.members(run.c)[0].name
  hyper, n = hyper_of(run.c, member), run.c.model.n_heads
  last = run.c.model.depth - 1
  others = lambda h: tuple(i for i in range(n) if i != h)
  result = {"sequences": seen, "member": member,
            "full": run.measure(params, hyper, run.clamps()),
            "keep_only": [run.measure(params, hyper, run.clamps(
                ablate=((last, others(h)),))) for h in range(n)],
            "ablate_one": [run.measure(params, hyper, run.clamps(
                ablate=((last, (h,)),))) for h in range(n)]}
  direct = run.direct_path_removed(hyper)
  if direct is not None:
    result["direct_path_removed"] = run.measure(params, hyper, iv=direct)
  rows = metrics_table.read(run.workdir)
  strength = {r["metric"]: r["value"] for r in rows if r["member"] == member
              and r["evaluator"] == "induction_strength" and r["sequences"] == seen}
  result["strength"] = [strength.get(f"head{h}") for h in range(n)]
  keep = [k["acc"] for k in result["keep_only"]]
  if None not in result["strength"]:
    result["spearman_keep_only_vs_strength"] = spearman(keep, result["strength"])
  result["checks"] = {
      "K5 full accuracy >= .995": result["full"]["acc"] >= 0.995,
      "K5 every ablate-one >= .98": min(a["acc"] for a in result["ablate_one"]) >= 0.98,
      "K5 keep-only span >= 0.4": max(keep) - min(keep) >= 0.4,
      "K5 Spearman(keep-only, strength) >= 0.7": (
          result.get("spearman_keep_only_vs_strength", -1) >= 0.7),
      "K5 strongest head alone >= .9": (None if None in result["strength"] else
                                       keep[int(np.argmax(result["strength"]))] >= 0.9),
      "K5 direct path costs < 0.5 %": ("direct_path_removed" in result and
          result["full"]["acc"] - result["direct_path_removed"]["acc"] < 0.005),
  }
  return result


def progress(run: Run, member: str = "") -> dict:
  member = member or config_lib.members(run.c)[0].name
  hyper, n = hyper_of(run.c, member), run.c.model.n_heads
  if n < 4 or run.c.model.depth != 2:
    raise UserError("--progress: the measures clamp heads 0:2 and 1:3 of a "
                    "2-block model with >= 4 heads")
  rest = tuple(h for h in range(n) if h != 3)
  direct = run.direct_path_removed(hyper)
  with checkpoints.manager(run.workdir, read_only=True) as mngr:
    steps = sorted(mngr.all_steps())
  points = []
  for step in steps:
    params, seen = load(run.workdir, step * run.c.batch_size, member)
    base = run.measure(params, hyper, run.clamps())
    points.append({
        "sequences": seen, "loss": base["loss"],
        "composite": run.measure(params, hyper, run.clamps(
            prev_token=((0, (2,)),), ablate=((1, rest),)))["loss"],
        "copy": run.measure(params, hyper, run.clamps(induction=((1, (3,)),)))["loss"],
        "layer2_ablated": run.measure(params, hyper, run.clamps(
            ablate=((1, "all"),)))["loss"] - base["loss"],
        "layer1_direct_removed": (None if direct is None else run.measure(
            params, hyper, iv=direct)["loss"] - base["loss"])})
  return {"member": member, "points": points}


def draw_fig4a(result: dict, path: str):
  fig, ax = plt.subplots(figsize=(5, 4))
  s = result["strength"]
  ax.plot(s, [k["acc"] for k in result["keep_only"]], "o", label="keep only this head")
  ax.plot(s, [a["acc"] for a in result["ablate_one"]], "^", label="ablate this head")
  ax.set(xlabel="induction strength", ylabel="accuracy (78,400 sequences)",
         title=f"Fig. 4a: {result['member']} at {result['sequences']:,}")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  figures.save(fig, path)


def draw_progress(result: dict, path: str):
  fig, ax = plt.subplots(figsize=(6, 4))
  x = [p["sequences"] for p in result["points"]]
  for key, label in (("loss", "train distribution (run's own clamps)"),
                     ("composite", "composite subcircuit (PT clamp 0:2)"),
                     ("copy", "copy subcircuit (match clamp 1:3)"),
                     ("layer2_ablated", "loss change: layer 2 ablated"),
                     ("layer1_direct_removed", "loss change: layer 1's direct path removed")):
    if result["points"] and result["points"][0][key] is not None:
      ax.plot(x, [p[key] for p in result["points"]], label=label, lw=1.5)
  ax.axhline(np.log(2), color="grey", ls="--", lw=1)
  ax.set(xlabel="sequences seen", ylabel="loss", title=f"Figs. 10 and 12: {result['member']}")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  figures.save(fig, path)


def define_flags():
  flags.DEFINE_string("workdir", None, "Run directory.", required=True)
  flags.DEFINE_bool("fig4a", False, "Keep-only-one / ablate-one at one checkpoint.")
  flags.DEFINE_bool("progress", False, "Subcircuit progress at every checkpoint.")
  flags.DEFINE_integer("sequences", -1, "--fig4a's checkpoint (-1: newest).")
  flags.DEFINE_string("member", "", "Population member ('' = first).")
  flags.DEFINE_integer("subsample", 0, "Measure on this many of the training "
                       "sequences (a fixed random subset; 0: all).")


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  cli.quiet_library_logs()
  if f.fig4a == f.progress:
    raise UserError("--fig4a or --progress: choose one")
  if f.subsample < 0:
    raise UserError(f"--subsample: must be >= 0, got {f.subsample}")
  run = Run(f.workdir, f.subsample)
  result = fig4a(run, f.sequences, f.member) if f.fig4a else progress(run, f.member)
  name = (f"fig4a_{result['member']}_{result['sequences']}" if f.fig4a
          else f"progress_{result['member']}")
  out = os.path.join(f.workdir, "analyses", f"{name}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  metrics_table.atomic_write_text(out, json.dumps(result, indent=2) + "\n")
  figure = os.path.join(f.workdir, "figures", f"ih_{name}.png")
  (draw_fig4a if f.fig4a else draw_progress)(result, figure)
  for check, ok in result.get("checks", {}).items():
    print(f"  {'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {check}")
  print(out)
  print(figure)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
