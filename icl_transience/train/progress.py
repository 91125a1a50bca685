"""The training progress bar, with log lines printed above it.

On a terminal, absl log lines written while the bar is shown go through
tqdm.write (the bar is cleared, the line printed, the bar redrawn), so the
two never share a line. Elsewhere (a pipe, a file) the bar is off and log
lines are plain.
"""
import contextlib
import io
import sys

import tqdm
from absl import logging


class _AboveBar(io.TextIOBase):
  """A text stream that writes through tqdm.write, above the bars."""

  def write(self, text):
    tqdm.tqdm.write(text, file=sys.stderr, end="")
    return len(text)

  def flush(self):
    sys.stderr.flush()


@contextlib.contextmanager
def bar(total: int, initial: int, enabled: bool):
  """A tqdm bar of optimizer steps (None: on when stderr is a terminal)."""
  progress = tqdm.tqdm(total=total, initial=initial, unit="step",
                       dynamic_ncols=True, smoothing=0.1,
                       disable=None if enabled else True)
  handler = logging.get_absl_handler().python_handler
  to_terminal = not progress.disable and handler.stream is sys.stderr
  old = handler.setStream(_AboveBar()) if to_terminal else None
  try:
    yield progress
  finally:
    if old is not None:
      handler.setStream(old)
    progress.close()
