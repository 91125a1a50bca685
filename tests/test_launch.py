"""The launch script's dry run prints the three commands of a run."""
import subprocess

from helpers import REPO


def test_local_dry_run():
  out = subprocess.run(["bash", "launch/local.sh", "--dry-run", "configs/smoke.py",
                        "runs/x", "--config.optim.lr=1e-3"], cwd=REPO,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert out == [
      "python main.py --config=configs/smoke.py --workdir=runs/x --config.optim.lr=1e-3",
      "python -m icl_transience.evaluate --workdir=runs/x",
      "python -m icl_transience.plot --workdir=runs/x"]
  bad = subprocess.run(["bash", "launch/local.sh"], cwd=REPO, capture_output=True,
                       text=True, check=False)
  assert bad.returncode == 2 and "usage" in bad.stderr
