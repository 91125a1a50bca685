"""The launch scripts: dry runs print the right commands, a real TPU run (with
a fake gcloud) runs exactly those and deletes the VM even after a failure,
bad usage exits 2, and every script passes shellcheck; the accelerator
check's plan fits its budget."""
import glob
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile

import pytest

from helpers import REPO

POPULATION = "--config.population=init_seed=5; init_seed=6"


def launch(script, *args, env=None, check=True):
  return subprocess.run(["bash", f"launch/{script}", *args], cwd=REPO,
                        env=dict(os.environ, **(env or {})), capture_output=True,
                        text=True, check=check)


def dry_run(script, *args, env=None):
  return launch(script, "--dry-run", *args, env=env).stdout.splitlines()


def remote_command(line):
  """The command a `gcloud ... ssh --command=...` line runs on the workers."""
  words = shlex.split(line)
  return shlex.split(next(w for w in words if w.startswith("--command="))
                     [len("--command="):])


def test_local_dry_run():
  out = dry_run("local.sh", "configs/smoke.py", "runs/x", "--config.optim.lr=1e-3")
  assert out == [
      "python main.py --config=configs/smoke.py --workdir=runs/x --config.optim.lr=1e-3",
      "python -m icl_transience.evaluate --workdir=runs/x",
      "python -m icl_transience.plot --workdir=runs/x"]


def test_tpu_vm_dry_run():
  out = dry_run("tpu_vm.sh", "--zone=europe-west4-a", "--accelerator-type=v4-32",
                "--name=coop", "configs/coopetition.py", "gs://bucket/runs/coop",
                POPULATION, "--config.optim.lr=1e-3")
  pack, create, copy, setup, train, sweep, delete = out
  assert pack.startswith("git ls-files") and "tar" in pack
  assert create == ("gcloud compute tpus tpu-vm create coop --zone=europe-west4-a "
                    "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base")
  assert copy.startswith("gcloud compute tpus tpu-vm scp ")
  assert copy.endswith(" coop:code.tar.gz --zone=europe-west4-a --worker=all")
  for line in (setup, train, sweep):
    assert line.startswith("gcloud compute tpus tpu-vm ssh coop --zone=europe-west4-a ")
  assert "--worker=all" in shlex.split(setup) and "--worker=all" in shlex.split(train)
  assert "--worker=0" in shlex.split(sweep)
  assert 'pip install -q -e ".[tpu]"' in setup
  train_words = remote_command(train)
  assert train_words[train_words.index("python"):] == [
      "python", "main.py", "--config=configs/coopetition.py",
      "--workdir=gs://bucket/runs/coop", "--multihost", POPULATION,
      "--config.optim.lr=1e-3"]
  sweep_words = remote_command(sweep)
  assert sweep_words[-4:] == ["python", "-m", "icl_transience.evaluate",
                              "--workdir=gs://bucket/runs/coop"]
  assert "JAX_PLATFORMS=cpu" in sweep_words
  assert delete == "gcloud compute tpus tpu-vm delete coop --zone=europe-west4-a --quiet"


def test_tpu_vm_keep_leaves_the_vm():
  result = launch("tpu_vm.sh", "--dry-run", "--keep", "configs/smoke.py", "gs://b/x")
  out = result.stdout.splitlines()
  assert len(out) == 6 and not any("delete" in line for line in out)
  assert "gcloud compute tpus tpu-vm delete icl-transience" in result.stderr


@pytest.mark.parametrize("fail_on", ["", "main.py"])
def test_tpu_vm_runs_its_dry_run_and_always_deletes(tmp_path, fail_on):
  """With a fake gcloud: the calls equal the dry run; a failed training
  command stops the script, and the VM is still deleted."""
  log = tmp_path / "gcloud.log"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text("#!/usr/bin/env bash\n"
                  'printf "%s\\x1f" "$@" >> "$GCLOUD_LOG"; echo >> "$GCLOUD_LOG"\n'
                  f'[[ -z "{fail_on}" || "$*" != *"{fail_on}"* ]]\n')
  fake.chmod(0o755)
  args = ("configs/smoke.py", "gs://b/x", POPULATION)
  env = dict(PATH=f"{fake.parent}:{os.environ['PATH']}", GCLOUD_LOG=str(log),
             TMPDIR=str(tmp_path))
  planned = [shlex.split(line)[1:]
             for line in dry_run("tpu_vm.sh", *args, env=env)[1:]]
  result = launch("tpu_vm.sh", *args, env=env, check=False)
  calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
  if fail_on:
    assert result.returncode != 0
    assert calls == planned[:4] + planned[-1:]  # no sweep; delete still runs
  else:
    assert result.returncode == 0, result.stderr
    assert calls == planned
  with tarfile.open(tmp_path / "icl-transience-code.tar.gz") as archive:
    names = set(archive.getnames())
  assert {"main.py", "pyproject.toml", "launch/tpu_vm.sh"} <= names
  assert not any(n.startswith("runs/") for n in names)


