"""Report of an LDS recall run (Daniels et al. 2025; our acceptance checks).

  python -m icl_transience.report --workdir=runs/lds_cpu

From the run's metrics table, per member:
  figures  in out_dir/figures: lds_recall_<member>.png, the paper's central
           figure: medians over examples (25-75% bands) of the "k after
           final" errors (k = 1, 2, ...) and "k after initial" against
           training examples, log x, with the pseudo-inverse baseline's
           medians on the same prompts dotted;
           lds_pretrain_<member>.png: pre-training error on test and training
           systems and the training loss; lds_ood_<member>.png: the
           "1 / 2 after final" medians of every OOD evaluator over
           training, beside the normal prompts of the same haystack;
           lds_memorisation_<member>.png: the same medians of the needle
           prompts on training systems and their own trajectories (each
           late start) beside those on test systems.
  checks   two timescales (acceptance check 4): t2 / t1 = the first
           evaluated sequences count at which the "2 / 1 after final" median
           falls below `threshold` (0.3); pass iff t2 < t1 and
           t1 / t2 >= `min_ratio` (2).
           Abrupt first token (acceptance check 5): with t_low the first
           count at which "1 after final" < `low` (0.1) and t_high the last
           count before it at which it is > `high` (0.8), pass iff
           t_low / t_high <= `max_span` (1.5). Counts of 0 (the initial
           evaluation) are never t_high.
           The OOD prompts: acceptance checks 8-10 (ood_report.py).
The checks read the needle evaluator of haystack length 5 if there is one,
else the run's first haystack length. Undefined times are null in
report.json.
"""
import dataclasses
import json
import os

import jax
import numpy as np

from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.analysis import figures  # selects matplotlib's Agg backend
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall import lds_baseline
from icl_transience.proj.lds_recall import lds_prompts
from icl_transience.proj.lds_recall import ood_report
from icl_transience.proj.lds_recall import task as lds_task
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

PREFERRED_HAYSTACK = 5           # Daniels et al. 2025 reads H = 5


@dataclasses.dataclass(frozen=True)
class Checks:
  """Thresholds of our LDS acceptance checks 4 and 5 (NOTES.md)."""
  threshold: float = 0.3   # check 4: "k after final" median below this
  min_ratio: float = 2.0   # check 4: t1 / t2 at least this
  high: float = 0.8        # check 5: from above this ...
  low: float = 0.1         # ... to below this ...
  max_span: float = 1.5    # ... within this factor of training examples


def pseudo_inverse_reference(c) -> float:
  """Mean error of the pseudo-inverse baseline (Daniels et al. 2025) on the
  run's own pretrain_test traces, over all positions like the model's `mse`."""
  task = lds_task.LDSTask(c)
  keys = task.eval_keys()
  spec = lds_task.eval_spec(task.spec)
  test_pool = task.pretrain_pools(keys, None, 0)
  error = jax.jit(lambda key, pool: lds_task.pretrain_error(
      lambda x: lds_baseline.pseudo_inverse_predict(x, spec), key, pool, spec,
      c.lds.pretrain_traces, c.lds.eval_batch))
  return float(error(jax.random.split(keys["traces"])[0], test_pool)["mse"])


def pseudo_inverse_needle(c, evaluator: str) -> dict[str, float]:
  """The pseudo-inverse baseline (Daniels et al. 2025) on the evaluator's own
  needle prompts, summarised as the model's rows are: the median over
  examples of the trial-median "k after final" / "k after initial" errors."""
  task = lds_task.LDSTask(c)
  haystack, variant = lds_task.needle_evaluators(c)[evaluator]
  stats = lds_prompts.needle_statistics(
      jax.jit(lambda x: lds_baseline.pseudo_inverse_predict(x, task.spec)),
      task.eval_keys()["needle"],
      lds_task.needle_spec(c, haystack, variant, task.spec), c.lds.needle_config)
  return {f"{kind}_{k}": float(np.median(medians[:, k - 1]))
          for kind, medians in (("after_final", stats.after_final),
                                ("after_initial", stats.after_initial))
          for k in c.lds[f"{kind.split('_')[1]}_steps"]}


def first_below(points, threshold: float):
  """First sequences count whose value is < threshold (None if none)."""
  return next((x for x, y in points if y < threshold), None)


def two_timescales(first, second, checks: Checks) -> dict:
  """Check 4 from the (sequences, median) points of "1" and "2 after final"."""
  t1 = first_below(first, checks.threshold)
  t2 = first_below(second, checks.threshold)
  ratio = t1 / t2 if t1 is not None and t2 else None
  passed = ratio is not None and t2 < t1 and ratio >= checks.min_ratio
  return {"t1": t1, "t2": t2, "ratio": ratio, "pass": passed}


