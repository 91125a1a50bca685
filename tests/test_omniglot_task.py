"""The Chan et al. Omniglot task (proj/transience/omniglot/task.py) on the real Omniglot
subsets in ../shared/data/omniglot (relative to the repository root), with a
tiny model: batches, BatchNorm state in train / eval mode and over population
members, evaluators, and a run through the trainer that resumes exactly.
"""
import functools
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from helpers import assert_trees_equal, final_state
import transience  # pylint: disable=wrong-import-order  (configs/, via helpers)

from icl_transience import config as config_lib
from icl_transience import evaluators
from icl_transience import metrics_table
from icl_transience.proj.transience.omniglot import chan_sequences
from icl_transience.proj.transience.omniglot import data as omniglot
from icl_transience.proj.transience.omniglot import chan_transformer
from icl_transience.errors import UserError
from icl_transience.proj.transience.omniglot import task as task_lib
from icl_transience.train import loop

SHARED = Path(helpers.OMNIGLOT)
N_SMALL = 242  # characters of the two small subsets together
BATCH, CONTEXT, N_TRAIN = 4, 8, 16
EVALUATORS = ("no_support_zipfian", "fewshot_holdout")
METRICS = {"accuracy_query", "accuracy_closed", "loss"}
# The test programs are tiny; XLA's backend optimisations only lengthen their
# compilation.
quick_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_config(**overrides):
  """The omniglot variant at tiny widths (16 training classes, one ResNet
  group of d_model channels with one block, one transformer block); the
  images stay 105 x 105."""
  c = transience.get_config("omniglot")
  return config_lib.override(c, {
      "data.omniglot_dir": str(SHARED), "batch_size": BATCH,
      "steps_per_call": 2, "total_sequences": 16, "eval_every": 8,
      "ckpt.every": 8, "optim.lr": 1e-3, "optim.warmup_steps": 2,
      "model.depth": 1, "model.d_model": 8,
      "model.n_heads": 2, "omniglot.n_rare": N_TRAIN - 4,
      "omniglot.n_common": 4, "omniglot.eval_sequences": 8,
      "omniglot.eval_batch_size": 4, "omniglot.resnet_channels": (),
      "omniglot.resnet_blocks": (1,), "omniglot.resnet_strides": (2,),
      **overrides})


@pytest.fixture(scope="module", autouse=True)
def rbg_keys():
  """Every key of this module is an rbg key: XLA compiles the rbg PRNG much
  faster than threefry on CPU, and the task is PRNG-agnostic."""
  with jax.default_prng_impl("rbg"):
    yield


@pytest.fixture(scope="module")
def setup(rbg_keys, omniglot_subsets):  # pylint: disable=redefined-outer-name,unused-argument
  data = omniglot_subsets
  task = task_lib.OmniglotTask(tiny_config())
  task.validate(1)
  codes = jnp.asarray(task_lib.encode_images(data.images))
  task.n_characters = N_SMALL
  weights = quick_jit(task.init_weights)(jax.random.PRNGKey(0))
  sample = quick_jit(task.sample_batch)
  batches = [sample(jax.random.PRNGKey(seed), codes, {}, 0) for seed in (1, 2)]
  return dict(task=task, data=data, codes=codes, weights=weights,
              batches=batches)


def test_batches_are_bursty_sequences_of_the_loaders_images(setup):
  batch = jax.device_get(setup["batches"][0])
  assert batch["images"].shape == (BATCH, CONTEXT + 1, 105, 105, 1)
  assert batch["images"].dtype == np.float32
  assert batch["labels"].shape == (BATCH, CONTEXT)
  assert batch["target"].shape == (BATCH,)
  np.testing.assert_allclose(np.unique(batch["images"]), [0.0, 0.9999], atol=1e-6)
  # training labels; the query's label shows at least 3 times (its shots)
  assert 0 <= batch["labels"].min() and batch["labels"].max() < N_TRAIN
  assert ((batch["labels"] == batch["target"][:, None]).sum(1) >= 3).all()
  # uint8 storage: every augmented drawing decodes to the float32 pixels
  classes = jnp.arange(8 * N_SMALL, dtype=jnp.int32)[::7]
  exemplars = classes % 20
  np.testing.assert_allclose(
      task_lib.gather(setup["codes"], classes, exemplars),
      omniglot.gather_images(jnp.asarray(setup["data"].images), classes,
                             exemplars), rtol=0, atol=1e-6)
  with pytest.raises(UserError, match="data.omniglot_dir: .* not 8-bit"):
    task_lib.encode_images(np.full((1, 20, 3, 3), 0.5 / 255, np.float32))


