"""The first run on an accelerator: the benchmark, then three science runs
sized from its numbers to end within the time budget.

  bash benchmarks/gpu_check.sh OUT_DIR          # the usual entry point
  python benchmarks/gpu_check.py OUT_DIR [--budget_s=540]
  python benchmarks/gpu_check.py OUT_DIR --populations=2 --runs=coop,seeds \
      --budget_s=420                              # a quick try on a CPU

1. The device, then benchmarks/throughput.py's (a) per-step loop, (b) fused
   scan and (c) populations of 64 and 256.
2. Each run's fused rate on this device (two calls; the runs reuse the
   compiled programs through the persistent compilation cache):
     coop        configs/coopetition.py, one member, to 20 M sequences;
     seeds       the same, 6 members (init 5, 6, 7 x data 2, 3), to 20 M;
     transience  configs/transience.py (12 layers, K = 8), to 2 M.
   A plan that does not fit the budget left shortens the seed population's
   horizon (on the evaluation grid), then the others', and says so.
3. The runs (main.py), each stopped cleanly (SIGTERM: checkpoint, exit) if
   it overruns its share; then `plot` and `report` on each, and the checks of
   BUILD_NOTES's bands. OUT_DIR gets gpu_check.json (every number), and per
   run its config, metrics table, report and figures (no checkpoints).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))

import coopetition  # pylint: disable=wrong-import-position
import throughput  # pylint: disable=wrong-import-position
import transience  # pylint: disable=wrong-import-position

from icl_transience import config as config_lib  # pylint: disable=wrong-import-position
from icl_transience import metrics_table  # pylint: disable=wrong-import-position
from icl_transience.train import loop  # pylint: disable=wrong-import-position
from icl_transience.train import step as step_lib  # pylint: disable=wrong-import-position

SEEDS = "; ".join(f"init_seed={i},data_seed={d}" for i in (5, 6, 7) for d in (2, 3))
RUNS = {  # name: (config file, fields, sequences)
    "coop": ("configs/coopetition.py", {}, 20_000_000),
    "seeds": ("configs/coopetition.py", {"population": SEEDS}, 20_000_000),
    "transience": ("configs/transience.py", {}, 2_000_000),
}
MODULES = {"configs/coopetition.py": coopetition, "configs/transience.py": transience}
STARTUP_S = 60  # per run: start-up, compiling what the cache misses, the probes
WRAP_UP_S = 45  # per run: stopping (a checkpoint), then plot and report
STOP_GRACE_S = 30  # after SIGTERM, before the run is killed
SHORTEN_FIRST = ("seeds", "coop", "transience")  # when the plan does not fit


def run_config(name):
  path, fields, sequences = RUNS[name]
  return config_lib.override(MODULES[path].get_config(),
                             dict(fields, total_sequences=sequences))


def fused_rate(c, calls: int = 2) -> float:
  """Optimizer steps/s of the run's own fused call on this device."""
  mesh = loop.run_mesh(c)
  with jax.set_mesh(mesh):
    trainer = step_lib.Trainer(c, mesh)
    table = trainer.task.constants(trainer.replicated)
    call = throughput._fused_calls(trainer, config_lib.members(c), table)  # pylint: disable=protected-access
    return calls * c.steps_per_call / throughput._timed(call, calls)  # pylint: disable=protected-access


