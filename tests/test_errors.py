"""User mistakes stop before any compile with one clear line, no traceback."""
import pytest

from helpers import run_cli

SMOKE = ["main.py", "--config=configs/smoke.py"]


@pytest.mark.parametrize("flags,field", [
    (["--config.train.burstiness=2"], "train.burstiness"),
    (["--config.train.n_classes=100"], "train.n_classes"),
    (["--config.evals.names=('icl','nope')"], "evals.names"),
    (["--config.data.source=features", "--config.data.path=/nonexistent.h5"],
     "data.path"),
    (["--config.model.positions=alibi"], "model.positions"),
    (["--config.population=init_seed=1,colour=red"], "population"),
    (["--config.total_sequences=1234"], "total_sequences"),
    (["--config.trian.burstiness=1"], "bad --config"),
    (["--config=configs/coopetition.py:nope"], "unknown variant 'nope'"),
    (["--config.data.layout=released"], "data.layout"),
    (["--config.warm_start.workdir=/nonexistent"], "warm_start.workdir: no run"),
])
def test_bad_config_gives_one_line(tmp_path, flags, field):
  result = run_cli(SMOKE + [f"--workdir={tmp_path}/w"] + flags)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and field in lines[0], result.stderr


def test_wrong_hdf5_path_and_missing_config_file(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = tmp_path / "f.h5"
  with h5py.File(path, "w") as f:
    f["feat"] = np.zeros((40, 6, 16), np.float32)
  result = run_cli(SMOKE + [f"--workdir={tmp_path}/w", "--config.data.source=features",
                            f"--config.data.path={path}"])
  assert result.returncode == 2 and "data.key" in result.stderr
  assert "Traceback" not in result.stderr
  result = run_cli(["main.py", "--config=configs/nope.py", f"--workdir={tmp_path}/w"])
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().startswith("error:")
  result = run_cli(["-m", "icl_transience.evaluate", f"--workdir={tmp_path}/none"])
  assert result.returncode == 2 and "config.json missing" in result.stderr
