"""The example task (examples/hidden_direction.py), registered with one line,
through every generic tool: main.py, resume, the checkpoint-sweep job,
sweep, plot and report."""
import json
import os

import numpy as np

from examples import hidden_direction
from helpers import assert_trees_equal, final_state, run_cli
from icl_transience import evaluate
from icl_transience import metrics_table
from icl_transience import plot
from icl_transience import report
from icl_transience import sweep
from icl_transience.train import loop


def evaluator_rows(rows):
  return {(r["member"], r["step"], r["metric"]): r["value"]
          for r in rows if r["evaluator"] == "heldout"}


def test_the_example_task_through_every_generic_tool(tmp_path):
  c = hidden_direction.get_config()
  resumed, straight = str(tmp_path / "resumed"), str(tmp_path / "straight")
  half = run_cli(["main.py", "--config=examples/hidden_direction.py",
                  f"--workdir={resumed}", "--config.total_sequences=800"])
  assert half.returncode == 0, half.stderr[-2000:]
  loop.train(c, resumed)  # resumes from 800 sequences to 1600
  loop.train(c, straight)
  assert_trees_equal(final_state(c, resumed), final_state(c, straight))
  logged = evaluator_rows(metrics_table.read(straight))
  assert logged[("main", 100, "acc")] > 0.9  # it learned the direction
  assert logged == evaluator_rows(metrics_table.read(resumed))
  # the checkpoint-sweep job recomputes the rows of the saved checkpoints
  rows = metrics_table.read(straight)
  metrics_table.atomic_write_text(metrics_table.path(straight), "".join(
      json.dumps(r) + "\n" for r in rows
      if r["evaluator"] != "heldout" or r["step"] not in (50, 100)))
  assert evaluate.evaluate_checkpoints(straight) == 2
  swept = evaluator_rows(metrics_table.read(straight))
  assert swept.keys() == logged.keys()
  for key, value in logged.items():
    np.testing.assert_allclose(swept[key], value, rtol=1e-5, err_msg=str(key))
  # a sweep's summary holds the example's evaluator for every member
  root = str(tmp_path / "sweep")
  sweep.run(c, root, "optim.lr=0.05,0.1 hidden.dim=4,8")
  summary = json.loads(open(os.path.join(root, "summary.json")).read())
  assert [(s["group"], s["member"]) for s in summary] == [
      ("dim=4", "lr0.05"), ("dim=4", "lr0.1"), ("dim=8", "lr0.05"), ("dim=8", "lr0.1")]
  assert all(0.5 < s["heldout"] <= 1 and s["sequences"] == 1600 for s in summary)
  # plot draws its curve; report gives its curve's verdict
  paths = plot.plot_runs([straight])
  assert os.path.join(straight, "figures", "curves_main.png") in paths
  rows = report.write_report(straight, report.Settings())["transience"]
  heldout = next(r for r in rows if r["evaluator"] == "heldout")
  assert (heldout["metric"], heldout["verdict"]) == ("acc", "persistent")
  assert os.path.isfile(os.path.join(straight, "figures", "transience_main.png"))

