"""The weights probe of Fu et al.'s code, and our two variants of it.

One linear layer d -> n_factors x max_values reads the residual stream after
block `block` at every item position and is trained jointly (the mean over
factors of the cross-entropies) in one pass of Adam over training
sequences, then scored on held-out test sequences. The stream is made
context-free three ways:
  pass   every attention sub-layer returns its LayerNorm'd input (the
         authors' probe)
  a      every attention output zeroed (ours)
  b      each item alone at position 0 (ours)
"""
import jax
import jax.numpy as jnp
import optax

VARIANTS = {"pass": "pass", "a": "zero", "b": "alone"}


def features(model, params, items, labels, variant: str, block: int) -> jax.Array:
  """(B, L, d) stream after block index `block` at the item positions."""
  if VARIANTS[variant] == "alone":
    b, length = items.shape[:2]
    flat = items.reshape((b * length, 1) + items.shape[2:])
    streams = model.apply({"params": params}, flat,
                          jnp.zeros((b * length, 0), jnp.int32),
                          stop_after=block)["streams"]
    return streams[block + 1][:, 0].reshape(b, length, -1)
  streams = model.apply({"params": params}, items, labels,
                        attention=VARIANTS[variant], stop_after=block)["streams"]
  return streams[block + 1][:, 0::2]


def fit_and_score(featurise, train_batches, test_batches, d: int, n_factors: int,
                  n_values: int, lr: float) -> jax.Array:
  """(n_factors,) held-out accuracy of the joint probe. featurise(batch) ->
  (features (n, d), factors (n, n_factors)); *_batches: stacked batches."""
  optimizer = optax.adam(lr)

  def logits(probe, x):
    return (x @ probe["w"] + probe["b"]).reshape(-1, n_factors, n_values)

  def loss(probe, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits(probe, x),
                                                           y).mean()

  def step(carry, batch):
    probe, opt_state = carry
    x, y = featurise(batch)
    grads = jax.grad(loss)(probe, jax.lax.stop_gradient(x), y)
    updates, opt_state = optimizer.update(grads, opt_state, probe)
    return (optax.apply_updates(probe, updates), opt_state), None

  probe = {"w": jnp.zeros((d, n_factors * n_values)),
           "b": jnp.zeros((n_factors * n_values,))}
  (probe, _), _ = jax.lax.scan(step, (probe, optimizer.init(probe)), train_batches)

  def score(batch):
    x, y = featurise(batch)
    return (jnp.argmax(logits(probe, x), -1) == y).mean(0)

  return jax.lax.map(score, test_batches).mean(0)
