"""The first run on an accelerator: phases in order of value, each in a
process of its own, gpu_check.json rewritten the moment a number comes.

  bash benchmarks/gpu_check.sh OUT_DIR [--wheelhouse=DIR]   # the entry point
  bash benchmarks/gpu_check.sh OUT_DIR --rehearse   # the same on CPU, tiny

1. The fused rate of one coopetition model, then of a population of 64.
2. configs/transience.py (12 layers) to 2 M sequences and its flip check,
   sized first by its own fused rate.
3. configs/coopetition.py to 20 M sequences and its bands.
4. A population of 256; the fused rate again with
   --xla_gpu_deterministic_ops=false and with matmul_precision=default
   (what determinism and full-precision matmuls cost).
A phase that cannot reach its horizon in the time left is not run and says
`NOT RUN (needs N s ...)`. The end: one verdict line per target
(gpu_check_plan.py). --rehearse runs every phase at tiny horizons and
population sizes, to prove the paths and the JSON on a machine without one.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_check_plan as plan  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))  # the run configs, by file name
RUNS = {  # name: (config file, sequences, overrides), full check
    "transience": ("configs/transience.py", 2_000_000, {"eval_every": 100_000}),
    "coop": ("configs/coopetition.py", 20_000_000, {}),
}
REHEARSAL_RUNS = {
    "transience": ("configs/transience.py", 3_200,
                   {"eval_every": 1_600, "steps_per_call": 25}),
    "coop": ("configs/coopetition.py", 16_000,
             {"eval_every": 8_000, "steps_per_call": 125, "evals.n_sequences": 1000}),
}
MODES = {  # fused steps per call, timed calls, populations (small, large)
    "full": dict(steps=625, calls=8, populations=(64, 256), runs=RUNS, budget=480),
    "rehearse": dict(steps=25, calls=2, populations=(2, 4), runs=REHEARSAL_RUNS,
                     budget=165),
}
NONDETERMINISTIC = "--xla_gpu_deterministic_ops=false"


# ----- phases, each in a child process: `gpu_check.py --_child=SPEC` -----

def _child(spec: str, mode: dict):
  """Prints `ROW {json}` per number as it comes (the parent saves it)."""
  import jax  # pylint: disable=g-import-not-at-top
  import throughput  # pylint: disable=g-import-not-at-top
  from icl_transience import config as config_lib  # pylint: disable=g-import-not-at-top
  from icl_transience.train import loop  # pylint: disable=g-import-not-at-top
  from icl_transience.train import step as step_lib  # pylint: disable=g-import-not-at-top

  def emit(key, **row):
    print("ROW " + json.dumps(dict(row, key=key)), flush=True)

  def rate(c):
    mesh = loop.run_mesh(c)
    with jax.set_mesh(mesh):
      trainer = step_lib.Trainer(c, mesh)
      table = trainer.task.constants(trainer.replicated)
      call = throughput._fused_calls(trainer, config_lib.members(c), table)  # pylint: disable=protected-access
      return mode["calls"] * c.steps_per_call / throughput._timed(call, mode["calls"])  # pylint: disable=protected-access

  emit("device", value=f"{jax.devices()[0].device_kind} x {jax.device_count()} "
       f"({jax.default_backend()}, jax {jax.__version__})")
  for part in spec.split("+"):
    name, _, arg = part.partition(":")
    if name == "run":  # a science run's own fused rate (its sizing)
      c = run_config(arg, mode)
      emit(f"rate_{arg}", value=rate(c))
      continue
    c = run_config("coop", mode)
    c.steps_per_call = mode["steps"]
    if name == "population":
      c.population = "; ".join(f"init_seed={i},data_seed={i}" for i in range(int(arg)))
      steps = rate(c)
      emit(f"population_{arg}", value=steps * int(arg), steps_per_s=steps)
    else:  # single, single_default_precision, single_nondeterministic
      if name == "single_default_precision":
        c.matmul_precision = "default"
      emit(name, value=rate(c))


def run_config(name: str, mode: dict):
  from icl_transience import config as config_lib  # pylint: disable=g-import-not-at-top
  path, sequences, fields = mode["runs"][name]
  module = __import__(os.path.splitext(os.path.basename(path))[0])
  return config_lib.override(module.get_config(),
                             dict(fields, total_sequences=sequences))


# ----- the parent: plans, starts the phases, saves, judges -----

class Check:
  """gpu_check.json and the clock."""

  def __init__(self, out: str, mode_name: str, budget_s: float):
    self.out, self.mode_name, self.mode = out, mode_name, MODES[mode_name]
    self.start, self.budget_s = time.time(), budget_s
    self.result = {"mode": mode_name, "budget_s": budget_s,
                   "populations": list(self.mode["populations"]),
                   "benchmark": {}, "phase_s": {}, "runs": {}, "not_run": {}}

  def left(self) -> float:
    return self.budget_s - (time.time() - self.start)

  def save(self):
    from icl_transience import metrics_table  # pylint: disable=g-import-not-at-top
    self.result["seconds"] = round(time.time() - self.start, 1)
    self.result["verdicts"] = [list(v) for v in plan.verdicts(self.result)]
    metrics_table.atomic_write_text(os.path.join(self.out, "gpu_check.json"),
                                    json.dumps(_finite(self.result), indent=2) + "\n")

  def child(self, spec: str, timeout_s: float, env=None, key_suffix: str = ""):
    """Runs one measuring phase; saves each row the moment it is printed."""
    args = [sys.executable, os.path.abspath(__file__), self.out,
            f"--_child={spec}", f"--mode={self.mode_name}"]
    started = time.time()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))
    timer = _Killer(proc, timeout_s)
    for line in proc.stdout:
      if not line.startswith("ROW "):
        sys.stdout.write(line)
        continue
      row = json.loads(line[4:])
      key = row.pop("key")
      if key == "device":
        self.result.setdefault("device", row["value"])
        continue
      self.result["benchmark"][key + key_suffix] = row["value"]
      print(f"  {key + key_suffix}: {row['value']:,.1f}", flush=True)
      self.save()
    proc.wait()
    timer.cancel()
    self.result["phase_s"][spec + key_suffix] = round(time.time() - started, 1)
    if timer.fired:
      print(f"  {spec}: stopped after {timeout_s:.0f} s (its time share)", flush=True)
    self.save()
    return time.time() - started

  def not_run(self, key: str, reason: str):
    self.result["not_run"][key] = reason
    print(f"  {key}: {reason}", flush=True)
    self.save()

  def science_run(self, name: str, rate: float, startup_s: float, workdir: str):
    path, sequences, fields = self.mode["runs"][name]
    batch = run_config(name, self.mode).batch_size
    needed = plan.run_seconds(sequences, batch, rate, startup_s)
    self.result["runs"][name] = entry = {"sequences": sequences,
                                         "steps_per_s": rate, "expected_s": needed}
    reason = plan.decide(needed, self.left())
    if reason:
      entry["not_run"] = reason
      print(f"  {name}: {reason}", flush=True)
      return self.save()
    args = [sys.executable, "main.py", f"--config={path}", f"--workdir={workdir}",
            f"--config.total_sequences={sequences}", "--config.log.tensorboard=False"]
    args += [f"--config.{k}={v}" for k, v in fields.items()]
    started = time.time()
    proc = subprocess.Popen(args, cwd=REPO)
    timer = _Killer(proc, min(1.5 * needed, self.left()), signal.SIGTERM)
    proc.wait()
    timer.cancel()
    entry.update(returncode=proc.returncode, seconds=round(time.time() - started, 1))
    self.save()
    collect(workdir, os.path.join(self.out, name), self.left())
    rows = _rows(workdir)
    reached = max((r["sequences"] for r in rows), default=0)
    if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
      entry["not_run"] = (f"FAILED (main.py exited {proc.returncode} at {reached:,} "
                          "sequences; gpu_check.log has its error)")
    elif reached < sequences:
      entry["not_run"] = (f"NOT RUN (stopped at {reached:,} of {sequences:,} "
                          f"sequences after {entry['seconds']:.0f} s)")
    elif name == "coop":
      entry["checks"] = plan.coop_bands(rows, "main")
    else:
      entry["checks"] = {"flip within 2 M": plan.best_flip(rows, "main")}
    return self.save()


class _Killer:
  """Stops a process after `seconds` (SIGTERM first: a run saves, then the
  kill after STOP_GRACE_S)."""

  def __init__(self, proc, seconds: float, sig=signal.SIGKILL):
    import threading  # pylint: disable=g-import-not-at-top
    self.fired = False

    def stop():
      self.fired = True
      proc.send_signal(sig)
      if sig != signal.SIGKILL:
        time.sleep(plan.STOP_GRACE_S)
        if proc.poll() is None:
          proc.kill()
    self.timer = threading.Timer(max(seconds, 1.0), stop)
    self.timer.daemon = True
    self.timer.start()

  def cancel(self):
    self.timer.cancel()


def _rows(workdir: str) -> list:
  from icl_transience import metrics_table  # pylint: disable=g-import-not-at-top
  try:
    return metrics_table.read(workdir)
  except Exception:  # pylint: disable=broad-except  (no table: no rows)
    return []


def collect(workdir: str, out: str, left_s: float):
  """The run's config, table, report and figures (no checkpoints) to out;
  plot and report get at most 60 s each, within the time left."""
  os.makedirs(out, exist_ok=True)
  if not _rows(workdir):
    return
  for tool in ("plot", "report"):
    limit = max(5.0, min(60.0, left_s / 2))
    try:
      subprocess.run([sys.executable, "-m", f"icl_transience.{tool}",
                      f"--workdir={workdir}"], cwd=REPO, check=False, timeout=limit)
    except subprocess.TimeoutExpired:
      print(f"{tool}: over {limit:.0f} s, skipped", flush=True)
  for name in ("config.json", "metrics.jsonl", "report.json"):
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copy(os.path.join(workdir, name), out)
  if os.path.isdir(os.path.join(workdir, "figures")):
    shutil.copytree(os.path.join(workdir, "figures"), os.path.join(out, "figures"),
                    dirs_exist_ok=True)


def _finite(tree):
  """NaN and infinity as null: strict JSON."""
  if isinstance(tree, dict):
    return {k: _finite(v) for k, v in tree.items()}
  if isinstance(tree, float) and (tree != tree or tree in (float("inf"), -float("inf"))):
    return None
  return tree


def run_phases(check: Check):
  mode, bench = check.mode, check.result["benchmark"]
  small, large = mode["populations"]
  print("phase 1: fused rate, one model and a population of "
        f"{small}", flush=True)
  first_s = check.child(f"single+population:{small}", check.left())
  with tempfile.TemporaryDirectory() as runs:
    print("phase 2: configs/transience.py", flush=True)
    # its sizing process: start-up, compile, rate (a lower bound of its time)
    if check.left() > first_s / 2:
      sizing_s = check.child("run:transience", check.left())
      check.science_run("transience", bench.get("rate_transience", 0.0), sizing_s,
                        os.path.join(runs, "transience"))
    else:
      check.result["runs"]["transience"] = {"not_run": plan.decide(
          first_s / 2, check.left())}
    print("phase 3: configs/coopetition.py", flush=True)
    check.science_run("coop", bench.get("single", 0.0), first_s,
                      os.path.join(runs, "coop"))
  print("phase 4: a population of {}, nondeterministic kernels, default "
        "precision".format(large), flush=True)
  # a process like phase 1's, plus the large population's own steps; then
  # each single run as long as the last process took
  needed = first_s + (mode["calls"] + 1) * mode["steps"] * large / bench.get(
      f"population_{small}", float("inf"))
  for spec, env, suffix in ((f"population:{large}", None, ""),
                            ("single", {"XLA_FLAGS": _xla_flags()}, "_nondeterministic"),
                            ("single_default_precision", None, "")):
    key = spec.replace(":", "_") + suffix
    reason = plan.decide(needed, check.left())
    if reason:
      check.not_run(key, reason)
    else:
      needed = check.child(spec, check.left(), env, suffix)


def _xla_flags() -> str:
  flags = os.environ.get("XLA_FLAGS", "").replace(
      "--xla_gpu_deterministic_ops=true", "")
  return f"{flags} {NONDETERMINISTIC}".strip()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out")
  parser.add_argument("--budget_s", type=float, default=0,
                      help="seconds for every phase (default: 480; 165 rehearsing)")
  parser.add_argument("--rehearse", action="store_true",
                      help="every phase at tiny horizons (a CPU proof of the paths)")
  parser.add_argument("--mode", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  mode_name = args.mode or ("rehearse" if args.rehearse else "full")
  if args._child:  # pylint: disable=protected-access
    return _child(args._child, MODES[mode_name])  # pylint: disable=protected-access
  os.makedirs(args.out, exist_ok=True)
  check = Check(args.out, mode_name, args.budget_s or MODES[mode_name]["budget"])
  check.save()
  try:
    run_phases(check)
  finally:
    check.save()
    print(f"\nverdicts ({mode_name}; {check.result.get('device', 'no device')}; "
          f"{check.result['seconds']:.0f} s):")
    print(plan.format_verdicts(plan.verdicts(check.result)), flush=True)
    print(f"numbers in {args.out}/gpu_check.json")
  return None


if __name__ == "__main__":
  main()
