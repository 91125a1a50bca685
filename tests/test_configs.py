"""Every shipped config and variant validates and has the paper's shape."""
import json

import pytest

from helpers import REPO, changed_fields  # pylint: disable=unused-import  (REPO: configs/ on the path)
import coopetition  # pylint: disable=wrong-import-order
import lds_recall  # pylint: disable=wrong-import-order
import smoke  # pylint: disable=wrong-import-order
import transience  # pylint: disable=wrong-import-order
import transience_l2  # pylint: disable=wrong-import-order

from icl_transience import config as config_lib
from icl_transience import tasks
from icl_transience.errors import UserError
from icl_transience.proj.transience import classifier_config
from icl_transience.proj.transience import probes
from icl_transience.train import loop


@pytest.mark.parametrize("variant", sorted(coopetition.VARIANTS))
def test_coopetition_variants_validate(variant, tmp_path):
  c = coopetition.get_config(variant)
  for ref in ("graft", "warm_start"):
    if c[ref].workdir:  # needs the run it grafts or starts from
      with pytest.raises(UserError, match=f"{ref}.workdir: no run in runs/c"):
        config_lib.validate(c)
      (tmp_path / "config.json").write_text("{}")
      c[ref].workdir = str(tmp_path)
  config_lib.validate(c)
  assert c.batch_size == 32 and c.train.context_len == 2
  if variant == "icl_only":
    assert classifier_config.n_outputs(c) == 12_800
    spec = classifier_config.train_spec(c)
    assert spec.relabel == "pairs" and spec.fs_relabel == 12_800
  if variant == "ciwl_only":  # trains on the CIWL evaluator's distribution
    train, ciwl = classifier_config.train_spec(c), probes.eval_spec("iwl_copy_avail", c)
    for field in ("burstiness", "no_support", "unique_rest",
                  "assign_query_label_random", "relabel"):
      assert getattr(train, field) == getattr(ciwl, field)


PAIRS = {"train.relabel": "pairs", "train.fs_relabel": 12_800}
GRAFT_OUT = {"graft.mode": "out"}  # with graft.layer 0, its default
EX5, C1600, MLP4 = ({"train.exemplars": (0, 5)}, {"train.n_classes": 1600},
                    {"model.mlp_ratio": 4})
# What makes each variant that variant (Singh et al. 2025, appendix),
# written out; every other field but the horizon, checkpoints and the
# population is the main run's.
COOPETITION_VARIANT_FIELDS = {
    "": {}, "icl_only": PAIRS, "icl_only_graft": {**PAIRS, **GRAFT_OUT},
    "ciwl_only": {"train.burstiness": 0, "train.no_support": True,
                  "train.unique_rest": True, "train.assign_query_label_random": True},
    "ciwl_graft": {**PAIRS, **GRAFT_OUT}, "ciwl_warm": {},
    "mq": {"train.match_query_and_distractors": True},
    "sinpe": {"model.positions": "sinusoidal"}, "rope": {"model.positions": "rope"},
    "depth1": {"model.depth": 1}, "mlp": MLP4, "c12800_ex5": EX5, "c1600_ex20": C1600,
    "c1600_ex5": {**C1600, **EX5}, "mlp_c12800_ex5": {**MLP4, **EX5},
    "mlp_c1600_ex20": {**MLP4, **C1600}, "mlp_c1600_ex5": {**MLP4, **C1600, **EX5},
    "disallow_pt_head_attn_on_labels": {"clamp.block_label_attention": "0:all"},
    "nol0h147": {"clamp.ablate_heads": "0:1,4,7"}, "l2": {}, "l2_strong": {},
    "mlp_l2": MLP4,
}
FREE = ("total_sequences", "ckpt.", "population", "graft.workdir", "graft.sequences",
        "warm_start.workdir", "warm_start.sequences")


