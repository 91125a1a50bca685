"""Sweeps: grouping into population programs, one workdir per group, resume."""
import json
import os

import pytest

from icl_transience import metrics_table
from icl_transience import sweep
from icl_transience.errors import UserError
from icl_transience.proj.transience import windows

from helpers import run_cli, smoke_config


def test_member_fields_share_a_program_and_shapes_do_not():
  c = smoke_config()
  out = sweep.groups(c, "seed=1,2 lr=1e-3,3e-3 model.depth=1,2")
  assert [g.name for g in out] == ["depth=1", "depth=2"]
  assert out[0].overrides == {"model.depth": 1}
  assert out[0].population == ("init_seed=1,lr=1e-3; init_seed=1,lr=3e-3; "
                               "init_seed=2,lr=1e-3; init_seed=2,lr=3e-3")
  assert len(sweep.group_config(c, out[1]).population.split(";")) == 4
  only_members = sweep.groups(c, "data_seed=3,4")
  assert [(g.name, g.population) for g in only_members] == [
      ("all", "data_seed=3; data_seed=4")]
  shapes = sweep.groups(c, "train.burstiness=0,1 model.positions=learned,rope")
  assert len(shapes) == 4 and all(g.population == "" for g in shapes)
  assert shapes[3].overrides == {"train.burstiness": 1, "model.positions": "rope"}
  for bad in ("seed", "nope.x=1", "model.depth=two"):
    with pytest.raises(UserError, match="--grid"):
      sweep.groups(c, bad)


def test_sweep_runs_groups_and_skips_finished_ones(tmp_path):
  c = smoke_config(total_sequences=160, eval_every=80, **{"ckpt.every": 80})
  grid = "seed=1,2 model.depth=1,2"
  assert sweep.run(c, str(tmp_path), grid) == ["depth=1", "depth=2"]
  for name in ("depth=1", "depth=2"):
    rows = metrics_table.read(str(tmp_path / name))
    assert {r["member"] for r in rows} == {"init_seed1", "init_seed2"}
  table = json.loads((tmp_path / "summary.json").read_text())
  assert len(table) == 4 and all(e["sequences"] == 160 for e in table)
  assert sweep.run(c, str(tmp_path), grid) == []  # finished: nothing to do


def test_sweep_cli_lists_groups_and_rejects_bad_grids():
  listed = run_cli(["-m", "icl_transience.sweep", "--config=configs/smoke.py",
                    "--workdir=/tmp/unused", "--grid=seed=1,2 model.n_heads=1,2",
                    "--list"])
  assert listed.returncode == 0, listed.stderr
  assert listed.stdout.splitlines() == [
      "0: n_heads=1  members: init_seed=1; init_seed=2",
      "1: n_heads=2  members: init_seed=1; init_seed=2"]
  bad = run_cli(["-m", "icl_transience.sweep", "--config=configs/smoke.py",
                 "--workdir=/tmp/unused", "--grid=lr"])
  assert bad.returncode == 2 and bad.stderr.startswith("error: --grid")


def write_source_run(root, name, family, source, values):
  """A run of a window sweep: its config (source checkpoint) and one curve."""
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  block = windows.FAMILIES[family][0]
  c = smoke_config(**{f"{block}.sequences": source})
  metrics_table.atomic_write_text(os.path.join(workdir, "config.json"), c.to_json())
  evaluator, metric = windows.FAMILIES[family][1:3]
  metrics_table.MetricsTable(workdir).append([
      dict(member="main", step=i, sequences=1000 * i, evaluator=evaluator,
           metric=metric, value=v) for i, v in enumerate(values)])


def test_the_window_tool_reads_a_graft_and_a_warm_start_sweep(tmp_path):
  graft = str(tmp_path / "graft")
  for source, last in ((4_000_000, 1.9), (9_800_000, 0.5), (15_000_000, 0.1),
                       (32_000_000, 0.8)):
    write_source_run(graft, f"sequences={source}", "graft", source, [0.9, last])
  out = windows.window(windows.results(graft, "graft"), "graft")
  assert [r["icl"] for r in out["runs"]] == [False, True, True, False]
  assert (out["from"], out["to"], out["contiguous"], out["pass"]) == (
      9_800_000, 15_000_000, True, True)
  # a success after a failure inside the range: no bounded window
  write_source_run(graft, "sequences=12000000", "graft", 12_000_000, [0.9, 0.75])
  assert not windows.window(windows.results(graft, "graft"), "graft")["pass"]
  warm = str(tmp_path / "warm")
  for source, flip in ((4_000_000, [0.4, 0.88, 0.1]), (5_000_000, [0.4, 0.81]),
                       (7_000_000, [0.44, 0.3]), (8_000_000, [0.3, 0.03])):
    write_source_run(warm, f"sequences={source}", "warm", source, flip)
  out = windows.window(windows.results(warm, "warm"), "warm")
  assert [r["flip_icl_in_context_acc"] for r in out["runs"]] == [0.88, 0.81, 0.44, 0.3]
  assert (out["from"], out["to"], out["pass"]) == (4_000_000, 5_000_000, True)
  with pytest.raises(UserError, match="no graft runs"):
    windows.results(str(tmp_path / "warm"), "graft")
