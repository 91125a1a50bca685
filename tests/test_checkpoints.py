"""Checkpoint schedules in sequences, on the fused-call grid."""
import ml_collections

from icl_transience.train import checkpoints


def cfg(every=0, at=(), log_spaced=0):
  return ml_collections.ConfigDict(dict(every=every, at=at, log_spaced=log_spaced))


def test_every_explicit_and_log_spaced():
  # batch 32, 10 steps per call, 1000 steps in all
  assert checkpoints.schedule(cfg(every=3200), 32, 10, 1000) == list(range(100, 1001, 100))
  # explicit points land exactly (the call before them is shortened)
  assert checkpoints.schedule(cfg(at=(320, 3296)), 32, 10, 1000) == [10, 103, 1000]
  logs = checkpoints.schedule(cfg(log_spaced=4), 32, 10, 1000)
  assert logs == [10, 50, 220, 1000]  # 10, 46.4, 215.4, 1000 rounded up to the grid
  assert checkpoints.schedule(cfg(), 32, 10, 1000) == [1000]  # always the end
