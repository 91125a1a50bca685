"""The OOD prompts over training (Daniels et al. 2025): their curves and
our acceptance checks 8-10.

  8  misdirected label, after t1 (the first evaluation at which the normal
     "1 after final" median is below 0.3): at the last evaluation the first
     token follows the label, error >= 1.3, while the second follows the
     observations, error <= 0.05;
  9  synchronised observations: at the last evaluation the "2 after final"
     error is >= 0.3, where normal prompts' is <= 0.02 (the normal needle of
     the same haystack if the run has it, else the report's evaluator);
  10 unseen label + new system: at the last evaluation every "k after
     final" error is within a factor 2 of the same evaluator's "k after
     initial" (the model's own first-segment errors), for the k both log.
Each check reads every evaluator of its variant; `pass` is null when the
run cannot decide it (no such evaluator, or no t1 for check 8).
"""
import dataclasses

from icl_transience.analysis import figures
from icl_transience.proj.lds_recall import task as lds_task
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


@dataclasses.dataclass(frozen=True)
class OODChecks:
  misdirected_first: float = 1.3    # check 8: first-token error at least
  misdirected_second: float = 0.05  # check 8: second-token error at most
  synchronised_second: float = 0.3  # check 9: second-token error at least
  normal_second: float = 0.02       # check 9: ... where normal prompts' is at most
  unseen_factor: float = 2.0        # check 10: within this factor


def points(rows, member, evaluator, metric) -> list:
  """[(sequences, value)] of one curve, sorted by sequences."""
  return list(zip(*figures.series(rows, member, evaluator, metric)))


def last_point(rows, member, evaluator, metric):
  """(sequences, value) of a curve's last point, or (None, None)."""
  curve = points(rows, member, evaluator, metric)
  return curve[-1] if curve else (None, None)


def fmt(value) -> str:
  """A report value as printed: '-', PASS / fail, 4 significant digits."""
  if value is None:
    return "-"
  if isinstance(value, bool):
    return "PASS" if value else "fail"
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def ood_evaluators(c) -> dict[str, tuple[int, str]]:
  return {e: hv for e, hv in lds_task.needle_evaluators(c).items()
          if hv[1] != "normal"}


def curves_figure(rows, member: str, c, path: str) -> bool:
  """One panel per OOD evaluator: its "1 / 2 after final" medians (solid)
  and those of the normal needle of its haystack, if logged (dashed),
  against training examples. Returns False when there is nothing to draw."""
  chosen = [e for e in ood_evaluators(c)
            if points(rows, member, e, "after_final_1_median")]
  if not chosen:
    return False
  fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen), 3.4),
                           squeeze=False, sharey=True)
  for ax, evaluator in zip(axes[0], chosen):
    normal = f"needle_h{ood_evaluators(c)[evaluator][0]}"
    for k, colour in ((1, "tab:red"), (2, "tab:blue")):
      for name, style, label in ((evaluator, "-", "OOD"), (normal, "--", "normal")):
        curve = [p for p in points(rows, member, name, f"after_final_{k}_median")
                  if p[0] > 0]
        if curve:
          ax.plot(*zip(*curve), style, color=colour, lw=1.4,
                  label=f"{k} after final ({label})")
    ax.set(xscale="log", title=evaluator, xlabel="training examples")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("error (median over examples)")
  axes[0][0].legend(fontsize=7)
  fig.suptitle(f"OOD prompts over training: {member}")
  fig.tight_layout()
  figures.save(fig, path)
  return True


def _evaluators_of(c, variant: str) -> list[str]:
  return [e for e, (_, v) in ood_evaluators(c).items() if v == variant]


def misdirected(rows, member, c, t1, checks: OODChecks) -> dict:
  out = {}
  for e in _evaluators_of(c, "misdirected_label"):
    at, first = last_point(rows, member, e, "after_final_1_median")
    _, second = last_point(rows, member, e, "after_final_2_median")
    decided = None not in (t1, first, second) and at >= t1
    out[e] = {"at": at, "first": first, "second": second,
              "pass": (first >= checks.misdirected_first and
                       second <= checks.misdirected_second) if decided else None}
  return out


def synchronised(rows, member, c, main_evaluator: str, checks: OODChecks) -> dict:
  out = {}
  for e in _evaluators_of(c, "synchronised"):
    normal = f"needle_h{ood_evaluators(c)[e][0]}"
    if not points(rows, member, normal, "after_final_2_median"):
      normal = main_evaluator
    _, second = last_point(rows, member, e, "after_final_2_median")
    _, normal_second = last_point(rows, member, normal, "after_final_2_median")
    decided = None not in (second, normal_second)
    out[e] = {"second": second, "normal": normal, "normal_second": normal_second,
              "pass": (second >= checks.synchronised_second and
                       normal_second <= checks.normal_second) if decided else None}
  return out


def unseen_system(rows, member, c, checks: OODChecks) -> dict:
  out = {}
  for e in _evaluators_of(c, "unseen_system"):
    ratios = {}
    for k in sorted(set(c.lds.final_steps) & set(c.lds.initial_steps)):
      _, final = last_point(rows, member, e, f"after_final_{k}_median")
      _, initial = last_point(rows, member, e, f"after_initial_{k}_median")
      if None not in (final, initial) and initial > 0:
        ratios[str(k)] = final / initial
    f = checks.unseen_factor
    out[e] = {"ratios": ratios, "pass": all(1 / f <= r <= f for r in ratios.values())
              if ratios else None}
  return out


def report(rows, member, c, t1, main_evaluator: str,
           checks: OODChecks = OODChecks()) -> dict:
  """Checks 8-10 for one member ({} for a run without OOD evaluators)."""
  if not ood_evaluators(c):
    return {}
  return {"misdirected_label": misdirected(rows, member, c, t1, checks),
          "synchronised": synchronised(rows, member, c, main_evaluator, checks),
          "unseen_system": unseen_system(rows, member, c, checks)}


def summary_lines(result: dict) -> list[str]:
  lines = []
  for check, per_evaluator in result.items():
    for evaluator, r in per_evaluator.items():
      values = ", ".join(f"{k}={fmt(v)}" for k, v in r.items()
                         if k not in ("pass", "ratios", "normal"))
      if "ratios" in r:
        values = ", ".join(f"k={k}: {fmt(v)}" for k, v in r["ratios"].items())
      lines.append(f"  {check} ({evaluator}): {values} {fmt(r['pass'])}")
  return lines