def abruptness(first, checks: Checks) -> dict:
  """Check 5 from the (sequences, median) points of "1 after final"."""
  t_low = first_below(first, checks.low)
  before = [x for x, y in first if y > checks.high and x > 0 and
            (t_low is None or x < t_low)]
  t_high = before[-1] if before else None
  span = t_low / t_high if t_low is not None and t_high else None
  return {"t_high": t_high, "t_low": t_low, "span": span,
          "pass": span is not None and span <= checks.max_span}


def _last(rows, member, evaluator, metric):
  return ood_report.last_point(rows, member, evaluator, metric)[1]


def steps_logged(rows, evaluator: str, kind: str) -> list[int]:
  """k of every "{kind}_{k}_median" metric an evaluator logs, ascending."""
  found = {r["metric"] for r in rows if r["evaluator"] == evaluator}
  prefix = f"{kind}_"
  return sorted(int(m[len(prefix):-len("_median")]) for m in found
                if m.startswith(prefix) and m.endswith("_median"))



def _positive(points):
  return [p for p in points if p[0] > 0]


def recall_figure(rows, member: str, evaluator: str, path: str,
                  baseline: dict[str, float]):
  """"k after final" (solid) and "k after initial" (dashed) medians with
  25-75% bands against training examples (log x); the pseudo-inverse
  baseline's median of each curve as a dotted line of its colour."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for kind, style, cmap in (("after_final", "o-", "viridis"),
                            ("after_initial", "s--", "autumn")):
    colours = plt.get_cmap(cmap)
    steps = steps_logged(rows, evaluator, kind)
    for i, k in enumerate(steps):
      lines = [_positive(ood_report.points(rows, member, evaluator, f"{kind}_{k}_{q}"))
               for q in lds_task.QUARTILES]
      if not lines[1]:
        continue
      x, median = zip(*lines[1])
      colour = colours(0.85 * i / max(len(steps) - 1, 1))
      ax.plot(x, median, style, color=colour, lw=1.5, ms=3,
              label=f"{k} after {kind.split('_')[1]}")
      if f"{kind}_{k}" in baseline:
        ax.axhline(baseline[f"{kind}_{k}"], color=colour, ls=":", lw=1)
      if kind == "after_final" and lines[0] and lines[2]:
        ax.fill_between(x, [y for _, y in lines[0]], [y for _, y in lines[2]],
                        color=colour, alpha=0.15)
  ax.plot([], [], ":", color="grey", label="pseudo-inverse baseline")
  ax.set(xscale="log", xlabel="training examples (sequences)",
         ylabel="error |y_hat - y|^2 (median)", ylim=(0, None),
         title=f"Recall after the final label: {member}, {evaluator}")
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3)
  figures.save(fig, path)


def pretrain_figure(rows, member: str, path: str, reference: float):
  fig, ax = plt.subplots(figsize=(7, 4))
  for evaluator, metric, label in (("pretrain_test", "mse", "test systems"),
                                   ("pretrain_train", "mse", "train systems"),
                                   ("train_batch", "loss", "training loss")):
    points = _positive(ood_report.points(rows, member, evaluator, metric))
    if points:
      ax.plot(*zip(*points), label=label, lw=1.5)
  ax.axhline(reference, color="grey", ls=":", lw=1,
             label="pseudo-inverse baseline (Daniels et al. 2025)")
  ax.set(xscale="log", yscale="log", xlabel="training examples (sequences)",
         ylabel="pre-training error", title=f"Pre-training error: {member}")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  figures.save(fig, path)


def memorisation_figure(rows, member: str, c, path: str) -> bool:
  """"1 / 2 after final" medians over training of the needle prompts on
  test systems (black) and on training systems and their own trajectories
  (one colour per late start); False if the run has no memorisation
  evaluators."""
  train = lds_task.train_needle_evaluators(c)
  if not train:
    return False
  haystack = next(iter(train.values()))[0]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  colours = plt.get_cmap("viridis")
  for ax, k in zip(axes, (1, 2)):
    curves = [(f"needle_h{haystack}", "test systems", "black")] + [
        (name, f"training systems, late start {late}",
         colours(0.85 * i / max(len(train) - 1, 1)))
        for i, (name, (_, late)) in enumerate(train.items())]
    for evaluator, label, colour in curves:
      points = _positive(ood_report.points(rows, member, evaluator,
                                           f"after_final_{k}_median"))
      if points:
        ax.plot(*zip(*points), "o-", color=colour, ms=3, lw=1.5, label=label)
    ax.set(xscale="log", xlabel="training examples (sequences)",
           title=f"{k} after final, H = {haystack}")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("error |y_hat - y|^2 (median)")
  axes[0].legend(fontsize=7)
  fig.suptitle(f"Memorisation: needles on training vs test systems ({member})")
  figures.save(fig, path)
  return True


def memorisation_summary(rows, member: str, c) -> dict:
  """The last "k after final" medians (k = 1, 2) of every memorisation
  evaluator and of the test-system prompts of its haystack."""
  train = lds_task.train_needle_evaluators(c)
  names = list(train) + list(dict.fromkeys(f"needle_h{h}" for h, _ in train.values()))
  return {name: {f"after_final_{k}": _last(rows, member, name, f"after_final_{k}_median")
                 for k in (1, 2)} for name in names}


def _pretrain_summary(rows, member: str) -> dict:
  test = ood_report.points(rows, member, "pretrain_test", "mse")
  best = min(test, key=lambda p: p[1]) if test else (None, None)
  return {"test_final": test[-1][1] if test else None,
          "test_min": best[1], "test_min_at": best[0],
          "train_final": _last(rows, member, "pretrain_train", "mse")}


def report(workdir: str, out_dir: str, checks: Checks = Checks()) -> dict:
  """Prints the summary, writes report.json and the figures to out_dir."""
  rows = metrics_table.read(workdir)
  if not rows:
    raise UserError(f"--workdir: no metrics in {workdir} "
                    f"({metrics_table.FILENAME} missing or empty)")
  c = config_lib.load_run_config(workdir)
  haystacks = tuple(c.lds.haystack_lens)
  haystack = PREFERRED_HAYSTACK if PREFERRED_HAYSTACK in haystacks else (
      haystacks[0])
  evaluator = f"needle_h{haystack}"
  reference = pseudo_inverse_reference(c)
  baseline = pseudo_inverse_needle(c, evaluator)
  os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
  summary = {"evaluator": evaluator, "checks": dataclasses.asdict(checks),
             "pseudo_inverse_pretrain_mse": reference,
             "pseudo_inverse_needle": baseline, "members": []}
  for member in dict.fromkeys(r["member"] for r in rows):
    first = ood_report.points(rows, member, evaluator, "after_final_1_median")
    second = ood_report.points(rows, member, evaluator, "after_final_2_median")
    paths = [os.path.join(out_dir, "figures", f"lds_{kind}_{member}.png")
             for kind in ("recall", "pretrain", "ood")]
    recall_figure(rows, member, evaluator, paths[0], baseline)
    pretrain_figure(rows, member, paths[1], reference)
    if not ood_report.curves_figure(rows, member, c, paths[2]):
      paths.pop()
    memorisation = os.path.join(out_dir, "figures", f"lds_memorisation_{member}.png")
    if memorisation_figure(rows, member, c, memorisation):
      paths.append(memorisation)
    final = {f"after_final_{k}": _last(rows, member, evaluator,
                                        f"after_final_{k}_median")
             for k in steps_logged(rows, evaluator, "after_final")}
    timescales = two_timescales(first, second, checks)
    summary["members"].append({
        "member": member, "two_timescales": timescales,
        "abrupt_first_token": abruptness(first, checks),
        "pretrain": _pretrain_summary(rows, member), "final": final,
        "ood": ood_report.report(rows, member, c, timescales["t1"], evaluator),
        "memorisation": memorisation_summary(rows, member, c),
        "figures": paths})
  for m in summary["members"]:
    row4, row5 = m["two_timescales"], m["abrupt_first_token"]
    print(f"[{m['member']}] {evaluator}: two timescales: "
          f"t2={ood_report.fmt(row4['t2'])} t1={ood_report.fmt(row4['t1'])} "
          f"ratio={ood_report.fmt(row4['ratio'])} {ood_report.fmt(row4['pass'])}; abrupt first "
          f"token: >{checks.high} at {ood_report.fmt(row5['t_high'])}, "
          f"<{checks.low} at {ood_report.fmt(row5['t_low'])}, "
          f"span={ood_report.fmt(row5['span'])} {ood_report.fmt(row5['pass'])}")
    print("  final medians: " + ", ".join(
        f"{k}={ood_report.fmt(v)}" for k, v in m["final"].items()))
    print("  pre-training: " + ", ".join(
        f"{k}={ood_report.fmt(v)}" for k, v in m["pretrain"].items()))
    for line in ood_report.summary_lines(m["ood"]):
      print(line)
    if m["memorisation"]:
      print("  memorisation (last 1 / 2 after final): " + "; ".join(
          f"{name} {ood_report.fmt(v['after_final_1'])} / "
          f"{ood_report.fmt(v['after_final_2'])}"
          for name, v in m["memorisation"].items()))
  metrics_table.atomic_write_text(
      os.path.join(out_dir, metrics_table.REPORT_FILENAME),
      json.dumps(summary, indent=2) + "\n")
  return summary
