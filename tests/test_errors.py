"""User mistakes stop before any compile with one clear line, no traceback.

Config and file mistakes are checked in-process (they raise UserError naming
the field); a few runs of the programs check the plumbing: exit status 2,
one `error:` line, no traceback."""
import glob
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from icl_transience import __main__ as tool_list
from icl_transience import config as config_lib
from icl_transience import evaluate
from icl_transience.errors import UserError

from helpers import REPO, run_cli, smoke_config


@pytest.mark.parametrize("fields,match", [
    ({"train.burstiness": 2}, "^train.burstiness: "),
    ({"train.n_classes": 100}, "^train.n_classes: 100 classes, but the source holds 40"),
    ({"evals.names": ("icl", "nope")}, "^evals.names: unknown evaluator 'nope'"),
    ({"data.source": "features", "data.path": "/nonexistent.h5"}, "^data.path: "),
    ({"model.positions": "alibi"}, "^model.positions: unknown 'alibi'"),
    ({"population": "init_seed=1,colour=red"}, "^population: bad member field 'colour=red'"),
    ({"total_sequences": 1234}, "^total_sequences: 1234 is not a multiple"),
    ({"data.layout": "released"}, "^data.layout: 'released' needs 20 exemplars"),
    ({"warm_start.workdir": "/nonexistent"}, "^warm_start.workdir: no run in /nonexistent"),
    ({"optim.schedule": "cosine"}, "^optim.schedule: "),
    ({"batch_size": 0}, "^batch_size: "),
    ({"matmul_precision": "fp8"}, "^matmul_precision: choose highest, high, default"),
    ({"data.feature_shift": float("nan")}, "^data.feature_shift: must be finite"),
    ({"data.spread": float("inf")}, "^data.spread: must be finite"),
    ({"data.feature_scale": float("nan")}, "^data.feature_scale: must be finite"),
    ({"data.subclusters": 0}, "^data.subclusters: must be >= 1"),
])
def test_bad_config_fields_are_named(fields, match):
  with pytest.raises(UserError, match=match):
    config_lib.validate(smoke_config(**fields))


def test_wrong_hdf5_dataset_is_named(tmp_path):
  path = tmp_path / "f.h5"
  with h5py.File(path, "w") as f:
    f["feat"] = np.zeros((40, 6, 16), np.float32)
  with pytest.raises(UserError, match="^data.key: "):
    config_lib.validate(smoke_config(**{"data.source": "features",
                                        "data.path": str(path)}))
  with pytest.raises(UserError, match="config.json missing"):
    evaluate.evaluate_checkpoints(str(tmp_path / "none"))


def one_error_line(result):
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, result.stderr
  return lines[0]


@pytest.mark.parametrize("args,message", [
    (["main.py", "--config=configs/smoke.py", "--config.train.burstiness=2"],
     "error: train.burstiness: "),
    (["main.py", "--config=configs/smoke.py", "--config.trian.burstiness=1"],
     "error: bad --config: "),
    (["main.py", "--config=configs/coopetition.py:nope"], "unknown variant 'nope'"),
    (["main.py", "--config=configs/nope.py"], "error: bad --config: "),
    (["-m", "icl_transience.evaluate"], "error: --workdir: no run in "),
])
def test_programs_exit_2_with_one_line(tmp_path, args, message):
  line = one_error_line(run_cli(args + [f"--workdir={tmp_path}/w"]))
  assert message in line


def test_every_documented_tool_is_listed_and_answers_help():
  """`python -m icl_transience` lists every module that has a main() (found
  here by text, independently of the index's own reading), with an example,
  and every tool the READMEs, configs and launch scripts name; each tool
  (and main.py) answers --help."""
  with_main = set()
  for path in glob.glob("icl_transience/**/*.py", root_dir=REPO, recursive=True):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
      if re.search(r"^def main\(", f.read(), re.M) and not path.endswith("__main__.py"):
        with_main.add(path[len("icl_transience/"):-3].replace("/", "."))
  tools = tool_list.tools()
  assert set(tools) == with_main and len(tools) >= 8, (tools, with_main)
  documented = set()
  for path in (["README.md"] + glob.glob("docs/*.md", root_dir=REPO)
               + glob.glob("icl_transience/proj/**/README.md", root_dir=REPO, recursive=True)
               + glob.glob("configs/*.py", root_dir=REPO)
               + glob.glob("launch/*.sh", root_dir=REPO)):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
      documented |= set(re.findall(r"python -m icl_transience\.([\w.]+\w)", f.read()))
  assert documented <= set(tools), documented - set(tools)
  listed = run_cli(["-m", "icl_transience"])
  assert listed.returncode == 0
  for tool in tools:
    command = f"python -m icl_transience.{tool}"
    # the command, its one-line summary, and an example of that command
    assert re.search(rf"^{re.escape(command)}\n    \S.*\n    e\.g\. {re.escape(command)}\b",
                     listed.stdout, re.M), (tool, listed.stdout)
  commands = [["main.py"]] + [["-m", f"icl_transience.{t}"] for t in tools]
  procs = [subprocess.Popen([sys.executable, *cmd, "--help"], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for cmd in commands]
  for cmd, proc in zip(commands, procs):
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, (cmd, err[-2000:])  # absl's --help exits 1
    assert re.search(r"--(workdir|checkpoints|seed)", out), (cmd, out[-500:])
