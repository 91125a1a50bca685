"""The pseudo-inverse (least-squares) baseline of Daniels et al. 2025 (JAX).

For the system the current segment's label names, U_hat = [x_1 .. x_t]
[x_0 .. x_{t-1}]^+ from that system's own earlier observations and
y_hat = U_hat x_t; with fewer than two observations the prediction is 0. A
resumed system continues its history (perfect recall of which system a label
means). Only the last `window` observations enter U_hat: without noise any
n + 1 consecutive states of an orthogonal system pin U down, so window = n + 1
(= 6) gives the full-history estimate. `pseudo_inverse_errors` sets the error
of a system that has already shown >= recall_after observations to 0.
"""
import jax
import jax.numpy as jnp

from icl_transience.proj.lds_recall import lds
from icl_transience.errors import UserError

WINDOW = 6          # observations entering U_hat (state_dim + 1)
RECALL_AFTER = 6    # observations after which the error counts as 0


def _extrapolate(history, seen) -> jax.Array:
  """U_hat x_last from the newest min(seen, window) rows of history."""
  window = history.shape[0]
  valid = jnp.arange(window - 1) >= window - jnp.minimum(seen, window)
  before = jnp.where(valid[:, None], history[:-1], 0.0).T
  after = jnp.where(valid[:, None], history[1:], 0.0).T
  coefficients = jnp.dot(jnp.linalg.pinv(before), history[-1],
                         precision=lds.HIGHEST)
  return jnp.dot(after, coefficients, precision=lds.HIGHEST)


def _scan_one(tokens, spec: lds.LDSSpec, window: int):
  """(L, n) predictions and (L,) observations already shown by the current
  segment's system, for one (L, token_dim) token sequence."""
  n_labels = spec.max_systems

  def step(carry, token):
    history, counts, current = carry
    opens = token[0:2 * n_labels:2] > 0
    ends = jnp.any(token[1:2 * n_labels:2] > 0) | (token[spec.start_index] > 0)
    current = jnp.where(jnp.any(opens), jnp.argmax(opens),
                        jnp.where(ends, -1, current))
    known = current >= 0
    label = jnp.maximum(current, 0)
    push = known & (token[spec.observation_index] > 0)
    state = token[None, spec.state_start:]
    pushed = jnp.concatenate([history[label, 1:], state])
    history = history.at[label].set(jnp.where(push, pushed, history[label]))
    counts = counts.at[label].add(push.astype(jnp.int32))
    seen = jnp.where(known, counts[label], 0)
    prediction = jnp.where(known, _extrapolate(history[label], seen), 0.0)
    return (history, counts, current), (prediction, seen)

  start = (jnp.zeros((n_labels, window, spec.state_dim)),
           jnp.zeros((n_labels,), jnp.int32), jnp.array(-1, jnp.int32))
  return jax.lax.scan(step, start, tokens)[1]


def _scan(tokens, spec: lds.LDSSpec, window: int):
  if window < 2:
    raise UserError(f"pseudo-inverse window must be >= 2, got {window}")
  flat = tokens.reshape((-1,) + tokens.shape[-2:])
  predictions, seen = jax.vmap(lambda t: _scan_one(t, spec, window))(flat)
  return (predictions.reshape(tokens.shape[:-1] + (spec.state_dim,)),
          seen.reshape(tokens.shape[:-1]))


def pseudo_inverse_predict(tokens, spec: lds.LDSSpec = lds.LDSSpec(),
                           window: int = WINDOW) -> jax.Array:
  """(..., L, n) predictions; row r predicts the state of row r + 1."""
  return _scan(tokens, spec, window)[0]


def zero_predict(tokens, spec: lds.LDSSpec = lds.LDSSpec()) -> jax.Array:
  """The zero predictor (error = |y|^2)."""
  return jnp.zeros(tokens.shape[:-1] + (spec.state_dim,))


def pseudo_inverse_errors(tokens, spec: lds.LDSSpec = lds.LDSSpec(),
                          window: int = WINDOW,
                          recall_after: int = RECALL_AFTER) -> jax.Array:
  """(..., L - 1) errors at each prediction row: 0 where the next token is no
  observation or its system has shown >= recall_after observations."""
  predictions, seen = _scan(tokens, spec, window)
  errors = lds.position_errors(predictions[..., :-1, :],
                               lds.split_tokens(spec, tokens))
  return jnp.where(seen[..., :-1] >= recall_after, 0.0, errors)
