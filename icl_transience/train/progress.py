"""The training progress bar, with log lines printed above it.

On a terminal, absl log lines written while the bar is shown go through
tqdm.write (the bar is cleared, the line printed, the bar redrawn), so the
two never share a line. Elsewhere (a pipe, a file: a background run's log)
there is no bar; instead a log line tells the step, the rate and the time
left every few minutes, so a log shows progress between evaluations.
"""
import contextlib
import datetime
import io
import sys
import time

import tqdm
from absl import logging


class _AboveBar(io.TextIOBase):
  """A text stream that writes through tqdm.write, above the bars."""

  def write(self, text):
    tqdm.tqdm.write(text, file=sys.stderr, end="")
    return len(text)

  def flush(self):
    sys.stderr.flush()


class _LogLines:
  """The bar off a terminal: a log line every `period` seconds of updates."""

  def __init__(self, total: int, initial: int, period: float):
    self.total, self.n, self.period = total, initial, period
    self._since, self._start = time.monotonic(), initial

  def update(self, n: int):
    self.n += n
    now = time.monotonic()
    if n and now - self._since >= self.period:
      rate = (self.n - self._start) / max(now - self._since, 1e-9)
      left = datetime.timedelta(seconds=round((self.total - self.n) / max(rate, 1e-9)))
      logging.info("step %d of %d (%.0f%%, %.1f steps/s, %s left)", self.n,
                   self.total, 100 * self.n / self.total, rate, left)
      self._since, self._start = now, self.n

  def set_postfix(self, *args, **kwargs):
    del args, kwargs  # the evaluation's own log line shows these


@contextlib.contextmanager
def bar(total: int, initial: int, enabled: bool, period: float = 300.0):
  """A tqdm bar of optimizer steps on a terminal, else log lines every
  `period` seconds (none where not `enabled`: processes other than 0)."""
  if enabled and not sys.stderr.isatty():
    yield _LogLines(total, initial, period)
    return
  progress = tqdm.tqdm(total=total, initial=initial, unit="step",
                       dynamic_ncols=True, smoothing=0.1, disable=not enabled)
  handler = logging.get_absl_handler().python_handler
  to_terminal = not progress.disable and handler.stream is sys.stderr
  old = handler.setStream(_AboveBar()) if to_terminal else None
  try:
    yield progress
  finally:
    if old is not None:
      handler.setStream(old)
    progress.close()