def test_batch_statistics_per_member_in_train_mode(setup):
  """vmap over two members (as the trainer does): each member normalises over
  its own batch and gets the statistics of its own single call."""
  task, weights = setup["task"], setup["weights"]
  loss = lambda w, b: task.loss(w, b, {}, 0)
  members = jax.tree.map(lambda *x: jnp.stack(x), weights, weights)
  batches = jax.tree.map(lambda *x: jnp.stack(x), *setup["batches"])
  (values, (_, stats)), (value, (_, own)) = jax.device_get((
      quick_jit(jax.vmap(loss))(members, batches),
      quick_jit(loss)(weights, setup["batches"][1])))
  np.testing.assert_allclose(values[1], value, rtol=1e-5)
  before = jax.device_get(weights["model_state"])
  for old, new, single in zip(jax.tree.leaves(before), jax.tree.leaves(stats),
                              jax.tree.leaves(own), strict=True):
    np.testing.assert_allclose(new[1], single, rtol=1e-5, atol=1e-6)
    # decay 0.9 from mean 0 / variance 1: every running average moves, and
    # differently for the two batches
    assert not np.allclose(new[0], old) and not np.allclose(new[0], new[1])


def test_evaluation_reads_running_averages(setup):
  task, weights, codes = setup["task"], setup["weights"], setup["codes"]
  sets = evaluators.fixed_sets(task.evaluators, task.c.eval_seed)
  assert set(sets) == set(EVALUATORS)
  assert (np.asarray(sets["fewshot_holdout"].labels) < 2).all()  # 0/1 labels
  evaluate = quick_jit(functools.partial(evaluators.evaluate, task.evaluators))
  first = jax.device_get(evaluate(weights, codes, sets))
  shifted = jax.tree.map(lambda s: s + 0.5, weights["model_state"])
  moved = evaluate(dict(weights, model_state=shifted), codes, sets)
  for name in EVALUATORS:
    assert set(first[name]) == METRICS
    assert first[name]["loss"] != moved[name]["loss"]
    # the chunked means equal the metrics of the whole set's query logits
    seqs = sets[name]
    images = task_lib.gather(codes, seqs.classes, seqs.exemplars)
    logits, _ = quick_jit(chan_transformer.apply_model, static_argnums=(0, 5))(
        task.model, weights["params"], weights["model_state"], images,
        seqs.labels, False)
    logits, target = np.asarray(logits), np.asarray(seqs.target)
    lo, hi = chan_sequences.closed_labels(task.spec(name, codes.shape[0]))
    assert hi - lo == (2 if name == "fewshot_holdout" else N_TRAIN)
    np.testing.assert_allclose(first[name]["accuracy_query"],
                               (logits.argmax(-1) == target).mean())
    np.testing.assert_allclose(first[name]["accuracy_closed"],
                               (logits[:, lo:hi].argmax(-1) + lo == target).mean())
    nll = jax.nn.logsumexp(logits, -1) - logits[np.arange(len(target)), target]
    np.testing.assert_allclose(first[name]["loss"], nll.mean(), rtol=1e-5)


def test_bad_fields_are_user_errors(setup, monkeypatch):
  for field, value, message in [
      ("evals.names", ("bursty",), "evals.names: unknown"),
      ("omniglot.fs_shots", 3, "omniglot.fs_shots"),
      ("omniglot.eval_batch_size", 3, "omniglot.eval_batch_size"),
      ("omniglot.p_bursty", 1.5, "omniglot.p_bursty"),
      ("data.omniglot_dir", str(SHARED / "nope"), "data.omniglot_dir: no such")]:
    with pytest.raises(UserError, match=message):
      config_lib.validate(tiny_config(**{field: value}))
  # Chan et al.'s 12,700 rare classes need all 1,623 characters
  monkeypatch.setattr(omniglot, "load_omniglot", lambda *_: setup["data"])
  task = task_lib.OmniglotTask(tiny_config(**{"omniglot.n_rare": 12_700}))
  with pytest.raises(UserError, match="omniglot.n_rare: .*at most n_rare=1852"):
    task.constants(None)


def test_training_run_logs_both_evaluators_and_resumes_exactly(
    setup, tmp_path, monkeypatch):
  monkeypatch.setattr(omniglot, "load_omniglot", lambda *_: setup["data"])
  # 2 steps of 2 sequences, evaluated and saved after each (XLA's CPU backend
  # runs convolution weight gradients slowly inside the trainer's lax.scan)
  c = tiny_config(batch_size=2, steps_per_call=1, total_sequences=4,
                  eval_every=2, **{"ckpt.every": 2})
  straight = str(tmp_path / "straight")
  loop.train(c, straight)
  rows = metrics_table.read(straight)
  logged = {(r["step"], r["evaluator"], r["metric"]) for r in rows}
  for step in (0, 1, 2):
    for name in EVALUATORS:
      assert {(step, name, m) for m in METRICS} <= logged
  assert all(np.isfinite(r["value"]) for r in rows)
  # the checkpoints hold params and BatchNorm statistics; both moved
  first, last = final_state(c, straight, step=0), final_state(c, straight)
  assert int(last["step"][0]) == 2
  for part in ("params", "model_state"):
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(last[part]))
    assert not any(np.array_equal(x, y) for x, y in zip(
        jax.tree.leaves(first[part]["embedder"]["stem_bn"]),
        jax.tree.leaves(last[part]["embedder"]["stem_bn"])))
  # resume from step 1 (drop the last checkpoint): the same final state
  resumed = str(tmp_path / "resumed")
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", f"{2:08d}"))
  loop.train(c, resumed)
  assert_trees_equal(final_state(c, resumed), last)
