"""Linear probes of Fu et al. (the plateau's length and the other curve
measures are in analysis/curves.py).

Linear probes (JAX, jittable) that decode a categorical target (a factor
value, or the hidden factor) from representations:
  fit_softmax_probe  Fu et al.'s probe: zero-initialised softmax regression,
                     Adam (lr 1e-3), one epoch of shuffled minibatches
  fit_ridge_probe    closed-form ridge regression onto one-hot targets
  factor_probe_accuracies  one probe per factor, vmapped; the weights-probe
                     score is their mean
  standardise        features scaled by the probe training set's statistics
  context_probe_classes  classes of the context probe's target
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from icl_transience.errors import UserError

_MASKED_LOGIT = -1e9


class LinearProbe(NamedTuple):
  weights: jax.Array  # (dim, n_classes)
  bias: jax.Array     # (n_classes,)


def probe_logits(probe: LinearProbe, features, class_mask=None) -> jax.Array:
  """(n, n_classes) logits; classes outside `class_mask` are never chosen."""
  logits = features @ probe.weights + probe.bias
  if class_mask is not None:
    logits = jnp.where(class_mask, logits, _MASKED_LOGIT)
  return logits


def standardise(train, test):
  """Both sets scaled by the training set's per-dimension mean and std."""
  mean = train.mean(axis=-2, keepdims=True)
  std = train.std(axis=-2, keepdims=True) + 1e-6
  return (train - mean) / std, (test - mean) / std


def context_probe_classes(plateau_config) -> int:
  """The hidden factors, or the labels with context_probe_target 'label'
  (runs written before that field existed decode the factor)."""
  if plateau_config.get("context_probe_target", "factor") == "label":
    return plateau_config.label_vocab
  return len(plateau_config.hidden_factors)


def probe_accuracy(probe: LinearProbe, features, labels,
                   class_mask=None) -> jax.Array:
  predicted = jnp.argmax(probe_logits(probe, features, class_mask), axis=-1)
  return jnp.mean(predicted == labels)


def fit_ridge_probe(features, labels, n_classes: int,
                    l2: float = 1e-3) -> LinearProbe:
  """Least squares onto one-hot targets with penalty l2 * |W|^2 per example."""
  features = features.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, n_classes, dtype=jnp.float32)
  mean_x, mean_y = features.mean(0), targets.mean(0)
  centred = features - mean_x
  n, dim = features.shape
  gram = centred.T @ centred / n + l2 * jnp.eye(dim, dtype=jnp.float32)
  weights = jnp.linalg.solve(gram, centred.T @ (targets - mean_y) / n)
  return LinearProbe(weights, mean_y - mean_x @ weights)


def fit_softmax_probe(key, features, labels, n_classes: int, class_mask=None,
                      epochs: int = 1, batch_size: int = 32,
                      learning_rate: float = 1e-3) -> LinearProbe:
  """Softmax regression from zero, Adam, `epochs` passes of shuffled batches.

  `key` only shuffles; the remainder of n / batch_size is dropped per epoch.
  """
  n, dim = features.shape
  steps_per_epoch = n // batch_size
  if steps_per_epoch == 0:
    raise UserError(f"probe.batch_size: {batch_size} exceeds the {n} probe "
                    "examples")
  features = features.astype(jnp.float32)
  order = jnp.concatenate([
      jax.random.permutation(k, n)[:steps_per_epoch * batch_size]
      for k in jax.random.split(key, epochs)])
  batches = order.reshape(epochs * steps_per_epoch, batch_size)
  probe = LinearProbe(jnp.zeros((dim, n_classes)), jnp.zeros((n_classes,)))
  optimizer = optax.adam(learning_rate)

  def loss(probe, index):
    logits = probe_logits(probe, features[index], class_mask)
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[index, None], -1))

  def step(carry, index):
    probe, opt_state = carry
    grads = jax.grad(loss)(probe, index)
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(probe, updates), opt_state), None

  (probe, _), _ = jax.lax.scan(step, (probe, optimizer.init(probe)), batches)
  return probe


def factor_probe_accuracies(key, train_features, train_factors, eval_features,
                            eval_factors, factor_sizes: tuple[int, ...],
                            method: str = "softmax", **fit_kwargs) -> jax.Array:
  """(n_factors,) held-out accuracy of one linear probe per factor.

  Factors are decoded over max(factor_sizes) classes with the unused ones
  masked, so all probes train in one vmapped program. `fit_kwargs` go to
  fit_softmax_probe (epochs, batch_size, learning_rate) or fit_ridge_probe (l2).
  """
  n_classes = max(factor_sizes)
  class_masks = jnp.arange(n_classes) < jnp.asarray(factor_sizes)[:, None]
  keys = jax.random.split(key, len(factor_sizes))

  def one_factor(key, train_labels, eval_labels, class_mask):
    if method == "softmax":
      probe = fit_softmax_probe(key, train_features, train_labels, n_classes,
                                class_mask, **fit_kwargs)
    elif method == "ridge":
      probe = fit_ridge_probe(train_features, train_labels, n_classes,
                              **fit_kwargs)
    else:
      raise UserError(f"probe.method: unknown '{method}' (softmax or ridge)")
    return probe_accuracy(probe, eval_features, eval_labels, class_mask)

  return jax.vmap(one_factor)(keys, train_factors.T, eval_factors.T, class_masks)
