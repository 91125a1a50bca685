"""Report of a dictionary stand-in run (our acceptance check).

For every member: the first- and second-token accuracy curves over the
evaluated steps, the step at which each first reaches half its final value
(analysis/curves.py: plateau_length with chance 0, fraction 0.5), their ratio
and the acceptance verdict (first / second >= 2), plus the misdirected-label
scores at the last step. Printed, written to out_dir/report.json and drawn to
out_dir/figures/dictionary_<member>.png.

  python -m icl_transience.report --workdir=runs/dict_cpu
"""
import json
import math
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from icl_transience import metrics_table  # pylint: disable=wrong-import-position
from icl_transience.analysis import figures  # pylint: disable=wrong-import-position
from icl_transience.analysis import curves  # pylint: disable=wrong-import-position
from icl_transience.errors import UserError  # pylint: disable=wrong-import-position

REQUIRED_RATIO = 2.0   # our dictionary acceptance check: second-token >= 2x earlier
HALF = 0.5             # "reaches 50% of its final value"
MISDIRECTED = ("first_follows_label", "first_follows_task",
               "second_follows_continuation", "second_follows_label")


def _finite(x):
  return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _step(x):
  return int(x) if math.isfinite(x) else None


def emergence(steps, first, second, ratio: float = REQUIRED_RATIO) -> dict:
  """Half-final steps of the first- and second-token accuracy curves and the
  acceptance verdict. A step is None when the curve never rises
  (final < 0.05)."""
  half = lambda values: curves.plateau_length(steps, values, 0.0, HALF)
  t_first, t_second = half(first), half(second)
  if t_second > 0:
    observed = t_first / t_second
  else:  # second token already at half its final value at the first step
    observed = math.inf if t_first > 0 else math.nan
  return {"first_half_step": _step(t_first), "second_half_step": _step(t_second),
          "first_final": first[-1], "second_final": second[-1],
          "ratio": _finite(observed) if not math.isinf(observed) else "inf",
          "second_earlier_2x": bool(observed >= ratio)}


def format_emergence(e: dict) -> str:
  return (f"first token: final {e['first_final']:.3f}, half at step "
          f"{e['first_half_step']}; second token: final {e['second_final']:.3f}, "
          f"half at step {e['second_half_step']}; ratio {e['ratio']} -> "
          f"{'PASS' if e['second_earlier_2x'] else 'FAIL'} (required: >= "
          f"{REQUIRED_RATIO:g})")


def _curve(rows, member, evaluator, metric):
  points = sorted((r["step"], r["value"]) for r in rows if r["member"] == member
                  and r["evaluator"] == evaluator and r["metric"] == metric)
  return [p[0] for p in points], [p[1] for p in points]


def member_report(rows, member: str) -> dict | None:
  steps, first = _curve(rows, member, "first_token", "acc")
  second_steps, second = _curve(rows, member, "second_token", "acc")
  if not steps or steps != second_steps:
    return None
  out = {"member": member, "steps": steps, "first_acc": first,
         "second_acc": second, **emergence(steps, first, second)}
  for metric in MISDIRECTED:
    _, values = _curve(rows, member, "misdirected", metric)
    out[f"misdirected_{metric}"] = values[-1] if values else None
  return out


def figure(member: dict, path: str):
  fig, ax = plt.subplots(figsize=(7, 4))
  x = [max(s, 1) for s in member["steps"]]
  ax.plot(x, member["first_acc"], label="first token (needs the label)",
          color="tab:red")
  ax.plot(x, member["second_acc"], label="second token (continuation)",
          color="tab:blue")
  for key, colour in (("first_half_step", "tab:red"), ("second_half_step", "tab:blue")):
    if member[key] is not None:
      ax.axvline(max(member[key], 1), color=colour, ls=":", lw=1)
  ax.set(xscale="log", xlabel="optimizer steps", ylabel="accuracy",
         ylim=(-0.02, 1.02), title=f"Dictionary stand-in: {member['member']} "
         f"(ratio {member['ratio']})")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  figures.save(fig, path)


def report(workdir: str, out_dir: str) -> dict:
  """Builds, prints and saves the report of the run in workdir."""
  rows = metrics_table.read(workdir)
  members = [m for m in (member_report(rows, name) for name in
                         dict.fromkeys(r["member"] for r in rows)) if m]
  if not members:
    raise UserError(f"--workdir: no first_token / second_token accuracy in "
                    f"{metrics_table.path(workdir)}")
  os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
  summary = {"members": members}
  for m in members:
    print(f"[{m['member']}] {format_emergence(m)}")
    print(f"  misdirected label, last step: first follows the label "
          f"{m['misdirected_first_follows_label']}, second follows the "
          f"continuation {m['misdirected_second_follows_continuation']}")
    figure(m, os.path.join(out_dir, "figures", f"dictionary_{m['member']}.png"))
  metrics_table.atomic_write_text(os.path.join(out_dir, metrics_table.REPORT_FILENAME),
                                  json.dumps(summary, indent=2) + "\n")
  return summary