def test_each_coopetition_variant_sets_exactly_its_fields():
  assert set(COOPETITION_VARIANT_FIELDS) == set(coopetition.VARIANTS)
  main = coopetition.get_config()
  for variant, fields in COOPETITION_VARIANT_FIELDS.items():
    assert changed_fields(coopetition.get_config(variant), main, FREE) == fields, variant
  assert coopetition.get_config("ciwl_warm").warm_start.sequences == 4_000_000
  assert coopetition.get_config("ciwl_graft").graft.sequences == 9_800_000


def test_the_l2_presets_train_their_members_in_one_program():
  """coopetition.py:l2 is the main run over lambda; :mlp_l2 the mlp variant
  with per-member selective decay (Singh et al. 2023's comparison)."""
  main, l2 = coopetition.get_config(), coopetition.get_config("l2")
  assert [(m.name, m.hyper) for m in config_lib.members(l2)] == [
      (f"l2{name}", dict(lr=1e-5, l2=lam)) for name, lam in
      (("0", 0.0), ("1e-05", 1e-5), ("0.0001", 1e-4), ("0.001", 1e-3))]
  assert [m.hyper["l2"] for m in config_lib.members(coopetition.get_config(
      "l2_strong"))] == [1e-2, 1e-1]
  assert l2.total_sequences == 10_000_000 and l2.optim.l2_on == "all"
  assert l2.optim.l2_form == "norm" and l2.model.mlp_ratio == main.model.mlp_ratio
  mlp = coopetition.get_config("mlp_l2")
  assert mlp.model.mlp_ratio == 4 and mlp.total_sequences == 10_000_000
  groups = [{k: v for k, v in m.hyper.items() if k != "lr"}
            for m in config_lib.members(mlp)]
  zero = dict(l2=0.0, l2_mlp=0.0, l2_attention=0.0)
  assert groups == [zero, dict(zero, l2_mlp=1e-4), dict(zero, l2_attention=1e-4),
                    dict(zero, l2=1e-4)]
  for c in (l2, mlp):
    config_lib.validate(c)


def test_main_config_numbers():
  c = coopetition.get_config()
  assert (c.optim.lr, c.init_seed, c.data_seed, c.eval_seed) == (1e-5, 5, 2, 1)
  assert (c.data.rank, c.data.spread, c.data.isotropic_noise) == (16, 0.7, 0.1)
  assert (c.data.n_classes, c.data.n_exemplars, c.data.dim) == (12_984, 20, 512)
  assert c.total_sequences // c.batch_size == 625_000
  config_lib.validate(smoke.get_config())


@pytest.mark.parametrize("variant,horizon", [
    ("", 20_000_000), ("mq", 20_000_000), ("sinpe", 64_000_000),
    ("rope", 64_000_000), ("depth1", 64_000_000), ("icl_only", 64_000_000),
    ("mlp", 320_000_000), ("c1600_ex5", 100_000_000), ("ciwl_only", 64_000_000),
    ("mlp_c12800_ex5", 320_000_000), ("mlp_c1600_ex20", 320_000_000),
    ("mlp_c1600_ex5", 320_000_000), ("nol0h147", 64_000_000),
    ("disallow_pt_head_attn_on_labels", 64_000_000)])
def test_coopetition_variants_run_the_authors_horizons(variant, horizon):
  """The horizons of the authors' sweep (Singh et al. 2025, appendix)."""
  c = coopetition.get_config(variant)
  assert c.total_sequences == horizon
  config_lib.validate(c)


def test_the_window_presets_start_from_the_ciwl_only_checkpoints():
  """Fig. 5b / 5c of Singh et al. 2025: every source checkpoint is saved by
  ciwl_only, exactly; the graft and warm-start runs read that run."""
  ciwl = coopetition.get_config("ciwl_only")
  assert set(coopetition.GRAFT_SOURCES) | set(coopetition.WARM_SOURCES) == set(ciwl.ckpt.at)
  assert 9_750_016 in ciwl.ckpt.at and max(ciwl.ckpt.at) <= ciwl.total_sequences
  graft = coopetition.get_config("ciwl_graft")
  assert (graft.graft.workdir, graft.graft.mode, graft.graft.layer) == ("runs/ciwl_only", "out", 0)
  assert graft.train.relabel == "pairs" and graft.total_sequences == 64_000_000
  warm = coopetition.get_config("ciwl_warm")
  assert warm.warm_start.workdir == "runs/ciwl_only" and warm.train.burstiness == 1
  assert warm.total_sequences >= max(coopetition.WARM_SOURCES) + 32_000_000


