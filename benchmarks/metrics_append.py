"""Cost of appending an evaluation's rows to a long metrics table, alone
and with the live TensorBoard view.

  python benchmarks/metrics_append.py [--members=64] [--appends=200]

Appends `appends` evaluations of a population (members x 5 evaluators x 8
metrics rows each) to a fresh table and prints the time of the first and of
the last append, and their ratio (1 = the cost does not grow with the run);
then the same with the TensorBoard event files written and flushed at each
append, and the mean cost of an append with them against without.
"""
import argparse
import tempfile
import time

from icl_transience import metrics_table
from icl_transience import monitoring

EVALUATORS = ("train_eval", "icl", "flip_icl", "iwl_copy_avail", "pure_iwl")
METRICS = ("acc", "in_context_acc", "out_context_acc", "loss", "prob",
           "in_context_prob", "out_context_prob", "use_context_prob")


def evaluation(step: int, members: int) -> list[dict]:
  return [dict(member=f"m{m}", step=step, sequences=step * 32, evaluator=e,
               metric=k, value=0.5) for m in range(members) for e in EVALUATORS
          for k in METRICS]


def timed_appends(members: int, appends: int, tensorboard: bool) -> list[float]:
  with tempfile.TemporaryDirectory() as workdir:
    table = metrics_table.MetricsTable(workdir)
    view = monitoring.TensorBoard(workdir, "train") if tensorboard else None
    if view:
      table.listeners.append(view.write)
    seconds = []
    for i in range(appends):
      rows = evaluation(i * 3125, members)
      start = time.perf_counter()
      table.append(rows)
      seconds.append(time.perf_counter() - start)
    if view:
      view.close()
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--members", type=int, default=64)
  parser.add_argument("--appends", type=int, default=200)
  args = parser.parse_args()
  rows_each = len(EVALUATORS) * len(METRICS) * args.members
  means = []
  for tensorboard in (False, True):
    seconds = timed_appends(args.members, args.appends, tensorboard)
    first, last = seconds[0], seconds[-1]
    means.append(sum(seconds) / len(seconds))
    print(f"{'table + TensorBoard' if tensorboard else 'table alone':<19s} "
          f"{args.appends} appends of {rows_each} rows: first {first * 1e3:.2f} ms, "
          f"last {last * 1e3:.2f} ms, last/first {last / first:.2f}x, "
          f"mean {means[-1] * 1e3:.2f} ms")
  print(f"TensorBoard's share: an append costs {means[1] / means[0]:.2f}x the "
        f"table alone ({(means[1] - means[0]) * 1e3:.2f} ms more per evaluation)")


if __name__ == "__main__":
  main()
