"""L2 regularisation keeps ICL (Singh et al. 2023): the
fixed-feature transience run as one population over lambda.

  python main.py --config=configs/transience_l2.py --workdir=runs/l2
  python main.py --config=configs/transience_l2.py:squared --workdir=runs/l2sq
  python main.py --config=configs/transience_l2.py:mlp --workdir=runs/l2mlp
  python -m icl_transience.report --workdir=runs/l2

Members: lambda in {0, 1e-5, 3e-5, 1e-4, 3e-4}. Penalty form (variant):
'' = lambda * sum of unsquared norms (icl-dynamics), squared = lambda * sum
||w||^2 / 2. Selective weight decay (variants mlp, attention, embedder):
the penalty on that parameter group only.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transience  # pylint: disable=wrong-import-position  (configs/transience.py)

LAMBDAS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4)
VARIANTS = {
    "": {},
    "squared": {"optim.l2_form": "squared"},
    "mlp": {"optim.l2_on": "mlp"},
    "attention": {"optim.l2_on": "attention"},
    "embedder": {"optim.l2_on": "embedder"},
}


def get_config(variant: str = ""):
  c = transience.config.with_variants(transience.transience_config(), variant,
                                      VARIANTS)
  c.population = "; ".join(f"l2={lam:g}" for lam in LAMBDAS)
  return c
