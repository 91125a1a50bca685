"""Report of a learning-plateau run (Fu et al.; our acceptance checks).

  python -m icl_transience.report --workdir=runs/strategies

From the run's metrics table, per member (a condition or strategy), with
steps = optimizer steps and chance = mean over hidden factors of 1 / n_e:
  plateau_length     first step at which ICL accuracy exceeds
                     chance + 0.5 (final - chance) (proj/plateaus/plateau.py;
                     null when ICL never leaves chance)
  icl_above_half     first step at which ICL accuracy exceeds 0.5
  near_chance_until  first step at which ICL accuracy exceeds chance + 0.05,
                     and near_chance_fraction = that step / the last step
                     (our acceptance check 1 asks >= 0.2)
  weights_probe_{a,b,pass}_half   first step at which the weights-probe score
                     exceeds 50% of its final value (wording of our acceptance check 2)
                     (pass: the pass-through probe of Fu et al.'s code,
                     task plateau_authors)
  weights_probe_{a,b,pass}_rise   the same on the probe's rise above its chance
                     (mean of 1 / n_f over the factors that vary), like
                     plateau_length
  context_probe_rise the context probe's rise step (chance 1 / n_hidden)
  final_*            the last evaluation's values
  plateau_vs_first   plateau_length / the first member's (acceptance check 4: <= 0.7)
Writes out_dir/report.json and out_dir/figures/plateau.png (ICL, IWL, the
two weights probes and the context probe against steps, one line per member).
"""
import json
import math
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from icl_transience import config as config_lib  # pylint: disable=wrong-import-position
from icl_transience import metrics_table  # pylint: disable=wrong-import-position
from icl_transience.analysis import curves  # pylint: disable=wrong-import-position
from icl_transience.analysis import figures  # pylint: disable=wrong-import-position
from icl_transience.proj.plateaus import plateau  # pylint: disable=wrong-import-position
from icl_transience.proj.plateaus import factor_sequences as fseq  # pylint: disable=wrong-import-position,line-too-long
from icl_transience.errors import UserError  # pylint: disable=wrong-import-position

FIGURE = "plateau.png"
NEAR_CHANCE = 0.05            # our plateau acceptance check 1: within chance + 0.05
COLUMNS = {"plateau": "plateau_length", "icl>0.5": "icl_above_half",
           "near_chance": "near_chance_fraction",
           "wprobe_a50%": "weights_probe_a_half",
           "wprobe_b50%": "weights_probe_b_half",
           "wprobe_p50%": "weights_probe_pass_half", "final_icl": "final_icl",
           "final_wp_a": "final_weights_probe_a",
           "final_ctx": "final_context_probe", "vs_first": "plateau_vs_first"}
PANELS = (("icl", "acc", "ICL accuracy (D_rnd)"),
          ("iwl", "acc", "IWL accuracy (D_fix)"),
          ("weights_probe", "a", "weights probe (a: no attention;\nb dashed: alone; pass dotted)"),
          ("context_probe", "acc", "context probe ({target})"))


def curve(rows, member: str, evaluator: str, metric: str):
  """(steps, values) of one metric, sorted by step; empty arrays if absent."""
  points = sorted((r["step"], r["value"]) for r in rows
                  if r["member"] == member and r["evaluator"] == evaluator
                  and r["metric"] == metric)
  return (np.array([p[0] for p in points], np.float64),
          np.array([p[1] for p in points], np.float64))


def _finite(x) -> float | None:
  return float(x) if x is not None and math.isfinite(x) else None


def _rise(steps, values, chance: float) -> float | None:
  return _finite(curves.plateau_length(steps, values, chance)) if len(steps) else None


