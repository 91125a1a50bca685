"""Training throughput of the coopetition model, three ways, in one run.

  python benchmarks/throughput.py                 # default config, this machine
  python benchmarks/throughput.py --population=64 --fused_steps=625

(a) one jitted step per Python iteration (the authors' loop structure, with
    the sampler inside the step), (b) the fused path: `fused_steps` steps per
    compiled call with lax.scan, (c) a population of P models in one program
    (vmap inside the scan). Prints steps/s, model-steps/s and the ratios.
Compile time is excluded: every path is warmed up first.
"""
import argparse
import time

import jax

from icl_transience import config as config_lib
from icl_transience.data import sources
from icl_transience.train import loop
from icl_transience.train import step as step_lib


def _timed(fn, repeats: int) -> float:
  fn()  # warm-up (compiles)
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start


def measure(population: int, fused_steps: int, per_step_iters: int,
            fused_calls: int, population_calls: int) -> dict:
  c = config_lib.base_config()
  c.steps_per_call = fused_steps
  mesh = loop.make_mesh()
  with jax.set_mesh(mesh):
    table = sources.load_table(c.data)
    trainer = step_lib.Trainer(c, mesh)
    one = config_lib.members(c)

    # (a) per-step loop: one compiled step per Python iteration.
    state = jax.tree.map(lambda x: x[0], trainer.init(one))
    step = jax.jit(trainer._step, donate_argnums=0)  # pylint: disable=protected-access
    holder = {"state": state}

    def per_step():
      for _ in range(per_step_iters):
        holder["state"], metrics = step(holder["state"], table)
      return metrics

    seconds = _timed(per_step, 1)
    per_step_rate = per_step_iters / seconds

    # (b) fused: fused_steps steps per call.
    holder["state"] = trainer.init(one)

    def fused():
      holder["state"], metrics = trainer.train_chunk(holder["state"], table)
      return metrics

    fused_rate = fused_calls * fused_steps / _timed(fused, fused_calls)

    # (c) a population of P models in one program.
    members = [config_lib.Member(f"m{i}", i, i, c.optim.lr, 0.0)
               for i in range(population)]
    holder["state"] = trainer.init(members)
    pop_rate = population_calls * fused_steps / _timed(fused, population_calls)
  return dict(per_step=per_step_rate, fused=fused_rate, population_steps=pop_rate,
              population_model_steps=pop_rate * population)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--population", type=int, default=64)
  parser.add_argument("--fused_steps", type=int, default=625)
  parser.add_argument("--per_step_iters", type=int, default=1000)
  parser.add_argument("--fused_calls", type=int, default=4)
  parser.add_argument("--population_calls", type=int, default=1)
  args = parser.parse_args()
  r = measure(args.population, args.fused_steps, args.per_step_iters,
              args.fused_calls, args.population_calls)
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}) x {jax.device_count()}")
  print(f"(a) per-step jit loop : {r['per_step']:10.1f} steps/s")
  print(f"(b) fused scan x{args.fused_steps:<5d}: {r['fused']:10.1f} steps/s"
        f"   ({r['fused'] / r['per_step']:.2f}x per-step)")
  print(f"(c) population of {args.population:<3d} : {r['population_steps']:10.1f} steps/s"
        f" = {r['population_model_steps']:.1f} model-steps/s"
        f"   ({r['population_model_steps'] / r['fused']:.2f}x fused)")


if __name__ == "__main__":
  main()
