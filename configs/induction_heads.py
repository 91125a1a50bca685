"""What needs to go right for an induction head? (Singh et al., ICML 2024).

The main run (Sec. 2; the authors' flags): a 2-layer attention-only
transformer (d 64, 8 heads, RoPE, attention biases) on 50 training classes
x 1 exemplar, two context pairs with label pairs relabelled from 5 labels
(8 training pairs, 2 held out), loss on the query only, Adam 1e-5, batch 32,
1 M sequences, init seed 5.

  python main.py --config=configs/induction_heads.py --workdir=runs/ih
  python -m icl_transience.report --workdir=runs/ih

--config.init_seed picks another seed. Evaluations every 4,800 sequences
(the authors': 5,000; ours lie on the fused-step grid).
"""
from icl_transience import config

VARIANTS = {"": {}}


def ih_config():
  c = config.base_config()
  c.task = "induction_heads"
  from icl_transience import tasks  # pylint: disable=g-import-not-at-top
  c.update(tasks.blocks(c))
  return config.override(c, {
      "init_seed": 5, "data_seed": 0, "eval_seed": 1, "batch_size": 32,
      "total_sequences": 1_000_000, "eval_every": 4_800, "steps_per_call": 25,
      "ckpt.every": 200_000,
      "model.depth": 2, "model.d_model": 64, "model.n_heads": 8,
      "model.mlp_ratio": 0, "model.positions": "rope",
      "model.pos_timescale": 10_000.0, "model.attention_bias": True,
      "optim.lr": 1e-5,
  })


def get_config(variant: str = ""):
  return config.with_variants(ih_config(), variant, VARIANTS)