def test_multi_gpu_dry_run():
  out = dry_run("multi_gpu.sh", "--install", "configs/smoke.py", "runs/my run",
                POPULATION)
  assert out == [
      'pip install -e ".[cuda]"',
      "python main.py --config=configs/smoke.py --workdir='runs/my run' "
      "--config.num_devices=0 '--config.population=init_seed=5; init_seed=6'",
      "python -m icl_transience.evaluate --workdir='runs/my run'",
      "python -m icl_transience.plot --workdir='runs/my run'"]
  assert shlex.split(out[1])[-1] == POPULATION
  assert dry_run("multi_gpu.sh", "c.py", "w")[0].startswith("python main.py")


@pytest.mark.parametrize("script,args", [
    ("local.sh", []),
    ("tpu_vm.sh", []),
    ("tpu_vm.sh", ["configs/smoke.py"]),
    ("tpu_vm.sh", ["configs/smoke.py", "runs/local"]),  # not a gs:// workdir
    ("tpu_vm.sh", ["--zone", "configs/smoke.py", "gs://b/x"]),
    ("tpu_vm.sh", ["--eval-platform=gpu", "configs/smoke.py", "gs://b/x"]),
    ("multi_gpu.sh", ["configs/smoke.py"]),
    ("multi_gpu.sh", ["--gpus=2", "configs/smoke.py", "runs/x"]),
])
def test_bad_usage_exits_2(script, args):
  result = launch(script, "--dry-run", *args, check=False)
  assert result.returncode == 2 and "usage" in result.stderr
  assert result.stdout == ""


def test_every_launch_script_passes_shellcheck():
  shellcheck = (shutil.which("shellcheck")
                or shutil.which("shellcheck", path=sysconfig.get_path("scripts")))
  if shellcheck is None:
    pytest.skip("shellcheck missing: pip install -e '.[test]' provides it")
  scripts = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")) +
                   glob.glob(os.path.join(REPO, "benchmarks", "*.sh")))
  assert len(scripts) >= 4
  result = subprocess.run([shellcheck, "--shell=bash", *scripts],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout


def _gpu_check_plan():
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  import gpu_check_plan  # pylint: disable=g-import-not-at-top
  return gpu_check_plan


def test_the_accelerator_check_runs_a_phase_only_to_its_full_horizon():
  plan = _gpu_check_plan()
  # configs/coopetition.py to 20 M at 6,500 steps/s: 625,000 steps
  needed = plan.run_seconds(20_000_000, 32, 6500.0, startup_s=40)
  assert needed == pytest.approx(40 + plan.WRAP_UP_S + 1.25 * 625_000 / 6500)
  assert plan.decide(needed, left_s=needed + 1) == ""
  assert plan.decide(needed, left_s=100) == (
      f"NOT RUN (needs {needed:.0f} s at the measured rate, 100 s left)")
  assert plan.decide(plan.run_seconds(2_000_000, 32, 0.0), 400).startswith(
      "NOT RUN (needs an unknown time (no rate)")


def _coop_rows(points):
  return [dict(member="main", sequences=x, evaluator=ev, metric="in_context_acc",
               value=v) for ev, curve in points.items() for x, v in curve]


def test_the_accelerator_check_judges_every_target_with_its_number():
  plan = _gpu_check_plan()
  rows = _coop_rows({
      "icl": [(1_000_000, 0.5), (5_000_000, 0.91), (20_000_000, 0.68)],
      "flip_icl": [(3_700_000, 0.83), (20_000_000, 0.03)],
      "iwl_copy_avail": [(20_000_000, 0.96)], "train_eval": [(20_000_000, 0.99)]})
  bands = plan.coop_bands(rows, "main")
  assert bands == pytest.approx({
      "ICL in 3-10 M": 0.91, "flip in 3-10 M": 0.83, "flip at 20 M": 0.03,
      "CIWL at 20 M": 0.96, "train at 20 M": 0.99, "ICL at 20 M": 0.68,
      "ICL drop from peak": 0.91 - 0.68})
  result = {"populations": [64, 256],
            "benchmark": {"single": 7000.0, "population_64": 40_000.0},
            "runs": {"transience": {"not_run": "NOT RUN (needs 900 s ...)"},
                     "coop": {"checks": dict(bands, **{"flip at 20 M": 0.4})}}}
  verdicts = {t: (v, n) for t, v, n in plan.verdicts(result)}
  assert verdicts["single run >= 6,500 steps/s"] == ("PASS", "7,000 steps/s")
  assert verdicts["population of 64 >= 45,000 model-steps/s"] == (
      "FAIL", "40,000 model-steps/s")
  assert verdicts["12-layer flip >= 0.85 within 2 M"] == ("NOT RUN (needs 900 s ...)", "")
  assert verdicts["coopetition flip at 20 M <= 0.35"] == ("FAIL", "0.400")
  assert verdicts["coopetition ICL in 3-10 M >= 0.8"] == ("PASS", "0.910")
  assert verdicts["coopetition ICL at 20 M <= 0.8"] == ("PASS", "0.680")
  assert len(verdicts) == 3 + len(plan.COOP_BANDS)
  # a curve without a point in its window fails, with no number made up
  result["runs"]["transience"] = {"checks": {"flip within 2 M": float("nan")}}
  verdicts = {t: (v, n) for t, v, n in plan.verdicts(result)}
  assert verdicts["12-layer flip >= 0.85 within 2 M"] == ("FAIL", "no point")
  assert plan.best_flip(_coop_rows({"flip_icl": [(1_900_000, 0.86),
                                                 (2_100_000, 0.9)]}), "main") == 0.86
