"""Progress off a terminal: a background run's log shows its progress."""
import logging

from icl_transience.train import progress


def _lines(caplog):
  return [r.getMessage() for r in caplog.records if " of 100 (" in r.getMessage()]


def test_off_a_terminal_progress_is_log_lines_of_step_rate_and_time_left(caplog):
  with caplog.at_level(logging.INFO):
    with progress.bar(total=100, initial=20, enabled=True, period=0.0) as bar:
      bar.update(30)
      bar.update(0)  # nothing done: no line
      assert bar.n == 50
  (line,) = _lines(caplog)
  assert line.startswith("step 50 of 100 (50%, ")
  assert "steps/s" in line and line.endswith(" left)")


def test_progress_lines_wait_for_their_period_and_come_only_from_process_0(caplog):
  with caplog.at_level(logging.INFO):
    with progress.bar(total=100, initial=0, enabled=True, period=3600.0) as bar:
      bar.update(10)
    with progress.bar(total=100, initial=0, enabled=False, period=0.0) as bar:
      bar.update(10)
  assert not _lines(caplog)
