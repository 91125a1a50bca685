"""Named evaluators: the one way every task evaluates a model.

An evaluator is a name, a fixed set (built once from the run's eval seed,
so every evaluation of every checkpoint sees the same data) and the metrics
computed on that set. A task's run object lists the evaluators its run
computes, in order, as `Task.evaluators` ({name: Evaluator}); it builds
them from its table of known evaluators and its names field (`select`).
The trainer, the checkpoint-sweep job and every tool reach evaluation only
through `fixed_sets` and `evaluate` below, so an evaluator a task adds is
trained with, swept, summarised, plotted and reported like every other.
"""
from typing import Any, Callable, Mapping, NamedTuple

import jax

from icl_transience.errors import UserError


class Evaluator(NamedTuple):
  """fixed_set(key) -> the set (a pytree of arrays), where key =
  fold_in(PRNGKey(eval_seed), the evaluator's position in the run's list);
  metrics(weights, consts, fixed_set) -> {metric: scalar}, jittable, for
  one member (weights and consts as in Task.loss and Task.constants)."""
  fixed_set: Callable[[Any], Any]
  metrics: Callable[[Any, Any, Any], Mapping[str, Any]]


def select(known: Mapping[str, Evaluator], names, field: str) -> dict:
  """The evaluators `names` picks from `known`, in that order (every one of
  `known` when names is empty); one line naming `field` for an unknown or
  repeated name."""
  names = tuple(names) or tuple(known)
  for name in names:
    if name not in known:
      raise UserError(f"{field}: unknown evaluator '{name}' "
                      f"(choose from {', '.join(known)})")
  if len(set(names)) != len(names):
    raise UserError(f"{field}: an evaluator is named twice ({', '.join(names)})")
  return {name: known[name] for name in names}


def fixed_sets(evaluators: Mapping[str, Evaluator], eval_seed: int,
               sharding=None) -> dict:
  """{name: fixed set}, deterministic in eval_seed, placed with `sharding`
  (which may span processes)."""
  key = jax.random.PRNGKey(eval_seed)
  build = jax.jit(_build, static_argnums=0, out_shardings=sharding)
  return {name: build(ev.fixed_set, jax.random.fold_in(key, i))
          for i, (name, ev) in enumerate(evaluators.items())}


def _build(fixed_set, key):
  # fixed_set is static: one that compares equal to an earlier one (a
  # hashable value, e.g. probes.SequenceSet) reuses its compiled program
  return fixed_set(key)


def evaluate(evaluators: Mapping[str, Evaluator], weights, consts, sets) -> dict:
  """{evaluator: {metric: scalar}} of one member; jittable."""
  return {name: dict(ev.metrics(weights, consts, sets[name]))
          for name, ev in evaluators.items()}
