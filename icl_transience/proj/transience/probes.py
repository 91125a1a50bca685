"""The classifier's evaluators: name -> sequence spec; query metrics.

A registered evaluator is fn(standard, train) -> its spec, from the standard
set and the run's training distribution (both on the eval classes and
exemplars). Its fixed set is evals.n_sequences sequences of that spec drawn
once from the eval seed (Singh et al. 2025), stored as indices; features are
gathered at evaluation time. Its metrics are the query metrics below.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from icl_transience import evaluators
from icl_transience.errors import UserError
from icl_transience.proj.transience import classifier_config
from icl_transience.proj.transience import sequences
from icl_transience.proj.transience import sources

EVALUATORS: dict[str, Callable] = {}
METRICS = ("acc", "in_context_acc", "out_context_acc", "loss", "prob",
           "in_context_prob", "out_context_prob", "use_context_prob")


def register(name: str):
  def wrap(fn):
    EVALUATORS[name] = fn
    return fn
  return wrap


@register("train_eval")
def _train_eval(standard: sequences.SequenceSpec, _train) -> sequences.SequenceSpec:
  """The standard set, the same for every variant of a run (Singh et al.
  2025 evaluate every 2-layer run on burstiness 1 + a distractor):
  evals.standard_burstiness query items, as many distractors."""
  return standard


@register("b2_train_eval")
def _b2_train_eval(standard, _train):
  """The standard set with burstiness 2 (12-layer runs, K = 8)."""
  return dataclasses.replace(standard, burstiness=2)


@register("train_dist")
def _train_dist(_standard, train):
  """The run's own training distribution (its variant's sequence type)."""
  return train


@register("icl")
def _icl(standard, _train):
  """Two classes labelled 0/1 in random order: needs ICL."""
  return dataclasses.replace(standard, burstiness=standard.context_len // 2,
                             distractor=True, relabel="01")


@register("flip_icl")
def _flip(standard, _train):
  """Query-class items show the distractor's label: ICL -> 1, CIWL -> 0."""
  return dataclasses.replace(standard, burstiness=standard.context_len // 2,
                             distractor=True, relabel="flip")


@register("pairs_icl")
def _pairs(standard, _train):
  """As flip_icl, but the two classes show a random pair of trained labels
  (almost never their own): ICL on trained classes without the in-weights
  pull, so flip_icl below pairs_icl measures that pull."""
  return dataclasses.replace(standard, burstiness=standard.context_len // 2,
                             distractor=True, relabel="pairs",
                             fs_relabel=standard.n_classes)


@register("iwl_copy_avail")
def _ciwl(standard, _train):
  """No query-class items; the query's label is put on one context item."""
  return dataclasses.replace(standard, burstiness=0, no_support=True,
                             unique_rest=True, assign_query_label_random=True)


@register("pure_iwl")
def _pure_iwl(standard, _train):
  """Query class and label absent from context: only in-weights recall works."""
  return dataclasses.replace(standard, burstiness=0, no_support=True,
                             unique_rest=True)


def eval_spec(name: str, c) -> sequences.SequenceSpec:
  """The evaluator's spec: uniform over eval classes and eval exemplars, on
  the training context length; every evaluator but train_dist starts from
  the standard set (evals.standard_burstiness + a distractor), so a variant's
  training data (e.g. ciwl_only) changes none of them."""
  train = dataclasses.replace(
      classifier_config.train_spec(c), relabel="none", fs_relabel=0,
      assign_query_label_random=False, match_query_and_distractors=False,
      zipf_exponent=0.0, n_classes=c.evals.n_classes,
      exemplars=tuple(c.evals.exemplars))
  standard = dataclasses.replace(
      train, burstiness=c.evals.get("standard_burstiness", 1), distractor=True,
      no_support=False, unique_rest=False)
  return EVALUATORS[name](standard, train)


def validate(c):
  """The evaluators' fields (config block `evals`; their names are checked
  by run_evaluators); one line naming the field."""
  shape = sources.source_shape(c.data)
  for name in evaluators.select(EVALUATORS, c.evals.names, "evals.names"):
    classifier_config.check_spec(eval_spec(name, c), f"evals.{name}", shape)
  if not (c.evals.n_sequences > 0 and c.evals.batch_size > 0 and
          c.evals.n_sequences % c.evals.batch_size == 0):
    raise UserError("evals.batch_size: must divide evals.n_sequences")


