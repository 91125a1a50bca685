"""Evaluators: specs, fixed sets, and the query metrics."""
import jax
import jax.numpy as jnp
import numpy as np

from icl_transience.proj.transience.sequences import BURSTY
from icl_transience import evaluators
from icl_transience.proj.transience import probes
from icl_transience.proj.transience import classifier_config

from helpers import smoke_config
import coopetition  # pylint: disable=wrong-import-order  (configs/, via helpers)


def reference_metrics(logits, labels, target):
  """The authors' mask formulation, computed naively."""
  n_out = logits.shape[-1]
  mask = jnp.max(jax.nn.one_hot(labels, n_out), axis=-2)
  onehot = jax.nn.one_hot(target, n_out)
  probs = jax.nn.softmax(logits)
  inside = mask * logits - (1 - mask) * 1e20
  outside = (1 - mask) * logits - mask * 1e20
  acc = lambda x: (jnp.argmax(x, -1) == target).astype(jnp.float32)
  prob = lambda x: jnp.sum(jax.nn.softmax(x) * onehot, -1)
  return {"acc": acc(logits), "in_context_acc": acc(inside),
          "out_context_acc": acc(outside),
          "loss": -jnp.sum(jax.nn.log_softmax(logits) * onehot, -1),
          "prob": prob(logits), "in_context_prob": prob(inside),
          "out_context_prob": prob(outside),
          "use_context_prob": jnp.sum(probs * mask, -1)}


def test_query_metrics_match_the_mask_formulation():
  key = jax.random.PRNGKey(0)
  logits = 3 * jax.random.normal(key, (400, 13))
  labels = jax.random.randint(jax.random.PRNGKey(1), (400, 3), 0, 13)
  labels = labels.at[:50, 1].set(labels[:50, 0])  # repeated context labels
  target = jax.random.randint(jax.random.PRNGKey(2), (400,), 0, 13)
  target = target.at[100:300].set(labels[100:300, 2])  # target in context
  fast = probes.query_metrics(logits, labels, target)
  slow = reference_metrics(logits, labels, target)
  assert set(fast) == set(probes.METRICS)
  for name in probes.METRICS:
    np.testing.assert_allclose(fast[name], slow[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)


def test_eval_specs_follow_the_paper_table():
  c = classifier_config.coopetition_config()
  spec = {n: probes.eval_spec(n, c) for n in c.evals.names}
  for s in spec.values():
    assert s.n_classes == 1600 and s.exemplars == (0, 5) and s.zipf_exponent == 0
  assert spec["icl"].relabel == "01" and spec["flip_icl"].relabel == "flip"
  assert spec["train_eval"].relabel == "none" and spec["train_eval"].burstiness == 1
  ciwl, iwl = spec["iwl_copy_avail"], spec["pure_iwl"]
  assert ciwl.assign_query_label_random and not iwl.assign_query_label_random
  for s in (ciwl, iwl):
    assert s.burstiness == 0 and s.no_support and s.unique_rest


def test_train_eval_is_the_standard_set_whatever_the_variant_trains_on():
  """Singh et al. 2025 evaluate every 2-layer run on burstiness 1 + a
  distractor; ciwl_only trains on no-support sequences."""
  main, ciwl_only = coopetition.get_config(), coopetition.get_config("ciwl_only")
  for name in ("train_eval", "icl", "flip_icl", "iwl_copy_avail", "pure_iwl"):
    assert probes.eval_spec(name, ciwl_only) == probes.eval_spec(name, main)
  standard = probes.eval_spec("train_eval", ciwl_only)
  assert (standard.burstiness, standard.distractor, standard.no_support) == (1, True, False)
  own = probes.eval_spec("train_dist", ciwl_only)
  assert (own.burstiness, own.no_support, own.unique_rest) == (0, True, True)
  assert probes.eval_spec("train_dist", main) == probes.eval_spec("train_eval", main)


def fixed_sets(c):
  """The fixed sets of the evaluators c.evals.names picks, as a run builds them."""
  return evaluators.fixed_sets(probes.run_evaluators(c, None), c.eval_seed)


def test_eval_sets_follow_the_eval_seed():
  c = smoke_config()
  a = fixed_sets(c)
  c.eval_seed = 7
  other = fixed_sets(c)
  for name in c.evals.names:
    assert (np.asarray(a[name].classes) != np.asarray(other[name].classes)).any()
    assert np.asarray(a[name].classes).max() < c.evals.n_classes
  flip = a["flip_icl"]
  assert ((np.asarray(flip.item_types) == BURSTY).sum(1) == 1).all()


def test_pairs_icl_shows_the_flip_sequences_under_a_random_trained_label_pair():
  c = smoke_config(**{"evals.names": ("flip_icl", "pairs_icl")})
  sets = fixed_sets(c)
  pairs, flip = sets["pairs_icl"], sets["flip_icl"]
  spec = probes.eval_spec("pairs_icl", c)
  assert (spec.burstiness, spec.fs_relabel) == (c.train.context_len // 2, c.evals.n_classes)
  types, labels = np.asarray(pairs.item_types)[:, :-1], np.asarray(pairs.labels)
  target = np.asarray(pairs.target)
  query_items, distractor_items = types == BURSTY, ~(types == BURSTY)
  # every query-class item shows the target, every distractor item one other label
  assert (np.where(query_items, labels, target[:, None]) == target[:, None]).all()
  other = np.where(distractor_items, labels, -1).max(1)
  assert (np.where(distractor_items, labels, other[:, None]) == other[:, None]).all()
  assert (other != target).all() and labels.max() < c.evals.n_classes
  # the labels are drawn, not the classes' own: most targets are not the query's
  assert (target != np.asarray(pairs.classes)[:, -1]).mean() > 0.8
  assert np.asarray(flip.item_types).shape == np.asarray(pairs.item_types).shape