def member_summary(rows, member: str, chance: float, probe_chance: float,
                   context_chance: float) -> dict:
  steps, icl = curve(rows, member, "icl", "acc")
  if not len(steps):
    raise UserError(f"--workdir: member {member} has no icl/acc rows")
  out = {"member": member, "last_step": float(steps[-1]),
         "plateau_length": _rise(steps, icl, chance),
         "icl_above_half": _finite(curves.crossing_step(steps, icl, 0.5)),
         "near_chance_until": _finite(curves.crossing_step(
             steps, icl, chance + NEAR_CHANCE))}
  out["near_chance_fraction"] = (
      out["near_chance_until"] / steps[-1]
      if out["near_chance_until"] is not None and steps[-1] > 0 else None)
  for variant in ("a", "b", "pass"):
    s, v = curve(rows, member, "weights_probe", variant)
    out[f"weights_probe_{variant}_half"] = _finite(curves.crossing_step(
        s, v, 0.5 * curves.final_value(v))) if len(s) else None
    out[f"weights_probe_{variant}_rise"] = _rise(s, v, probe_chance)
    out[f"final_weights_probe_{variant}"] = float(v[-1]) if len(v) else None
  s, v = curve(rows, member, "context_probe", "acc")
  out["context_probe_rise"] = _rise(s, v, context_chance)
  out["final_context_probe"] = float(v[-1]) if len(v) else None
  out["final_icl"] = float(icl[-1])
  s, v = curve(rows, member, "iwl", "acc")
  out["final_iwl"] = float(v[-1]) if len(v) else None
  return out


def figure(rows, members, chance: float, path: str,
           probe_target: str = "hidden factor"):
  logged = {r["evaluator"] for r in rows}
  panels = [p for p in PANELS if p[0] in logged]   # plateau_authors: no context probe
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (evaluator, metric, title) in zip(axes, panels):
    for i, member in enumerate(members):
      colour = colours[i % len(colours)]
      ax.plot(*curve(rows, member, evaluator, metric), color=colour, label=member)
      if evaluator == "weights_probe":
        ax.plot(*curve(rows, member, evaluator, "b"), color=colour, ls="--")
        ax.plot(*curve(rows, member, evaluator, "pass"), color=colour, ls=":")
    if evaluator in ("icl", "iwl"):
      ax.axhline(chance, color="grey", lw=0.8, ls=":")
    ax.set(title=title.format(target=probe_target), xlabel="step",
           ylim=(0, 1.02))
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  figures.save(fig, path, dpi=110)


def _fmt(value) -> str:
  return "-" if value is None else f"{value:.4g}"


def report(workdir: str, out_dir: str) -> dict:
  """Prints the table, writes report.json and the figure to out_dir."""
  rows = metrics_table.read(workdir)
  if not rows:
    raise UserError(f"--workdir: no metrics in {workdir} "
                    f"({metrics_table.FILENAME} missing or empty)")
  p = config_lib.load_run_config(workdir).plateau
  spec = fseq.FactorSequenceSpec(factor_sizes=tuple(p.factor_sizes),
                                 hidden_factors=tuple(p.hidden_factors),
                                 label_vocab=p.get("label_vocab",
                                                   max(p.factor_sizes)))
  chance = fseq.chance_accuracy(spec)
  probe_chance = float(np.mean([1 / n for n in p.factor_sizes if n > 1]))
  members = list(dict.fromkeys(r["member"] for r in rows))
  context_chance = 1 / plateau.context_probe_classes(p)
  summaries = [member_summary(rows, m, chance, probe_chance, context_chance)
               for m in members]
  first = summaries[0]["plateau_length"]
  for s in summaries:
    ok = first and s["plateau_length"] is not None
    s["plateau_vs_first"] = s["plateau_length"] / first if ok else None
  os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
  path = os.path.join(out_dir, "figures", FIGURE)
  on_label = p.get("context_probe_target", "factor") == "label"
  figure(rows, members, chance, path,
         "the item's label" if on_label else "hidden factor")
  summary = {"chance": chance, "probe_chance": probe_chance,
             "members": summaries, "figure": path}
  print(f"chance {chance:.4f}; steps = optimizer steps")
  print("member".ljust(36) + "".join(name.rjust(12) for name in COLUMNS))
  for s in summaries:
    print(s["member"][:35].ljust(36) + "".join(_fmt(s[key]).rjust(12)
                                               for key in COLUMNS.values()))
  metrics_table.atomic_write_text(os.path.join(out_dir, metrics_table.REPORT_FILENAME),
                                  json.dumps(summary, indent=2) + "\n")
  return summary
