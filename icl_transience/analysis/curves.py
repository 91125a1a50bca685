"""Measures of a learning curve (host side, numpy; a curve is training steps
and metric values), shared by the projects' reports:
  plateau_length  first step at which the curve exceeds
                  chance + fraction * (final - chance)  (fraction 0.5, our choice)
  crossing_step   first step at which the curve exceeds a fixed threshold
                  (e.g. ICL accuracy 0.5, or 0.05 above chance)
  final_value     mean of the last finite values
  peak_and_decay  the peak, and the first step after it at which the curve
                  has fallen `drop` below it (the transience detector's decay)
"""
import numpy as np

from icl_transience.errors import UserError


def _curve(steps, values) -> tuple[np.ndarray, np.ndarray]:
  steps = np.asarray(steps, np.float64)
  values = np.asarray(values, np.float64)
  if steps.ndim != 1 or steps.shape != values.shape or steps.size == 0:
    raise UserError(f"curve: steps and values must be equal-length non-empty "
                    f"1-D arrays, got shapes {steps.shape} and {values.shape}")
  if np.any(np.diff(steps) <= 0):
    raise UserError("curve: steps must be strictly increasing")
  return steps, values


def crossing_step(steps, values, threshold: float) -> float:
  """First step whose value is > threshold; NaN if none (NaN values never cross)."""
  steps, values = _curve(steps, values)
  above = np.flatnonzero(values > threshold)
  return float(steps[above[0]]) if above.size else float("nan")


def final_value(values, window: int = 1) -> float:
  """Mean of the last `window` finite values of a curve."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  if window < 1 or values.size == 0:
    raise UserError(f"curve: need window >= 1 and a finite value, got "
                    f"window={window}, {values.size} finite values")
  return float(values[-window:].mean())


def plateau_length(steps, values, chance: float, fraction: float = 0.5,
                   final_window: int = 1, min_rise: float = 0.05) -> float:
  """First step at which values exceed chance + fraction * (final - chance).

  NaN when the curve never leaves chance (final - chance < min_rise). A curve
  already above the threshold at its first point has plateau length steps[0].
  """
  steps, values = _curve(steps, values)
  if not 0.0 < fraction < 1.0:
    raise UserError(f"plateau.fraction: must be in (0, 1), got {fraction}")
  final = final_value(values, final_window)
  if final - chance < min_rise:
    return float("nan")
  return crossing_step(steps, values, chance + fraction * (final - chance))


def peak_and_decay(steps, values, drop: float) -> tuple[float, float, float]:
  """(peak, its first step, the first later step whose value is <= peak -
  drop; NaN if the curve has not fallen that far by its last step)."""
  steps, values = _curve(steps, values)
  if not drop > 0:
    raise UserError(f"curve: drop must be > 0, got {drop}")
  top = int(np.nanargmax(values))
  peak = float(values[top])
  fallen = np.flatnonzero(values[top:] <= peak - drop + 1e-9)  # inclusive
  return peak, float(steps[top]), (float(steps[top + fallen[0]]) if fallen.size
                                   else float("nan"))
