"""Strategy coopetition, main 2-layer run (Singh et al. 2025, Fig. 1b).

2-layer attention-only transformer, d 64, 8 heads, learned positions; K = 2
context pairs, burstiness 1 + distractor; 12,800 classes x 20 exemplars of
the embedded synthetic features; Adam 1e-5, batch 32; five evaluators every
100 k sequences.

  python main.py --config=configs/coopetition.py --workdir=runs/coop
"""
from icl_transience import config


def get_config():
  return config.base_config()
