"""The LDS configs, their one-line errors, and the report's checks on
made-up metrics rows (Daniels et al. 2025; our acceptance checks 4, 5, 8-10).
"""
import json
import os

import numpy as np
import pytest

from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall import gpt2
from icl_transience.proj.lds_recall import lds
from icl_transience.proj.lds_recall import report as lds_report
from icl_transience.proj.lds_recall import task as lds_task

from helpers import REPO  # pylint: disable=unused-import  (puts configs/ on the path)
import lds_recall  # pylint: disable=wrong-import-order


def smoke_config(**overrides):
  return config_lib.override(lds_recall.get_config("smoke"), overrides)


def test_configs_follow_the_paper():
  lrs = {"tiny": 1.268e-4, "small": 4.483e-5, "medium": 1.585e-5,
         "big": 1.4766e-5, "40m": 4.77e-6}
  for variant, lr in lrs.items():
    c = lds_recall.get_config(variant)
    np.testing.assert_allclose(c.optim.lr, lr, rtol=1e-3)
    d, depth, heads = gpt2.SIZES[variant]
    assert (c.model.d_model, c.model.depth, c.model.n_heads) == (d, depth, heads)
    assert c.eval_every == c.ckpt.every == 1000 * c.batch_size
    assert c.total_sequences % (c.batch_size * c.steps_per_call) == 0
    lds_task.LDSTask(c).validate(1)
  assert lds_recall.get_config().model.d_model == 192  # default: big
  assert lds_task.lds_spec(lds_recall.get_config()) == lds.LDSSpec()
  assert lds_recall.get_config("big").total_sequences == 86_400_000
  assert lds_recall.get_config("big").model.remat  # fits one 80 GB device
  for variant in ("cpu", "smoke", "medium,backstory"):
    lds_task.LDSTask(lds_recall.get_config(variant)).validate(1)
  # the authors' pre-training error: 40,000 traces on 40,000 test systems
  big = lds_recall.get_config("big")
  assert (big.lds.pretrain_traces, big.lds.pretrain_systems) == (40_000, 40_000)
  assert list(lds_task.train_needle_evaluators(big)) == [
      "train_needle_h5_late0", "train_needle_h5_late1", "train_needle_h5_late2"]
  assert not lds_task.train_needle_evaluators(config_lib.override(
      lds_recall.get_config("smoke"), {"lds.resample_trajectories": True}))
  backstory = lds_task.lds_spec(lds_recall.get_config("medium,backstory"))
  assert (backstory.backstory_systems, backstory.backstory_len) == (10, 7)
  assert lds_task.eval_spec(backstory).backstory_systems == 0  # training only
  with pytest.raises(UserError, match="unknown variant 'huge'.*model size"):
    lds_recall.get_config("huge")
  assert lds_recall.get_config("tiny,cpu") == lds_recall.get_config("cpu")
  with pytest.raises(UserError, match="two model sizes"):
    lds_recall.get_config("tiny,small")


@pytest.mark.parametrize("field, value, match", [
    ("lds.haystack_lens", (9,), "needle_h9"),
    ("lds.needle_segment_len", 20, "prompt"),
    ("lds.final_steps", (11,), "lds.final_steps"),
    ("lds.ood_variants", ("bogus",), "lds.ood_variants"),
    ("lds.context_len", 1, "lds.context_len"),
    ("model.max_len", 20, "model.max_len"),
    ("model.n_heads", 3, "model.n_heads"),
    ("lds.needle_config", 2, "lds.needle_config"),
    ("lds.pretrain_traces", 12, "lds.pretrain_traces"),
    ("lds.train_needle_late_starts", (40,), "lds.train_needle_late_starts"),
    ("lds.backstory_systems", 6, "lds.backstory_systems"),
])
def test_bad_fields_raise_user_errors(field, value, match):
  with pytest.raises(UserError, match=match):
    lds_task.LDSTask(smoke_config(**{field: value})).validate(1)


def synthetic_rows(first, second, sequences):
  """Metrics rows of needle_h2 medians (and bands) at each sequences count."""
  rows = []
  for step, (s, a, b) in enumerate(zip(sequences, first, second)):
    results = {"needle_h2": {}, "pretrain_test": {"mse": 1 / (1 + step)},
               "train_batch": {"loss": 1 / (1 + step)}}
    for k, value in ((1, a), (2, b)):
      for q, shift in (("q25", -0.05), ("median", 0.0), ("q75", 0.05)):
        results["needle_h2"][f"after_final_{k}_{q}"] = value + shift
    rows += metrics_table.rows_from("main", step, s, results)
  return rows


def write_run(workdir, rows, **overrides):
  os.makedirs(workdir, exist_ok=True)
  metrics_table.atomic_write_text(metrics_table.path(workdir), "".join(
      json.dumps(r) + "\n" for r in rows))
  c = smoke_config(**overrides)
  metrics_table.atomic_write_text(os.path.join(workdir, "config.json"),
                                  c.to_json())


