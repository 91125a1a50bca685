"""Figures from the metrics table (matplotlib, Agg backend, PNG)."""
import collections
import os

import matplotlib
import numpy as np

from icl_transience import metrics_table
from icl_transience.errors import UserError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

def series(rows, member: str, evaluator: str, metric: str):
  """(sequences, values) sorted by sequences."""
  points = sorted((r["sequences"], r["value"]) for r in rows
                  if r["member"] == member and r["evaluator"] == evaluator
                  and r["metric"] == metric)
  return [p[0] for p in points], [p[1] for p in points]


def mark_divergence(ax, rows, member: str):
  """A dashed line where the member's training diverged (if it did)."""
  seen = metrics_table.diverged(rows).get(member)
  if seen is not None:
    ax.axvline(seen, color="tab:red", ls="--", lw=1, label="diverged")


def save(fig, path: str, dpi: int = 120):
  """Writes a PNG atomically (a crash never leaves a truncated file) and
  closes the figure."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    metrics_table.atomic_write(path, lambda f: fig.savefig(
        f, format="png", dpi=dpi, bbox_inches="tight"), binary=True)
  except OSError as e:  # a folder where the figure goes, a read-only folder
    raise UserError(f"{path}: cannot write the figure ({e.strerror or e}); "
                    "move what is there or choose another --out") from e
  finally:
    plt.close(fig)


def curves_figure(rows, member: str, curves, path: str):
  """The task's curves (tasks.Curve: evaluator, metric, label, colour)
  against sequences seen: on [0, 1] when they are all accuracies or
  probabilities, else on a log axis when every value is positive (losses,
  errors)."""
  fig, ax = plt.subplots(figsize=(7, 4))
  drawn, values = [], []
  for curve in curves:
    x, y = series(rows, member, curve.evaluator, curve.metric)
    if x:
      ax.plot(x, y, label=curve.label, color=curve.colour, lw=1.5)
      drawn.append(curve.metric)
      values += y
  if drawn and all("acc" in m or "prob" in m for m in drawn):
    ax.set_ylim(-0.02, 1.02)
  elif values and min(values) > 0:
    ax.set_yscale("log")
  mark_divergence(ax, rows, member)
  ax.set(xlabel="sequences seen", ylabel=", ".join(dict.fromkeys(drawn)),
         title=f"Evaluator curves: {member}")
  ax.legend(fontsize=8, loc="best")
  ax.grid(alpha=0.3)
  save(fig, path)


def loss_figure(rows, member: str, path: str):
  """Training loss and every evaluator's full cross-entropy."""
  fig, ax = plt.subplots(figsize=(7, 4))
  evaluators = sorted({r["evaluator"] for r in rows if r["member"] == member
                       and r["metric"] == "loss"})
  for evaluator in evaluators:
    x, y = series(rows, member, evaluator, "loss")
    ax.plot(x, y, label="train (batch)" if evaluator == "train_batch"
            else evaluator, lw=1.5)
  mark_divergence(ax, rows, member)
  ax.set(xlabel="sequences seen", ylabel="cross-entropy", yscale="log",
         title=f"Losses: {member}")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  save(fig, path)


def summary(rows, member: str, curves) -> list[str]:
  """One line per curve of the task: peak (and where) and final value."""
  seen = metrics_table.diverged(rows).get(member)
  lines = [] if seen is None else [f"{member:>12s} diverged at {seen / 1e6:.2f}M"]
  for curve in curves:
    x, y = series(rows, member, curve.evaluator, curve.metric)
    if x:
      label = curve.label
      peak = max(range(len(y)), key=y.__getitem__)
      lines.append(f"{member:>12s} {label:<32s} peak {y[peak]:.3f} at "
                   f"{x[peak] / 1e6:6.2f}M   final {y[-1]:.3f} at {x[-1] / 1e6:.2f}M")
  return lines


# The metric a population panel draws for an evaluator that the task's curves
# do not name: the first of these it has (else its first metric by name).
PANEL_METRICS = ("in_context_acc", "acc", "mse", "loss")
LOG_METRICS = ("loss", "mse")


def panel_metric(rows, evaluator: str, curves=()) -> str:
  named = {curve.evaluator: curve.metric for curve in curves}
  have = sorted({r["metric"] for r in rows if r["evaluator"] == evaluator})
  if named.get(evaluator) in have:
    return named[evaluator]
  return next((m for m in PANEL_METRICS if m in have), have[0])


