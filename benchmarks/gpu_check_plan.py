"""The accelerator check's targets, time plan and verdicts (no JAX: the
parent process of gpu_check.py imports this alone, so that it holds no
accelerator memory while its phases run in their own processes).

Targets (the suite's speed goals on one H100, and the science checks of
the papers' NOTES.md):
  single      one coopetition model, fused steps   >= 6,500 steps/s
  population  64 coopetition models in one program >= 45,000 model-steps/s
  transience  configs/transience.py, flip ICL >= 0.85 within 2 M sequences
              (Singh et al. 2023: ICL first, before in-weights learning)
  coop        configs/coopetition.py to 20 M, the bands of Singh et al. 2025,
              Fig. 1b, as our NOTES measured them on CPU
"""
import math

SINGLE_TARGET = 6_500.0       # steps/s
POPULATION_TARGET = 45_000.0  # model-steps/s, population of 64
FLIP_TARGET = 0.85            # transience: flip ICL within 2 M sequences
STARTUP_S = 60   # a process: start-up and compiling, until a phase measures it
WRAP_UP_S = 30   # a training process: its last checkpoint, then plot and report
EVAL_SHARE = 0.25  # the probes' time, as a share of the training steps' time
STOP_GRACE_S = 20  # after SIGTERM, before a run is killed

# (name, band, lower or upper bound) of coop_bands' values
COOP_BANDS = (("ICL in 3-10 M", ">=", 0.80), ("flip in 3-10 M", ">=", 0.75),
              ("flip at 20 M", "<=", 0.35), ("CIWL at 20 M", ">=", 0.85),
              ("train at 20 M", ">=", 0.97), ("ICL at 20 M", "<=", 0.80),
              ("ICL drop from peak", ">=", 0.10))


def run_seconds(sequences: int, batch_size: int, rate: float,
                startup_s: float = STARTUP_S) -> float:
  """Expected wall time of a main.py run to `sequences` at `rate` steps/s,
  `startup_s` being what a process of that config took to start and compile."""
  if not rate > 0:
    return math.inf
  return startup_s + WRAP_UP_S + (1 + EVAL_SHARE) * sequences / batch_size / rate


def decide(needed_s: float, left_s: float) -> str:
  """'' when a phase fits the time left, else its NOT RUN reason. A phase
  that cannot reach its meaningful horizon is not run at all (never run to
  a shorter one and checked)."""
  if needed_s <= left_s:
    return ""
  need = "an unknown time (no rate)" if math.isinf(needed_s) else f"{needed_s:.0f} s"
  return f"NOT RUN (needs {need} at the measured rate, {max(left_s, 0):.0f} s left)"


def curve(rows, member, evaluator, metric="in_context_acc"):
  return sorted((r["sequences"], r["value"]) for r in rows if r["member"] == member
                and r["evaluator"] == evaluator and r["metric"] == metric)


def coop_bands(rows, member) -> dict:
  """The values COOP_BANDS bounds, from a run that reached 20 M."""
  icl, flip = curve(rows, member, "icl"), curve(rows, member, "flip_icl")
  ciwl, train = curve(rows, member, "iwl_copy_avail"), curve(rows, member, "train_eval")
  window = lambda c: max((v for x, v in c if 3e6 <= x <= 10e6), default=math.nan)
  at_end = lambda c: dict(c).get(20_000_000, math.nan)
  peak = max((v for _, v in icl), default=math.nan)
  return {"ICL in 3-10 M": window(icl), "flip in 3-10 M": window(flip),
          "flip at 20 M": at_end(flip), "CIWL at 20 M": at_end(ciwl),
          "train at 20 M": at_end(train), "ICL at 20 M": at_end(icl),
          "ICL drop from peak": peak - at_end(icl)}


def best_flip(rows, member, horizon: int = 2_000_000) -> float:
  return max((v for x, v in curve(rows, member, "flip_icl") if x <= horizon),
             default=math.nan)


def _verdict(value, op: str, bound: float) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "FAIL"
  return "PASS" if (value >= bound if op == ">=" else value <= bound) else "FAIL"


def verdicts(result: dict) -> list[tuple[str, str, str]]:
  """(target, PASS | FAIL | NOT RUN ..., the number) per target, from
  gpu_check.json's content."""
  bench = result.get("benchmark", {})
  out = []

  def speed(target, key, op_bound, unit):
    value = bench.get(key)
    if value is None:
      out.append((target, result.get("not_run", {}).get(key, "NOT RUN"), ""))
    else:
      out.append((target, _verdict(value, ">=", op_bound), f"{value:,.0f} {unit}"))
  speed(f"single run >= {SINGLE_TARGET:,.0f} steps/s", "single", SINGLE_TARGET, "steps/s")
  small = result.get("populations", [64])[0]
  speed(f"population of {small} >= {POPULATION_TARGET:,.0f} model-steps/s",
        f"population_{small}", POPULATION_TARGET, "model-steps/s")
  runs = result.get("runs", {})
  transience = runs.get("transience", {})
  if "checks" in transience:
    flip = transience["checks"]["flip within 2 M"]
    out.append((f"12-layer flip >= {FLIP_TARGET} within 2 M",
                _verdict(flip, ">=", FLIP_TARGET), _number(flip)))
  else:
    out.append((f"12-layer flip >= {FLIP_TARGET} within 2 M",
                transience.get("not_run", "NOT RUN"), ""))
  coop = runs.get("coop", {})
  for name, op, bound in COOP_BANDS:
    target = f"coopetition {name} {op} {bound}"
    if "checks" in coop:
      value = coop["checks"][name]
      out.append((target, _verdict(value, op, bound), _number(value)))
    else:
      out.append((target, coop.get("not_run", "NOT RUN"), ""))
  return out


def _number(value) -> str:
  return "no point" if value is None or value != value else f"{value:.3f}"


def format_verdicts(rows) -> str:
  width = max(len(t) for t, _, _ in rows)
  return "\n".join(f"{t:<{width}}  {v}" + (f"  ({n})" if n else "") for t, v, n in rows)