def run_evaluators(c, apply_fn, with_target: bool = False) -> dict:
  """{name: evaluators.Evaluator} of the evaluators evals.names picks:
  each one's fixed set of sequences and the query metrics of apply_fn."""
  metrics = set_metrics(apply_fn, c.data.n_classes, c.evals.batch_size,
                        with_target)
  chosen = evaluators.select(EVALUATORS, c.evals.names, "evals.names")
  return {name: evaluators.Evaluator(fixed_set(name, c), metrics)
          for name in chosen}


def fixed_set(name: str, c) -> "SequenceSet":
  """key -> the evaluator's evals.n_sequences sequences (as indices)."""
  return SequenceSet(eval_spec(name, c), c.evals.n_sequences)


@dataclasses.dataclass(frozen=True)
class SequenceSet:
  """key -> n sequences of spec; a value (equal specs, equal sets), so every
  run in a process compiles each evaluator's sampler once."""
  spec: sequences.SequenceSpec
  n: int

  def __call__(self, key) -> sequences.Sequences:
    return sequences.sample_sequences(key, self.spec, self.n)


def query_metrics(logits, labels, target) -> dict[str, jax.Array]:
  """Per-sequence metrics at the query (icl-dynamics definitions).

  "In context" = the set of context labels; in_context_* restrict the
  prediction to that set, out_context_* to its complement. Computed from the
  K context logits, so the full-vocabulary softmax is taken only once.
  """
  rows = jnp.arange(logits.shape[0])[:, None]
  k = labels.shape[-1]
  earlier = jnp.tril(jnp.ones((k, k), bool), -1)
  repeated = jnp.any((labels[:, :, None] == labels[:, None, :]) & earlier, -1)
  ctx_logits = jnp.where(repeated, -jnp.inf, logits[rows, labels])  # unique labels
  target_logit = jnp.take_along_axis(logits, target[:, None], -1)[:, 0]
  target_in_context = jnp.any(labels == target[:, None], -1)
  lse = jax.nn.logsumexp(logits, -1)
  lse_in = jax.nn.logsumexp(ctx_logits, -1)
  out_logits = logits.at[rows, labels].set(-jnp.inf)
  lse_out = jax.nn.logsumexp(out_logits, -1)
  in_pick = labels[rows[:, 0], jnp.argmax(ctx_logits, -1)]
  as_float = lambda x: x.astype(jnp.float32)
  return {
      "acc": as_float(jnp.argmax(logits, -1) == target),
      "in_context_acc": as_float(in_pick == target),
      "out_context_acc": as_float(jnp.argmax(out_logits, -1) == target),
      "loss": lse - target_logit,
      "prob": jnp.exp(target_logit - lse),
      "in_context_prob": jnp.where(target_in_context,
                                   jnp.exp(target_logit - lse_in), 0.0),
      "out_context_prob": jnp.where(target_in_context, 0.0,
                                    jnp.exp(target_logit - lse_out)),
      "use_context_prob": jnp.exp(lse_in - lse),
  }


def set_metrics(apply_fn, n_classes: int, batch_size: int,
                with_target: bool = False):
  """(weights, table, fixed set) -> {metric: mean} for one member, the set
  batch_size sequences a pass; with_target: apply_fn also takes the query
  targets (a clamp)."""

  def evaluate_set(params, table, seqs: sequences.Sequences):
    n = seqs.target.shape[0]
    chunks = jax.tree.map(
        lambda x: x.reshape((n // batch_size, batch_size) + x.shape[1:]), seqs)

    def one_chunk(chunk):
      feats = sources.gather_features(table, chunk.classes, chunk.exemplars,
                                      n_classes)
      logits = (apply_fn(params, feats, chunk.labels, chunk.target) if with_target
                else apply_fn(params, feats, chunk.labels))
      return query_metrics(logits, chunk.labels, chunk.target)

    per_seq = jax.lax.map(one_chunk, chunks)
    return {k: jnp.mean(v) for k, v in per_seq.items()}

  return evaluate_set