def population_curves(rows, members, evaluator: str, metric: str):
  """Each member's series, and the mean and standard deviation over the
  members that have a value at each point: (curves, x, mean, std)."""
  curves = {m: series(rows, m, evaluator, metric) for m in members}
  points = collections.defaultdict(list)
  for x, y in curves.values():
    for xi, yi in zip(x, y):
      if np.isfinite(yi):  # a diverged member's NaN does not spoil the mean
        points[xi].append(yi)
  x = sorted(xi for xi in points if points[xi])
  mean = [float(np.mean(points[xi])) for xi in x]
  std = [float(np.std(points[xi])) for xi in x]
  return curves, x, mean, std


def population_figure(rows, path: str, task_curves=()):
  """One panel per evaluator: every member's curve, their mean and a band
  of one standard deviation around it."""
  members = list(dict.fromkeys(r["member"] for r in rows
                               if r["evaluator"] != metrics_table.DIVERGED))
  evaluators = sorted({r["evaluator"] for r in rows} - {metrics_table.DIVERGED})
  cols = min(3, len(evaluators))
  n_rows = -(-len(evaluators) // cols)
  fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.2 * n_rows),
                           squeeze=False)
  for ax, evaluator in zip(axes.flat, evaluators):
    metric = panel_metric(rows, evaluator, task_curves)
    curves, x, mean, std = population_curves(rows, members, evaluator, metric)
    for member, (mx, my) in curves.items():
      ax.plot(mx, my, lw=0.8, alpha=0.45, label=member)
    ax.plot(x, mean, color="black", lw=2, label="mean")
    log = metric in LOG_METRICS
    lower = np.subtract(mean, std)
    if log:  # a band reaching 0 or below cannot be drawn on a log axis
      lower = np.where(lower > 0, lower, np.multiply(mean, 0.5))
    ax.fill_between(x, lower, np.add(mean, std), color="black", alpha=0.12, lw=0)
    ax.set(title=f"{evaluator}: {metric}", xlabel="sequences seen",
           yscale="log" if log else "linear")
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(evaluators):]:
    ax.axis("off")
  handles, labels = axes.flat[0].get_legend_handles_labels()
  if len(members) > 8:  # the mean only: a legend of every member would hide the panel
    handles, labels = handles[-1:], labels[-1:]
  axes.flat[0].legend(handles, labels, fontsize=7, loc="best")
  fig.suptitle(f"Population of {len(members)} members: each member, mean "
               "and one standard deviation")
  fig.tight_layout()
  save(fig, path)


def plot_run(rows, out_dir: str, curves=()) -> list[str]:
  """For every member its curves (the task's tasks.Curve list; none: no
  such figure) and its losses, and the population overview for more than
  one member; returns the written paths."""
  by_member = collections.OrderedDict((r["member"], None) for r in rows)
  paths = []
  if len(by_member) > 1:
    paths.append(os.path.join(out_dir, "population.png"))
    population_figure(rows, paths[-1], curves)
  for member in by_member:
    if curves:
      paths.append(os.path.join(out_dir, f"curves_{member}.png"))
      curves_figure(rows, member, curves, paths[-1])
    paths.append(os.path.join(out_dir, f"losses_{member}.png"))
    loss_figure(rows, member, paths[-1])
  return paths


def toy_figure(history, stop: int, seed: int, path: str):
  """The minimal model's L, L1 (ICL), L2 (CIWL) and K against GD steps."""
  end = stop + 1 if stop >= 0 else len(history)
  fig, ax = plt.subplots(figsize=(7, 4))
  for column, label, colour in ((0, "L (total)", "black"),
                                (1, "L1 (mechanism 1: ICL)", "tab:blue"),
                                (2, "L2 (mechanism 2: CIWL)", "tab:orange"),
                                (3, "K (competition)", "tab:grey")):
    ax.plot(history[:end, column], label=label, color=colour, lw=1.5)
  ax.set(xlabel="gradient-descent step", ylabel="loss", yscale="log",
         title=f"Minimal coopetition model, seed {seed}"
         + (f" (stopped at {stop})" if stop >= 0 else " (no stop)"))
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  save(fig, path)


