"""Evaluation memory of a population, all members at once vs a few per pass.

  python benchmarks/eval_memory.py [--populations=1,16,64] [--per_pass=8]

Compiles the evaluators of the default coopetition config for populations of
P members and prints the program's scratch memory (XLA's temp allocation,
the peak beyond inputs and outputs) when all P members are evaluated in one
pass (what the suite did before `eval_members_per_pass`) and when
`--per_pass` members are. Nothing is run: the numbers are the compiler's.
"""
import argparse

import jax

from icl_transience import config as config_lib
from icl_transience.train import loop
from icl_transience.train import step as step_lib
from icl_transience.proj.transience import classifier_config


def scratch_bytes(population: int, per_pass: int) -> int:
  c = classifier_config.coopetition_config()
  c.population = "; ".join(f"init_seed={i}" for i in range(population))
  c.eval_members_per_pass = per_pass
  mesh = loop.make_mesh(1)
  with jax.set_mesh(mesh):
    trainer = step_lib.Trainer(c, mesh)
    state = jax.eval_shape(lambda: trainer.init(config_lib.members(c)))
    table = jax.eval_shape(lambda: trainer.task.constants(trainer.replicated))
    sets = trainer.eval_sets()
    compiled = trainer.population_eval().lower(
        trainer.weights(state), table, sets).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--populations", default="1,16,64")
  parser.add_argument("--per_pass", type=int, default=8)
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind})")
  print(f"{'P':>4}  {'all at once, MB':>15}  {f'{args.per_pass} per pass, MB':>15}")
  for p in (int(n) for n in args.populations.split(",")):
    at_once = scratch_bytes(p, p) / 2**20
    grouped = scratch_bytes(p, args.per_pass) / 2**20
    print(f"{p:>4}  {at_once:15.1f}  {grouped:15.1f}")


if __name__ == "__main__":
  main()
