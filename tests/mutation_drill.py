"""The mutation drill: breaks a science-critical line in a temporary copy of
the repository, runs the tests named for it, and prints whether they caught
it. Every mutation must be caught; a new science path adds its mutation.
Not run by CI (minutes); run it after changing a science path or its tests:

  python tests/mutation_drill.py [--only=NAME,NAME] [--list]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSIENCE = "icl_transience/proj/transience/"
# name: (file, line as it is, line as the mutation writes it, tests that must fail)
MUTATIONS = {
    "sampler burstiness": (
        TRANSIENCE + "sequences.py",
        "    parts.append(jnp.repeat(query, spec.burstiness))",
        "    parts.append(jnp.repeat(query, max(spec.burstiness - 1, 1)))",
        ["tests/test_sequences.py"]),
    "sampler relabelling ('01' order)": (
        TRANSIENCE + "sequences.py",
        "    return first, 1 - first",
        "    return jnp.int32(0), jnp.int32(1)",
        ["tests/test_sequences.py"]),
    "flip evaluator's labels": (
        TRANSIENCE + "probes.py",
        '                             distractor=True, relabel="flip")',
        '                             distractor=True, relabel="01")',
        ["tests/test_probes.py", "tests/test_sequences.py"]),
    "L2 form (unsquared norm -> squared)": (
        "icl_transience/train/step.py",
        "    return sum(optax.safe_norm(w, 0.0) for w in leaves)",
        "    return sum(0.5 * jnp.sum(w * w) for w in leaves)",
        ["tests/test_optimizer.py"]),
    "L2 MLP group (LayerNorm dropped)": (
        "icl_transience/nn/transformer.py",
        'L2_GROUPS = {"mlp": ("mlp_in", "mlp_out", "ln_mlp"), "attention": ("attn", "ln_attn")}',
        'L2_GROUPS = {"mlp": ("mlp_in", "mlp_out"), "attention": ("attn", "ln_attn")}',
        ["tests/test_optimizer.py", "tests/test_train.py::"
         "test_an_l2_mlp_member_gets_exactly_the_mlp_group_penalty_gradient"]),
    "per-member L2 groups ignored": (
        "icl_transience/train/step.py",
        "    for group in self.l2_groups:",
        "    for group in self.l2_groups[:0]:",
        ["tests/test_optimizer.py"]),
    "calibration fields dropped": (
        TRANSIENCE + "sources.py",
        '                            relu=data_cfg.get("relu_features", False),',
        '                            relu=False,',
        ["tests/test_configs.py::"
         "test_the_calibrated_features_reach_the_table_the_run_trains_on"]),
    "subclusters dropped": (
        TRANSIENCE + "sources.py",
        '                            subclusters=data_cfg.get("subclusters", 1),',
        '                            subclusters=1,',
        ["tests/test_configs.py::"
         "test_the_calibrated_features_reach_the_table_the_run_trains_on"]),
    "resume state (data stream not restored)": (
        "icl_transience/train/loop.py",
        "      start, state, meta = found",
        '      start, state, meta = found[0], dict(found[1], data_key=found[1]'
        '["data_key"] + 1), found[2]',
        ["tests/test_resume.py::test_resume_in_a_new_process_is_bit_exact"]),
    "divergence guard off": (
        "icl_transience/train/step.py",
        "      new = jax.tree.map(lambda n, o: jnp.where(alive, n, o), new, state)",
        "      pass",
        ["tests/test_reliability.py::"
         "test_a_diverging_member_stops_and_the_others_are_unchanged"]),
    "checkpoint quarantine": (
        "icl_transience/train/checkpoints.py",
        '    os.replace(os.path.join(root, f"{step:0{STEP_DIGITS}d}"), target)',
        "    pass",
        ["tests/test_reliability.py::"
         "test_damaged_checkpoints_are_quarantined_and_resume_is_exact"]),
    "metrics append keeps duplicates": (
        "icl_transience/metrics_table.py",
        "      if key not in self._keys:",
        "      if True:",
        ["tests/test_metrics_table.py"]),
    "torn last line refused, not recovered": (
        "icl_transience/metrics_table.py",
        "    if row is None and number == len(lines):",
        "    if row is None and number == -1:",
        ["tests/test_workdir_faults.py"]),
}


def run(name: str, workdir: str) -> tuple[bool, float]:
  """Applies one mutation in a fresh copy; True when its tests fail."""
  path, before, after, tests = MUTATIONS[name]
  copy = os.path.join(workdir, "repo")
  shutil.rmtree(copy, ignore_errors=True)
  shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
      ".git", "__pycache__", "*.egg-info", ".ci-venv", "runs"))
  target = os.path.join(copy, path)
  text = open(target, encoding="utf-8").read()
  if text.count(before) != 1:
    raise SystemExit(f"{name}: the line to mutate is not in {path} exactly once; "
                     "update the drill")
  with open(target, "w", encoding="utf-8") as f:
    f.write(text.replace(before, after))
  start = time.time()
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
       "-o", "addopts=", *tests], cwd=copy, capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH=copy), check=False)
  return result.returncode != 0, time.time() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="comma-separated mutation names")
  parser.add_argument("--list", action="store_true")
  args = parser.parse_args()
  names = [n.strip() for n in args.only.split(",") if n.strip()] or list(MUTATIONS)
  if args.list:
    print("\n".join(f"{n}: {', '.join(MUTATIONS[n][3])}" for n in names))
    return 0
  start, survived = time.time(), []
  print(f"{'mutation':<46} {'caught':<8} seconds  tests")
  with tempfile.TemporaryDirectory() as workdir:
    for name in names:
      caught, seconds = run(name, workdir)
      survived += [] if caught else [name]
      print(f"{name:<46} {'caught' if caught else 'SURVIVED':<8} {seconds:7.0f}  "
            f"{', '.join(t.split('::')[-1] for t in MUTATIONS[name][3])}", flush=True)
  print(f"{len(names) - len(survived)} of {len(names)} caught in "
        f"{time.time() - start:.0f} s")
  return 1 if survived else 0


if __name__ == "__main__":
  sys.exit(main())