def test_report_two_timescales_and_abruptness(tmp_path):
  sequences = [0, 1000, 2000, 4000, 8000, 10_000, 12_000, 16_000]
  first = [0.9, 0.88, 0.87, 0.86, 0.85, 0.5, 0.05, 0.01]
  second = [0.9, 0.6, 0.4, 0.2, 0.1, 0.05, 0.02, 0.01]
  workdir = str(tmp_path / "run")
  write_run(workdir, synthetic_rows(first, second, sequences))
  out = lds_report.report(workdir, str(tmp_path / "out"))
  (member,) = out["members"]
  assert member["two_timescales"] == {"t1": 12_000, "t2": 4000, "ratio": 3.0,
                                      "pass": True}
  assert member["abrupt_first_token"] == {"t_high": 8000, "t_low": 12_000,
                                          "span": 1.5, "pass": True}
  assert member["final"] == {"after_final_1": 0.01, "after_final_2": 0.01}
  saved = json.loads((tmp_path / "out" / "report.json").read_text())
  assert saved["members"][0]["two_timescales"]["t1"] == 12_000
  for path in member["figures"]:
    assert os.path.getsize(path) > 1000
  # First token never recalls: t1 undefined, both checks fail.
  workdir = str(tmp_path / "never")
  write_run(workdir, synthetic_rows([0.9] * 8, second, sequences))
  (member,) = lds_report.report(workdir, workdir)["members"]
  assert member["two_timescales"]["t1"] is None
  assert not member["two_timescales"]["pass"]
  assert not member["abrupt_first_token"]["pass"]
  with pytest.raises(UserError, match="no metrics"):
    lds_report.report(str(tmp_path / "missing"), str(tmp_path))



def test_ood_variants_take_their_own_haystacks():
  c = smoke_config(**{"lds.ood_variants": ("synchronised@1,3", "misdirected_label"),
                      "lds.ood_haystack_lens": (2,)})
  assert lds_task.needle_evaluators(c) == {
      "needle_h2": (2, "normal"), "synchronised_h1": (1, "synchronised"),
      "synchronised_h3": (3, "synchronised"),
      "misdirected_label_h2": (2, "misdirected_label")}
  # the paper-size presets follow the paper's OOD prompts over training
  ood = {e for e, (_, v) in lds_task.needle_evaluators(lds_recall.get_config("medium")).items()
         if v != "normal"}
  assert ood == {"misdirected_label_h2", "synchronised_h1", "synchronised_h2",
                 "synchronised_h3", "unseen_system_h5", "unseen_system_h7"}
  with pytest.raises(UserError, match="lds.ood_variants: 'synchronised@x'"):
    lds_task.LDSTask(smoke_config(**{"lds.ood_variants": ("synchronised@x",)})).validate(1)


def ood_rows(values: dict, sequences):
  """Rows of {(evaluator, metric): [value per evaluation]} medians."""
  rows = []
  for step, s in enumerate(sequences):
    results = {}
    for (evaluator, metric), series in values.items():
      results.setdefault(evaluator, {})[f"{metric}_median"] = series[step]
    rows += metrics_table.rows_from("main", step, s, results)
  return rows


def test_report_checks_the_ood_prompts_over_training(tmp_path):
  """Acceptance checks 8-10 against hand-set curves, and their figure."""
  sequences = [0, 1000, 2000, 4000]
  values = {
      ("needle_h2", "after_final_1"): [0.9, 0.8, 0.2, 0.1],   # t1 = 2000
      ("needle_h2", "after_final_2"): [0.9, 0.1, 0.02, 0.01],
      ("misdirected_label_h2", "after_final_1"): [0.9, 1.0, 1.2, 1.5],
      ("misdirected_label_h2", "after_final_2"): [0.9, 0.2, 0.1, 0.04],
      ("synchronised_h2", "after_final_1"): [0.9, 0.8, 0.6, 0.5],
      ("synchronised_h2", "after_final_2"): [0.9, 0.6, 0.5, 0.45],
      ("unseen_system_h2", "after_final_1"): [1.0] * 4,
  }
  for k, final, initial in ((2, 0.4, 0.3), (3, 0.2, 0.15), (5, 0.5, 0.1)):
    values[("unseen_system_h2", f"after_final_{k}")] = [1.0, 1.0, 1.0, final]
    values[("unseen_system_h2", f"after_initial_{k}")] = [1.0, 1.0, 1.0, initial]
  workdir = str(tmp_path / "run")
  ood = ("misdirected_label@2", "synchronised@2", "unseen_system@2")
  write_run(workdir, ood_rows(values, sequences), **{"lds.ood_variants": ood})
  (member,) = lds_report.report(workdir, workdir)["members"]
  assert member["two_timescales"]["t1"] == 2000
  assert member["ood"]["misdirected_label"] == {"misdirected_label_h2": {
      "at": 4000, "first": 1.5, "second": 0.04, "pass": True}}
  assert member["ood"]["synchronised"] == {"synchronised_h2": {
      "second": 0.45, "normal": "needle_h2", "normal_second": 0.01, "pass": True}}
  unseen = member["ood"]["unseen_system"]["unseen_system_h2"]
  assert unseen["ratios"] == pytest.approx({"2": 0.4 / 0.3, "3": 0.2 / 0.15, "5": 5.0})
  assert unseen["pass"] is False   # k = 5: 5x its first-segment error
  assert os.path.getsize(os.path.join(workdir, "figures", "lds_ood_main.png")) > 10_000
  # a misdirected second token that follows the label fails check 8; with
  # no t1 (the first token never recalls) the check is undecided
  values[("misdirected_label_h2", "after_final_2")][-1] = 0.2
  write_run(workdir, ood_rows(values, sequences), **{"lds.ood_variants": ood})
  (member,) = lds_report.report(workdir, workdir)["members"]
  assert member["ood"]["misdirected_label"]["misdirected_label_h2"]["pass"] is False
  values[("needle_h2", "after_final_1")] = [0.9] * 4
  write_run(workdir, ood_rows(values, sequences), **{"lds.ood_variants": ood})
  (member,) = lds_report.report(workdir, workdir)["members"]
  assert member["ood"]["misdirected_label"]["misdirected_label_h2"]["pass"] is None