def test_variants_combine_left_to_right_and_unknown_ones_are_named():
  both = coopetition.get_config("mq,sinpe")
  assert both.train.match_query_and_distractors and both.model.positions == "sinusoidal"
  later_wins = coopetition.get_config("sinpe,rope")
  assert later_wins.model.positions == "rope"
  assert transience_l2.get_config("squared,mlp").optim.l2_on == "mlp"
  with pytest.raises(UserError, match="unknown variant 'nope'"):
    coopetition.get_config("mq,nope")


@pytest.mark.parametrize("variant", sorted(transience.VARIANTS))
def test_transience_variants_validate(variant):
  c = transience.get_config(variant)
  config_lib.validate(c)
  depth, horizon = {"screen": (12, 1_000_000), "depth3": (3, 10_000_000)}.get(
      variant, (12, 1_600_000_000))
  assert (c.model.depth, c.model.mlp_ratio) == (depth, 4)
  assert c.optim.lr == 3e-4
  assert c.total_sequences == horizon
  if variant == "omniglot":  # the image task: its own blocks, no classifier's
    assert not {"train", "clamp"} & set(c) and set(c.evals) == {"names"}
    assert set(c.model) == {"depth", "d_model", "n_heads", "mlp_ratio", "pos_timescale"}
    return
  assert (c.train.context_len, c.train.burstiness, c.train.distractor) == (8, 3, True)
  assert c.model.positions == "sinusoidal"
  b2 = probes.eval_spec("b2_train_eval", c)
  assert (b2.burstiness, b2.n_rest) == (2, 4)
  assert probes.eval_spec("icl", c).burstiness == 4
  assert probes.eval_spec("train_eval", c) == probes.eval_spec("train_dist", c)
  data = (c.data.rank, c.data.subclusters, c.data.subcluster_spread, c.data.relu_features)
  assert data == (8, 2, 1.7, True)  # the 12-layer runs' own calibrated features


def test_the_depth3_presets_are_the_screen_at_3_layers_and_its_l2_population():
  """transience.py:depth3 is the documented CPU regime (the screen at 3
  layers, to 10 M, evaluated every 200 k); transience_l2.py:depth3 is that
  run with four members: full L2 at 1e-4 and 1e-3, MLP-only and
  attention-only at 1e-4."""
  depth3 = transience.get_config("depth3")
  assert changed_fields(depth3, transience.get_config("screen")) == {
      "model.depth": 3, "total_sequences": 10_000_000, "eval_every": 200_000}
  l2 = transience_l2.get_config("depth3")
  assert changed_fields(l2, depth3) == {"population": l2.population}
  zero = dict(l2=0.0, l2_mlp=0.0, l2_attention=0.0)
  assert [{k: v for k, v in m.hyper.items() if k != "lr"}
          for m in config_lib.members(l2)] == [
              dict(zero, l2=1e-4), dict(zero, l2=1e-3), dict(zero, l2_mlp=1e-4),
              dict(zero, l2_attention=1e-4)]
  config_lib.validate(l2)


def test_the_coopetition_runs_keep_their_features_and_the_transience_runs_theirs():
  coop, l2 = coopetition.get_config(), transience_l2.get_config()
  assert (coop.data.rank, coop.data.spread, coop.data.isotropic_noise) == (16, 0.7, 0.1)
  assert (coop.data.subclusters, coop.data.relu_features) == (1, False)
  for c in (l2, transience.get_config()):  # written out, not the shared dict
    assert (c.data.rank, c.data.spread, c.data.isotropic_noise, c.data.relu_features,
            c.data.subclusters, c.data.subcluster_spread) == (8, 0.15, 0.0, True, 2, 1.7)


