"""Time a population's checkpoint save on several devices, with Orbax's
replica-parallel saving (its default off GPU) and with each array written
whole (ours).

  python benchmarks/checkpoint_save.py [--devices=4] [--members=8] [--saves=3]

Runs itself with `devices` fake CPU devices. Each member is a tree of 53
arrays (the smoke model's state: params and both Adam moments) replicated
over every device, as a run's snapshot is; prints the mean seconds of a
save (the blocking part, which stalls training, and the whole, to the
commit) for each way, and their ratios.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

SHAPES = [(16, 16)] * 30 + [(16,)] * 20 + [(40, 16), (64, 16), ()]


def timed_saves(members: int, saves: int, replica_parallel: bool):
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  from icl_transience.train import checkpoints
  mesh = jax.make_mesh((jax.device_count(),), ("d",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng = np.random.default_rng(0)
  states = [{f"a{i}": jax.device_put(rng.normal(size=s).astype(np.float32), replicated)
             for i, s in enumerate(SHAPES)} for _ in range(members)]
  names = [f"member{m}" for m in range(members)]
  blocking, whole = [], []
  with tempfile.TemporaryDirectory() as workdir:
    mngr = checkpoints.manager(workdir)  # registers our array handler
    if replica_parallel:
      ocp.type_handlers.register_type_handler(
          jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=True),
          override=True)
    for step in range(saves + 1):  # the first save warms up
      start = time.perf_counter()
      checkpoints.save(mngr, states, names, {"step": step})
      saved = time.perf_counter()
      mngr.wait_until_finished()
      if step:
        blocking.append(saved - start)
        whole.append(time.perf_counter() - start)
  return sum(blocking) / saves, sum(whole) / saves


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--devices", type=int, default=4)
  parser.add_argument("--members", type=int, default=8)
  parser.add_argument("--saves", type=int, default=3)
  parser.add_argument("--way", choices=("replica_parallel", "whole"))
  args = parser.parse_args()
  if args.way:  # the child, with its fake devices
    print(*timed_saves(args.members, args.saves, args.way == "replica_parallel"))
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"{os.environ.get('XLA_FLAGS', '')} "
      f"--xla_force_host_platform_device_count={args.devices}").strip())
  seconds = {}
  for way in ("replica_parallel", "whole"):
    out = subprocess.run([sys.executable, __file__, f"--way={way}"] + sys.argv[1:],
                         env=env, check=True, capture_output=True, text=True).stdout
    seconds[way] = [float(x) for x in out.split()[-2:]]
    print(f"{way:16s} a save of {args.members} members on {args.devices} devices: "
          f"{seconds[way][0]:.2f} s blocking, {seconds[way][1]:.2f} s to the commit")
  ratios = [a / b for a, b in zip(seconds["replica_parallel"], seconds["whole"])]
  print(f"replica_parallel / whole: {ratios[0]:.1f}x blocking, {ratios[1]:.1f}x to the commit")


if __name__ == "__main__":
  main()
