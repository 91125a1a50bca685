"""What needs to go right for an induction head? (Singh et al., ICML 2024).

The main run (Sec. 2; the authors' flags): a 2-layer attention-only
transformer (d 64, 8 heads, RoPE, attention biases) on 50 training classes
x 1 exemplar, two context pairs with label pairs relabelled from 5 labels
(8 training pairs, 2 held out), loss on the query only, Adam 1e-5, batch 32,
1 M sequences, init seed 5. Evaluations every 4,800 sequences (the
authors': 5,000; ours lie on the fused-step grid).

  python main.py --config=configs/induction_heads.py --workdir=runs/ih
  python -m icl_transience.report --workdir=runs/ih

--config.init_seed picks another seed. Variants (combine with ','):
  seeds      init seeds 5-9 in one program (the spread of the ln 2 crossing)
  fig4b      one program: every layer-2 head alone (only_head 0-7) and all
  noclamp, pt, l1, match, copy, l1_copy
             Fig. 5b: the subcircuit clamps (layer-2 heads but 1:3 ablated,
             except in copy and l1_copy), 6e5 sequences (noclamp: checkpoints every 2e4
             for the eval-time progress measures, Fig. 10)
  classes100, classes200, labels10, labels15
             Fig. 6's data (100 / 200 training classes; 10 / 15 labels)
  long       Fig. 6's normal column: 2e6 sequences, layer-2 heads but 1:3
             ablated
  short      Fig. 6's clamp columns: 3e5 sequences
  pt_all     Fig. 8: all layer-1 heads clamped to previous-token
  fig15      one program: the match clamp on 1:3 at strength s = 1, .95, ..,
             .5, .4, .., 0 (no ablation), 6e5 sequences
  graft      Fig. 7: layer 1 and the embeddings of a trained run, frozen
             (--config.graft.workdir=RUN --config.graft.member=M), 8e5
"""
from icl_transience import config

REST_HEADS = "1:0,1,2,4,5,6,7"   # every layer-2 head but 1:3 (the strongest)
CLAMP_RUN = {"total_sequences": 600_000, "eval_every": 800, "ckpt.every": 600_000}
STRENGTHS = (1, .95, .9, .85, .8, .75, .7, .65, .6, .55, .5, .4, .3, .2, .1, 0)
VARIANTS = {
    "": {},
    "seeds": {"population": "; ".join(f"init_seed={s}" for s in range(5, 10))},
    "fig4b": {"population": "; ".join(f"only_head={h}" for h in range(-1, 8)),
              "ckpt.every": 1_000_000},
    "noclamp": {**CLAMP_RUN, "ih.ablate_heads": REST_HEADS, "ckpt.every": 20_000},
    "pt": {**CLAMP_RUN, "ih.ablate_heads": REST_HEADS, "ih.prev_token_heads": "0:2"},
    "l1": {**CLAMP_RUN, "ih.ablate_heads": REST_HEADS, "ih.perfect_layer1": True},
    "match": {**CLAMP_RUN, "ih.ablate_heads": REST_HEADS, "ih.induction_heads": "1:3"},
    "copy": {**CLAMP_RUN, "ih.copy_from_head": "1:3"},
    "l1_copy": {**CLAMP_RUN, "ih.perfect_layer1": True, "ih.copy_from_head": "1:3"},
    "classes100": {"ih.train_classes": 100, "data.n_classes": 200},
    "classes200": {"ih.train_classes": 200, "data.n_classes": 300},
    "labels10": {"ih.fs_relabel": 10, "ih.relabel_split": (36, 9, 0)},
    "labels15": {"ih.fs_relabel": 15, "ih.relabel_split": (84, 21, 0)},
    "long": {"total_sequences": 2_000_000, "ih.ablate_heads": REST_HEADS,
             "ckpt.every": 1_000_000},
    "short": {"total_sequences": 300_000, "ckpt.every": 300_000},
    "pt_all": {**CLAMP_RUN, "ih.ablate_heads": REST_HEADS, "ih.prev_token_heads": "0:all"},
    # with --config.graft.workdir=RUN (a trained run) [--config.graft.member=M]
    "graft": {"graft.mode": "in", "graft.layer": 0, "total_sequences": 800_000,
              "eval_every": 4_000, "ckpt.every": 800_000},
    "fig15": {**CLAMP_RUN, "ih.induction_heads": "1:3",
              "population": "; ".join(f"match_strength={s}" for s in STRENGTHS)},
}


def ih_config():
  c = config.for_task("induction_heads")
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
