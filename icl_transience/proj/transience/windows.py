"""Prints the window of a CIWL-only graft or warm-start sweep (Singh et al. 2025, Sec. 5).

  python -m icl_transience.proj.transience.windows --workdir=runs/graft_window --family=graft
  python -m icl_transience.proj.transience.windows --workdir=runs/warm_window --family=warm

Reads every run of a sweep root made over source checkpoints of a
`ciwl_only` run (`configs/coopetition.py:ciwl_graft` swept over
graft.sequences, or `:ciwl_warm` over warm_start.sequences; see the
README) and decides per source whether ICL came:
  graft  the last `icl` full cross-entropy is below ln 2, the chance level
         of the 2-way task (Fig. 5b: ~0.1 inside the window, 0.8-1.9 outside);
  warm   the `flip_icl` in-context accuracy peaks at >= 0.8 (Fig. 5c).
Then the window (smallest and largest successful source) and the paper's
check: graft, a bounded window (successes contiguous, the first and last
sources failing); warm, every source <= 5 M succeeds and none >= 8 M.
Writes <workdir>/window.json.
"""
import json
import math
import os

from absl import app
from absl import flags

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.analysis import figures
from icl_transience.errors import UserError

# family -> (config block of the source, evaluator, metric, success test)
FAMILIES = {
    "graft": ("graft", "icl", "loss", lambda y: y[-1] < math.log(2)),
    "warm": ("warm_start", "flip_icl", "in_context_acc", lambda y: max(y) >= 0.8),
}
WARM_ICL_UNTIL, WARM_NONE_FROM = 5_000_000, 8_000_000  # Fig. 5c's check


def results(root: str, family: str) -> list[dict]:
  """One entry per finished-or-running run under root, by source."""
  block, evaluator, metric, success = FAMILIES[family]
  out = []
  for name in sorted(os.listdir(root)):
    workdir = os.path.join(root, name)
    if not os.path.isfile(os.path.join(workdir, "config.json")):
      continue
    c = config_lib.load_run_config(workdir)
    rows = metrics_table.read(workdir)
    member = next((r["member"] for r in rows), None)
    x, y = figures.series(rows, member, evaluator, metric) if member else ([], [])
    if not y:
      continue
    out.append({"run": name, "source": c[block].sequences, "sequences": x[-1],
                f"{evaluator}_{metric}": y[-1] if family == "graft" else max(y),
                "icl": bool(success(y))})
  if not out:
    raise UserError(f"--workdir: no {family} runs with {evaluator} {metric} "
                    f"rows under {root}")
  return sorted(out, key=lambda r: r["source"])


def window(entries: list[dict], family: str) -> dict:
  sources = [r["source"] for r in entries if r["icl"]]
  lo, hi = (min(sources), max(sources)) if sources else (None, None)
  contiguous = bool(sources) and all(r["icl"] for r in entries
                                     if lo <= r["source"] <= hi)
  if family == "graft":
    passed = contiguous and not entries[0]["icl"] and not entries[-1]["icl"]
  else:
    early = [r["icl"] for r in entries if r["source"] <= WARM_ICL_UNTIL]
    late = [r["icl"] for r in entries if r["source"] >= WARM_NONE_FROM]
    passed = bool(early) and bool(late) and all(early) and not any(late)
  return {"family": family, "from": lo, "to": hi, "contiguous": contiguous,
          "pass": passed, "runs": entries}


def define_flags():
  """The command-line flags, defined only when run as a program."""
  flags.DEFINE_string("workdir", None, "Sweep root (one run per source).",
                      required=True)
  flags.DEFINE_enum("family", "graft", list(FAMILIES), "Which experiment.")


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  if not os.path.isdir(f.workdir):
    raise UserError(f"--workdir: no folder {f.workdir}")
  summary = window(results(f.workdir, f.family), f.family)
  for r in summary["runs"]:
    value = {k: v for k, v in r.items() if k not in ("run", "source", "sequences", "icl")}
    print(f"source {r['source'] / 1e6:7.3f}M  at {r['sequences'] / 1e6:6.2f}M  "
          + "  ".join(f"{k}={v:.3f}" for k, v in value.items())
          + f"  {'ICL' if r['icl'] else '-'}")
  edges = ("none" if summary["from"] is None else
           f"{summary['from'] / 1e6:g}M - {summary['to'] / 1e6:g}M")
  print(f"window: {edges}; contiguous={summary['contiguous']}; "
        f"check {'PASS' if summary['pass'] else 'fail'}")
  metrics_table.atomic_write_text(os.path.join(f.workdir, "window.json"),
                                  json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