def test_the_calibrated_features_reach_the_table_the_run_trains_on():
  """load_table on the transience config (shrunk) is the generator called
  with the calibration written out, and not the uncalibrated table."""
  from icl_transience.proj.transience import sources  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  c = transience.get_config()
  c.data.update(n_classes=24, n_exemplars=4, dim=32)
  table = np.asarray(sources.load_table(c.data))
  seed = c.data.dataset_seed
  expected = sources.synthetic_table(seed, 24, 4, 32, 8, 0.15, 0.0, relu=True,
                                     subclusters=2, subcluster_spread=1.7)
  np.testing.assert_array_equal(table, np.asarray(expected))
  plain = sources.synthetic_table(seed, 24, 4, 32, 8, 0.15, 0.0)
  assert not np.allclose(table, np.asarray(plain))
  assert (table >= 0).all() and (np.asarray(plain) < 0).any()
  # the three fields the calibration leaves at their defaults reach it too
  c.data.update(feature_scale=2.0, feature_shift=0.5, transform_spread=0.3)
  np.testing.assert_array_equal(
      np.asarray(sources.load_table(c.data)),
      np.asarray(sources.synthetic_table(
          seed, 24, 4, 32, 8, 0.15, 0.0, transform_spread=0.3, relu=True, shift=0.5,
          scale=2.0, subclusters=2, subcluster_spread=1.7)))


@pytest.mark.parametrize("variant", sorted(set(transience_l2.VARIANTS) - {"depth3"}))
def test_l2_sweep_is_one_population(variant):
  c = transience_l2.get_config(variant)
  config_lib.validate(c)
  assert [m.l2 for m in config_lib.members(c)] == [0, 1e-5, 3e-5, 1e-4, 3e-4]
  assert c.optim.l2_on == (variant if variant in ("mlp", "attention", "embedder")
                           else "all")
  assert c.optim.l2_form == ("squared" if variant == "squared" else "norm")


def test_a_project_config_carries_its_own_blocks_and_old_runs_get_their_defaults(tmp_path):
  lds_run = lds_recall.get_config("smoke")
  assert "lds" in lds_run and not {"data", "train", "evals"} & set(lds_run)
  assert {"data", "train", "evals"} <= set(smoke.get_config())
  # a run written before lds.eval_batch and evals.batch_size existed
  for name, c, block, field in (("lds", lds_run, "lds", "eval_batch"),
                                ("smoke", smoke.get_config(), "evals", "batch_size")):
    written = json.loads(c.to_json())
    del written[block][field]
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(written))
    loaded = config_lib.load_run_config(str(tmp_path / name))
    assert loaded[block][field] == tasks.blocks(c)[block][field]


def test_an_old_lds_run_with_the_classifier_blocks_resumes(tmp_path):
  """Before the package split every task's config.json carried the
  classifier's data / train / evals blocks, and before each task owned its
  model block, the shared model fields (positions, ...); such a run still
  resumes."""
  c = lds_recall.get_config("smoke")
  written = json.loads(c.to_json())
  written.update({k: json.loads(v.to_json()) for k, v in
                  classifier_config.blocks(c).items() if k != "model"})
  written["model"].update(positions="learned", pos_timescale=30.0,
                          attention_bias=False)
  (tmp_path / "config.json").write_text(json.dumps(written))
  loaded = config_lib.load_run_config(str(tmp_path))
  assert not {"data", "train", "evals"} & set(loaded)
  assert set(loaded.model) == set(c.model) and "positions" not in loaded.model
  loop.save_config(c, str(tmp_path))  # the resume check: no field differs