def transience_figure(rows, member: str, curves, path: str, colours=None):
  """Accuracy curves with their peaks marked, over the training loss.

  curves: (evaluator, metric, label, (peak_sequences, peak_value)) per curve;
  colours: {evaluator: colour} (the task's; others get spare colours).
  """
  colours = dict(colours or {})
  spare = iter(c for c in ("tab:green", "tab:brown", "tab:pink", "tab:olive",
                           "tab:cyan", "tab:gray") if c not in colours.values())
  colours.update({evaluator: next(spare, None) for evaluator, *_ in curves
                  if evaluator not in colours})
  fig, (acc_ax, loss_ax) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                        height_ratios=(2, 1))
  for evaluator, metric, label, (peak_x, peak_y) in curves:
    x, y = series(rows, member, evaluator, metric)
    line, = acc_ax.plot(x, y, label=label, color=colours.get(evaluator), lw=1.5)
    acc_ax.plot([peak_x], [peak_y], "v", color=line.get_color(), ms=6)
  acc_ax.set(ylabel="accuracy", ylim=(-0.02, 1.02),
             title=f"ICL transience: {member} (peaks marked)")
  acc_ax.legend(fontsize=8, loc="center right")
  acc_ax.grid(alpha=0.3)
  x, y = series(rows, member, "train_batch", "loss")
  loss_ax.plot(x, y, color="black", lw=1.0, label="train (batch)")
  loss_ax.set(xlabel="sequences seen", ylabel="train loss",
              yscale="log" if y else "linear")
  loss_ax.grid(alpha=0.3)
  save(fig, path)


def compare_figure(runs: dict, evaluator: str, metric: str, path: str,
                   reference: float | None = None):
  """One evaluator's metric for several runs: {label: (rows, member)}."""
  fig, ax = plt.subplots(figsize=(7, 4))
  for label, (rows, member) in runs.items():
    x, y = series(rows, member, evaluator, metric)
    ax.plot(x, y, label=label, lw=1.5)
  if reference is not None:
    ax.axhline(reference, color="grey", lw=0.8, ls=":")
  ax.set(xlabel="sequences seen", ylabel=f"{evaluator} {metric}",
         title=f"{evaluator}: {metric}",
         yscale="log" if metric == "loss" else "linear")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  save(fig, path)


def against_figure(points, field: str, evaluator: str, metric: str, drop: float,
                   path: str):
  """Peak height and decay time of one curve against a config field, one
  point per run: points = [(field value, peak, peak at, decayed at (NaN:
  not by the horizon), horizon, label, emerged)]. A run whose curve has not
  decayed is drawn hollow at its horizon, with an arrow up (later, if at
  all); one whose curve never emerged, as a grey cross with no times."""
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
  for value, peak, peak_at, decayed, horizon, label, emerged in points:
    top.plot(value, peak, "o" if emerged else "x",
             color="tab:blue" if emerged else "tab:gray")
    top.annotate(label, (value, peak), fontsize=7, xytext=(4, 4),
                 textcoords="offset points")
    if not emerged:
      continue
    if np.isnan(decayed):
      bottom.plot(value, horizon, "o", mfc="none", color="tab:red")
      bottom.annotate("", (value, horizon * 1.35), (value, horizon),
                      arrowprops=dict(arrowstyle="->", color="tab:red"))
      bottom.update_datalim([(value, horizon * 1.4)])  # the arrow stays in view
    else:
      bottom.plot(value, decayed, "o", color="tab:red")
    bottom.plot(value, peak_at, "^", color="tab:blue", ms=5)
  top.set(ylabel=f"peak {evaluator} {metric}",
          title=f"{evaluator}: peak, and its fall of {drop:g} below the peak")
  values = [p[0] for p in points]
  spread = min(values) > 0 and max(values) >= 4 * min(values)  # e.g. class counts
  bottom.set(xlabel=field, ylabel="sequences seen", yscale="log",
             xscale="log" if spread else "linear")
  bottom.plot([], [], "^", color="tab:blue", label="peak")
  bottom.plot([], [], "o", color="tab:red", label=f"fallen {drop:g} below the peak")
  bottom.plot([], [], "o", mfc="none", color="tab:red", label="not fallen by the horizon")
  if not all(p[-1] for p in points):
    top.plot([], [], "x", color="tab:gray", label="never emerged above chance")
    top.legend(fontsize=7)
  bottom.legend(fontsize=7)
  for ax in (top, bottom):
    ax.grid(alpha=0.3)
  save(fig, path)