def plan(rates, left_s: float):
  """Sequences and expected seconds per run: the full horizons, cut (on the
  evaluation grid) in the order of SHORTEN_FIRST until the plan fits the
  time left; each cut is printed."""
  seconds = lambda n, seqs: (STARTUP_S + WRAP_UP_S +
                             seqs / run_config(n).batch_size / rates[n])
  horizons = {n: RUNS[n][2] for n in rates}
  for name in (n for n in SHORTEN_FIRST if n in rates):
    others = sum(seconds(n, horizons[n]) for n in rates if n != name)
    c = run_config(name)
    fits = int(max(left_s - others - STARTUP_S - WRAP_UP_S, 0) * rates[name]
               * c.batch_size)
    fits = max(fits // c.eval_every * c.eval_every, c.eval_every)
    if fits < horizons[name]:
      horizons[name] = fits
      print(f"PLAN: {name} is shortened to {fits:,} sequences (not "
            f"{RUNS[name][2]:,}) to end within the budget", flush=True)
  return horizons, {n: seconds(n, horizons[n]) for n in rates}


def train(name, sequences, workdir, deadline_s):
  path, fields, _ = RUNS[name]
  args = [sys.executable, "main.py", f"--config={path}", f"--workdir={workdir}",
          f"--config.total_sequences={sequences}"]
  args += [f"--config.{k}={v}" for k, v in fields.items()]
  start = time.time()
  proc = subprocess.Popen(args, cwd=REPO)
  try:
    proc.wait(timeout=max(deadline_s, 1))
  except subprocess.TimeoutExpired:
    print(f"{name}: over its time; stopping it (it saves and can be resumed)")
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
  return dict(returncode=proc.returncode, seconds=time.time() - start)


def curve(rows, member, evaluator, metric="in_context_acc"):
  return sorted((r["sequences"], r["value"]) for r in rows if r["member"] == member
                and r["evaluator"] == evaluator and r["metric"] == metric)


def coop_checks(rows, member):
  """The coopetition bands of BUILD_NOTES (Singh et al. 2025, Fig. 1b)."""
  icl, flip = curve(rows, member, "icl"), curve(rows, member, "flip_icl")
  ciwl, train_ = curve(rows, member, "iwl_copy_avail"), curve(rows, member, "train_eval")
  window = lambda c: max((v for x, v in c if 3e6 <= x <= 10e6), default=float("nan"))
  end = lambda c: c[-1][1] if c else float("nan")
  peak = max((v for _, v in icl), default=float("nan"))
  return {"ICL in 3-10 M >= 0.80": window(icl), "flip in 3-10 M >= 0.75": window(flip),
          "flip at end <= 0.35": end(flip), "CIWL at end >= 0.85": end(ciwl),
          "train at end >= 0.97": end(train_), "ICL at end <= 0.80": end(icl),
          "ICL drop from peak >= 0.10": peak - end(icl),
          "end (sequences)": icl[-1][0] if icl else 0}


def transience_checks(rows, member):
  """Singh et al. 2023's fixed-feature 12-layer runs: flip and ICL >= 0.85
  somewhere within 2 M sequences."""
  best = lambda ev: max((v for x, v in curve(rows, member, ev) if x <= 2e6),
                        default=float("nan"))
  return {"flip within 2 M >= 0.85": best("flip_icl"),
          "ICL within 2 M >= 0.85": best("icl")}


def collect(workdir, out):
  os.makedirs(out, exist_ok=True)
  if not os.path.exists(metrics_table.path(workdir)):
    return
  for tool in ("plot", "report"):
    try:
      subprocess.run([sys.executable, "-m", f"icl_transience.{tool}",
                      f"--workdir={workdir}"], cwd=REPO, check=False, timeout=60)
    except subprocess.TimeoutExpired:
      print(f"{tool}: over 60 s, skipped", flush=True)
  for name in ("config.json", "metrics.jsonl", "report.json"):
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copy(os.path.join(workdir, name), out)
  if os.path.isdir(os.path.join(workdir, "figures")):
    shutil.copytree(os.path.join(workdir, "figures"), os.path.join(out, "figures"),
                    dirs_exist_ok=True)


def _finite(tree):
  """NaN (a curve with no point in its window) as null: strict JSON."""
  if isinstance(tree, dict):
    return {k: _finite(v) for k, v in tree.items()}
  return None if isinstance(tree, float) and tree != tree else tree


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--budget_s", type=float, default=540)
  parser.add_argument("--populations", default="64,256",
                      help="benchmark (c) population sizes")
  parser.add_argument("--runs", default=",".join(RUNS),
                      help="which runs, in order (e.g. coop,seeds for a quick try)")
  args = parser.parse_args()
  start = time.time()
  left = lambda: args.budget_s - (time.time() - start)
  os.makedirs(args.out, exist_ok=True)
  result = {"device": str(jax.devices()), "jax": jax.__version__}

  def save():  # after every phase: a cut-short check keeps what it measured
    result["seconds"] = time.time() - start
    metrics_table.atomic_write_text(os.path.join(args.out, "gpu_check.json"),
                                    json.dumps(_finite(result), indent=2) + "\n")
  print(f"devices: {jax.devices()}  (jax {jax.__version__})", flush=True)

  bench = throughput.measure([int(p) for p in args.populations.split(",")],
                             fused_steps=625, per_step_iters=2000,
                             fused_calls=8, population_calls=2)
  throughput.print_table(bench, 625)
  result["benchmark"] = bench
  save()
  names = args.runs.split(",")
  unknown = set(names) - set(RUNS)
  if unknown:
    parser.error(f"--runs: unknown {sorted(unknown)} (choose from {', '.join(RUNS)})")
  rates = {name: fused_rate(run_config(name)) for name in names}
  for name, rate in rates.items():
    print(f"sizing: {name} fused at {rate:,.0f} steps/s", flush=True)
  result["run_rates"] = rates
  horizons, expected = plan(rates, left())
  result["horizons"], result["expected_s"] = horizons, expected
  for name in names:
    print(f"plan: {name} to {horizons[name]:,} sequences, ~{expected[name]:.0f} s")
  save()

  checks = {"coop": coop_checks, "seeds": coop_checks, "transience": transience_checks}
  with tempfile.TemporaryDirectory() as runs:
    for i, name in enumerate(names):
      # an overrun is stopped in time to wrap up and leave each later run
      # its start-up
      deadline = min(1.5 * expected[name], left() - WRAP_UP_S - STOP_GRACE_S
                     - (STARTUP_S + WRAP_UP_S) * (len(names) - i - 1))
      if deadline < STARTUP_S / 2:
        print(f"{name}: skipped, no time left in the budget", flush=True)
        result[name] = {"skipped": True}
        continue
      workdir = os.path.join(runs, name)
      result[name] = train(name, horizons[name], workdir, deadline)
      collect(workdir, os.path.join(args.out, name))
      rows = metrics_table.read(workdir) if os.path.exists(
          metrics_table.path(workdir)) else []
      members = [m.name for m in config_lib.members(run_config(name))]
      result[name]["checks"] = {m: checks[name](rows, m) for m in members}
      for m in members:
        print(f"{name}/{m}: " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v:,}"
            for k, v in result[name]["checks"][m].items()), flush=True)
      save()
  save()
  print(f"done in {result['seconds']:.0f} s; numbers in {args.out}/gpu_check.json")


if __name__ == "__main__":
  main()