def test_an_old_omniglot_run_resumes_as_the_omniglot_task(tmp_path):
  """Omniglot runs were written as task 'classify' with data.source
  'omniglot'; they load, and resume, as the omniglot task. A classifier
  config that asks for the images is told where they went, in one line."""
  c = transience.get_config("omniglot")
  assert tasks.task_name(c) == "omniglot"
  # as they were written: the classifier's blocks and its model fields too
  written = json.loads(transience.get_config().to_json())
  written["data"]["source"] = "omniglot"
  written["omniglot"] = dict(json.loads(c.to_json())["omniglot"],
                             evaluators=["no_support_zipfian", "fewshot_holdout"])
  written["optim"] = json.loads(c.to_json())["optim"]
  (tmp_path / "config.json").write_text(json.dumps(written))
  loaded = config_lib.load_run_config(str(tmp_path))
  assert loaded.task == "omniglot" and "omniglot" in loaded
  assert not {"train", "clamp"} & set(loaded) and "positions" not in loaded.model
  assert list(loaded.evals.names) == list(c.evals.names)  # the field moved
  assert "evaluators" not in loaded.omniglot
  loop.save_config(c, str(tmp_path))  # the resume check: no field differs
  plain = transience.get_config()
  plain.data.source = "omniglot"
  with pytest.raises(UserError, match=r"^data.source: the Omniglot images are "
                     r"the omniglot task: set task=omniglot"):
    config_lib.validate(plain)


def test_a_task_names_its_own_groups_resumable_fields_and_curves():
  """What the core asks of a task comes from the task's entry: an unknown
  group or grafting where the task has none is one line."""
  lds_run = lds_recall.get_config("smoke")
  spec = tasks.spec(lds_run)
  assert spec.l2_groups["embedder"] == ("read_in", "positions")
  assert "lds.eval_batch" in spec.resumable and not spec.grafts
  needles = [c.evaluator for c in tasks.curves(lds_run)][1:]
  assert needles and all(n.startswith("needle_h") for n in needles)
  lds_run.graft.mode = "in"
  with pytest.raises(UserError, match="^graft.mode: the lds task does not graft$"):
    config_lib.validate(lds_run)
  c = smoke.get_config()
  c.optim.l2_on = "decoder"
  with pytest.raises(UserError, match="^optim.l2_on: choose all, mlp, attention, embedder$"):
    config_lib.validate(c)
  c.task = "nope"
  with pytest.raises(UserError, match="^task: unknown 'nope' "):
    config_lib.validate(c)


def test_population_takes_the_seed_alias_that_grid_takes():
  c = smoke.get_config()
  c.population = "seed=1; init_seed=2, lr=0.1"
  assert [(m.name, m.init_seed) for m in config_lib.members(c)] == [
      ("init_seed1", 1), ("init_seed2_lr0.1", 2)]
  c.population = "seed=1; init_seed=1"
  with pytest.raises(UserError, match="^population: two members are identical$"):
    config_lib.members(c)


def test_a_task_that_cannot_load_is_one_line(monkeypatch):
  monkeypatch.setitem(tasks.TASKS, "elsewhere", "no_such_package.task:SPEC")
  c = smoke.get_config()
  c.task = "elsewhere"
  with pytest.raises(UserError, match=r"^task: cannot load 'elsewhere' from "
                     r"no_such_package.task \(No module named"):
    tasks.spec(c)


def test_each_task_owns_its_model_block():
  """A config starts from its task and holds only the model fields that
  task's model reads: no task carries the classifier's positions unless
  its model has them."""
  shared = {"depth", "d_model", "n_heads", "mlp_ratio"}
  own = {"classify": {"max_len", "positions", "pos_timescale", "attention_bias"},
         "induction_heads": {"max_len", "positions", "pos_timescale", "attention_bias"},
         "omniglot": {"pos_timescale"}, "lds": {"max_len", "remat"},
         "dictionary": {"max_len"}, "plateau_authors": {"max_len"},
         "plateau": {"max_len", "encoder_channels", "encoder_readout"}}
  for name, fields in own.items():
    assert set(config_lib.for_task(name).model) == shared | fields, name
  assert "model" not in config_lib.for_task("hidden_direction")  # a Dense layer
  assert "model" not in config_lib.base_config()
