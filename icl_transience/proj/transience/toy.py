"""Solves the minimal mathematical model of coopetition (Singh et al. 2025).

  python -m icl_transience.proj.transience.toy --seed 7              # stops at step 9,620
  python -m icl_transience.proj.transience.toy --seed 7 --mu1=0      # persistent ICL (stop 1e-3)
  python -m icl_transience.proj.transience.toy --seeds=0-11          # all seeds, one vmapped call

Prints each seed's stopping step and the L, L1, L2, K trajectory of the first
seed, and saves its figure (--out).
"""
from absl import app
from absl import flags

from icl_transience import cli
from icl_transience.analysis import figures
from icl_transience.proj.transience import toy_model
from icl_transience.errors import UserError

MILESTONES = (0, 1000, 2000, 3000, 4600, 4800, 5658, 6500, 8000)


def parse_seeds(text: str) -> list[int]:
  try:
    if "-" in text:
      lo, hi = (int(x) for x in text.split("-"))
      return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]
  except ValueError as e:
    raise UserError(f"--seeds: expected '0-11' or '2,7,9', got '{text}'") from e


def define_flags():
  """The command-line flags, defined only when run as a program."""
  flags.DEFINE_integer("seed", 7, "Seed (used when --seeds is empty).")
  flags.DEFINE_string("seeds", "", "Seeds: '0-11' or '2,7,9'.")
  flags.DEFINE_float("mu1", 0.1, "mu1; 0 gives the persistent-ICL variant.")
  flags.DEFINE_float("alpha", 0.1, "Competition strength alpha.")
  flags.DEFINE_integer("max_steps", 16_000, "Step limit.")
  flags.DEFINE_string("out", "toy_seed{seed}.png", "Figure path ({seed}).")


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  seeds = parse_seeds(f.seeds) if f.seeds else [f.seed]
  cfg = toy_model.ToyConfig.for_mu1(f.mu1, alpha=f.alpha, max_steps=f.max_steps)
  stops, history = toy_model.solve(seeds, cfg)
  for seed, stop in zip(seeds, stops):
    print(f"seed {seed}: " + (f"L < {cfg.threshold:g} at step {stop}" if stop >= 0
                              else f"no stop within {cfg.max_steps} steps"))
  first, stop = history[0], int(stops[0])
  print(f"\nseed {seeds[0]} trajectory\n{'step':>6} {'L':>10} {'L1':>10} "
        f"{'L2':>10} {'K':>10}")
  end = stop if stop >= 0 else cfg.max_steps
  for t in sorted({m for m in MILESTONES if m <= end} | {end}):
    print(f"{t:6d} " + " ".join(f"{v:10.4g}" for v in first[t]))
  path = f.out.format(seed=seeds[0])
  figures.toy_figure(first, stop, seeds[0], path)
  print(f"\nfigure: {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
