"""A tiny CPU config for tests and a first look (seconds to run).

  python main.py --config=configs/smoke.py --workdir=/tmp/smoke
"""
from icl_transience.proj.transience import classifier_config


def get_config():
  c = classifier_config.coopetition_config()
  c.data.n_classes = 40
  c.data.n_exemplars = 6
  c.data.dim = 16
  c.data.rank = 4
  c.train.n_classes = 32
  c.train.exemplars = (0, 6)
  c.evals.n_classes = 16
  c.evals.exemplars = (0, 3)
  c.evals.n_sequences = 64
  c.evals.batch_size = 32
  c.model.d_model = 16
  c.model.n_heads = 2
  c.optim.lr = 1e-3
  c.batch_size = 8
  c.steps_per_call = 10
  c.total_sequences = 800     # 100 steps
  c.eval_every = 400
  c.ckpt.every = 400
  return c
