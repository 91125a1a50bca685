"""L2 regularisation keeps ICL (Singh et al. 2023): the
fixed-feature transience run as one population over lambda.

  python main.py --config=configs/transience_l2.py --workdir=runs/l2
  python main.py --config=configs/transience_l2.py:squared --workdir=runs/l2sq
  python main.py --config=configs/transience_l2.py:mlp --workdir=runs/l2mlp
  python main.py --config=configs/transience_l2.py:depth3 --workdir=runs/l2_depth3
  python -m icl_transience.report --workdir=runs/l2

Members: lambda in {0, 1e-5, 3e-5, 1e-4, 3e-4}. Penalty form (variant):
'' = lambda * sum of unsquared norms (icl-dynamics), squared = lambda * sum
||w||^2 / 2. Selective weight decay (variants mlp, attention, embedder):
the penalty on that parameter group only.
depth3: the 3-layer CPU regime of transience.py:depth3 with the members
l2=1e-4, l2=1e-3, l2_mlp=1e-4 and l2_attention=1e-4 (per-member group
strengths, so selective and full decay train in one program).
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
    # the 3-layer CPU regime (transience.py:depth3, whose run is lambda 0):
    # L2 at 1e-4 and 1e-3, and 1e-4 on the MLPs alone and on attention alone
    "depth3": {**transience.VARIANTS["depth3"],
               "population": "l2=1e-4; l2=1e-3; l2_mlp=1e-4; l2_attention=1e-4"},
}


def get_config(variant: str = ""):
  c = transience.transience_config()
  c.population = "; ".join(f"l2={lam:g}" for lam in LAMBDAS)
  return transience.config.with_variants(c, variant, VARIANTS)
