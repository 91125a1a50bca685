"""Training throughput of the coopetition model, three ways, in one run.

  python benchmarks/throughput.py                 # default config, this machine
  python benchmarks/throughput.py --population=64,256 --fused_steps=625
  python benchmarks/throughput.py --device_counts=1,2,4,8   # fake CPU devices
  python benchmarks/throughput.py --cost       # XLA's bytes and flops per step

(a) one jitted step per Python iteration (the authors' loop structure, with
    the sampler inside the step), (b) the fused path: `fused_steps` steps per
    compiled call with lax.scan, (c) populations of P models in one program
    (vmap inside the scan), one line per P. Prints steps/s, model-steps/s
    and the ratios.
--device_counts instead runs the fused path data parallel over n devices
(on a CPU host: n fake devices sharing its cores, one subprocess each) and
prints, per n, steps/s, the ratio to 1 device, and the largest parameter
difference from the 1-device run after the same steps (correctness).
Compile time is excluded: every path is warmed up first.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from icl_transience import config as config_lib
from icl_transience.proj.transience import sources
from icl_transience.train import loop
from icl_transience.train import step as step_lib
from icl_transience.proj.transience import classifier_config


def _timed(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # warm-up (compiles), finished before timing
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start


def measure(populations, fused_steps: int, per_step_iters: int,
            fused_calls: int, population_calls: int,
            population_map: str = "auto") -> dict:
  c = classifier_config.coopetition_config()
  c.steps_per_call, c.population_map = fused_steps, population_map
  mesh = loop.make_mesh()
  with jax.set_mesh(mesh):
    table = sources.load_table(c.data)
    trainer = step_lib.Trainer(c, mesh)
    one = config_lib.members(c)

    # (a) per-step loop: one compiled step per Python iteration.
    state = jax.tree.map(lambda x: x[0], trainer.init(one))
    step = jax.jit(trainer._precise(trainer._step), donate_argnums=0)  # pylint: disable=protected-access
    holder = {"carry": (state, jnp.bool_(True))}

    def per_step():
      for _ in range(per_step_iters):
        holder["carry"], metrics = step(holder["carry"], table)
      return metrics

    seconds = _timed(per_step, 1)
    per_step_rate = per_step_iters / seconds

    # (b) fused: fused_steps steps per call.
    fused_rate = fused_calls * fused_steps / _timed(
        _fused_calls(trainer, one, table), fused_calls)

    # (c) populations of P models in one program, each with its own trainer.
    population_rates = {}
    for population in populations:
      c.population = "; ".join(f"init_seed={i},data_seed={i}"
                               for i in range(population))
      pop_trainer = step_lib.Trainer(c, mesh)
      population_rates[population] = population_calls * fused_steps / _timed(
          _fused_calls(pop_trainer, config_lib.members(c), table), population_calls)
  return dict(per_step=per_step_rate, fused=fused_rate,
              population_steps=population_rates)


def _fused_calls(trainer, members, table):
  """One fused training call per invocation, on a fresh population state."""
  holder = {"state": trainer.init(members),
            "alive": trainer.alive([True] * len(members))}

  def call():
    holder["state"], holder["alive"], metrics = trainer.train_chunk(
        holder["state"], table, holder["alive"], length=trainer.c.steps_per_call)
    return metrics
  call.holder = holder
  return call


def step_cost() -> dict:
  """XLA's cost analysis of one optimizer step of the default config: the
  whole step, and its gradient alone (bytes accessed and flops)."""
  c = classifier_config.coopetition_config()
  mesh = loop.make_mesh(1)
  with jax.set_mesh(mesh):
    trainer = step_lib.Trainer(c, mesh)
    table = sources.load_table(c.data)
    state = jax.tree.map(lambda x: x[0], trainer.init(config_lib.members(c)))
    carry = (state, jnp.bool_(True))
    step = jax.jit(trainer._precise(trainer._step))  # pylint: disable=protected-access

    def grad_only(state):
      key = jax.random.fold_in(state["data_key"], state["step"])
      batch = trainer.task.sample_batch(key, table, state["hyper"], state["step"])
      return jax.grad(lambda p: trainer._loss(p, state, batch)[0])(state["params"])  # pylint: disable=protected-access
    out = {}
    for name, fn, args in (("step", step, (carry, table)),
                           ("sample + grad", jax.jit(grad_only), (state,))):
      cost = fn.lower(*args).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      out[name] = {k: float(cost.get(k, 0.0)) for k in ("flops", "bytes accessed")}
  return out


def fused_on_devices(n_devices: int, fused_steps: int, fused_calls: int) -> dict:
  """Fused steps/s with the batch over n devices, and the final params."""
  c = classifier_config.coopetition_config()
  c.steps_per_call, c.num_devices = fused_steps, n_devices
  mesh = loop.make_mesh(n_devices)
  with jax.set_mesh(mesh):
    trainer = step_lib.Trainer(c, mesh)
    table = sources.load_table(c.data, trainer.replicated)
    fused = _fused_calls(trainer, config_lib.members(c), table)
    rate = fused_calls * fused_steps / _timed(fused, fused_calls)
  return dict(rate=rate, params=jax.device_get(fused.holder["state"]["params"]))


def device_table(counts, fused_steps: int, fused_calls: int, out_dir: str):
  """One subprocess per device count (XLA fixes the count at start-up)."""
  rows = []
  for n in counts:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    subprocess.run([sys.executable, __file__, f"--_child={n}",
                    f"--fused_steps={fused_steps}", f"--fused_calls={fused_calls}",
                    f"--_out={out_dir}"], env=env, check=True)
    with open(os.path.join(out_dir, f"{n}.json")) as f:
      rate = json.load(f)["rate"]
    with np.load(os.path.join(out_dir, f"{n}.npz"), allow_pickle=False) as z:
      params = [z[k] for k in sorted(z.files)]
    rows.append((n, rate, params))
  base_rate, base_params = rows[0][1], rows[0][2]
  print(f"{'devices':>7}  {'steps/s':>9}  {'vs first':>8}  {'max |param diff|':>16}")
  for n, rate, params in rows:
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(params, base_params))
    print(f"{n:>7}  {rate:9.1f}  {rate / base_rate:7.2f}x  {diff:16.2e}")


def _child(n, fused_steps, fused_calls, out_dir):
  r = fused_on_devices(n, fused_steps, fused_calls)
  with open(os.path.join(out_dir, f"{n}.json"), "w") as f:
    json.dump({"rate": r["rate"]}, f)
  leaves = jax.tree_util.tree_flatten_with_path(r["params"])[0]
  np.savez(os.path.join(out_dir, f"{n}.npz"),
           **{f"{i:03d}": np.asarray(x) for i, (_, x) in enumerate(leaves)})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--population", default="64",
                      help="population sizes for (c), comma-separated")
  parser.add_argument("--fused_steps", type=int, default=625)
  parser.add_argument("--per_step_iters", type=int, default=1000)
  parser.add_argument("--fused_calls", type=int, default=4)
  parser.add_argument("--population_calls", type=int, default=1)
  parser.add_argument("--population_map", default="auto",
                      help="auto | vmap | sequential (config population_map)")
  parser.add_argument("--device_counts", default="",
                      help="e.g. 1,2,4,8: data-parallel scaling table instead")
  parser.add_argument("--cost", action="store_true",
                      help="XLA's bytes and flops per step instead")
  parser.add_argument("--json", default="", help="also write the numbers here")
  parser.add_argument("--_child", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--_out", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._child:  # pylint: disable=protected-access
    return _child(args._child, args.fused_steps, args.fused_calls, args._out)  # pylint: disable=protected-access
  if args.cost:
    for name, cost in step_cost().items():
      print(f"{name:>14}: {cost['bytes accessed'] / 1e6:8.1f} MB accessed, "
            f"{cost['flops'] / 1e6:8.1f} MFLOP per optimizer step")
    return None
  if args.device_counts:
    with tempfile.TemporaryDirectory() as out_dir:
      return device_table([int(n) for n in args.device_counts.split(",")],
                          args.fused_steps, args.fused_calls, out_dir)
  r = measure([int(p) for p in args.population.split(",")], args.fused_steps,
              args.per_step_iters, args.fused_calls, args.population_calls,
              args.population_map)
  print_table(r, args.fused_steps)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(r, f)


def print_table(r, fused_steps: int):
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}) x {jax.device_count()}")
  print(f"(a) per-step jit loop : {r['per_step']:10.1f} steps/s")
  print(f"(b) fused scan x{fused_steps:<5d}: {r['fused']:10.1f} steps/s"
        f"   ({r['fused'] / r['per_step']:.2f}x per-step)")
  for population, rate in r["population_steps"].items():
    print(f"(c) population of {population:<3d} : {rate:10.1f} steps/s"
          f" = {rate * population:.1f} model-steps/s"
          f"   ({rate * population / r['fused']:.2f}x fused)")


if __name__ == "__main__":
  main()
