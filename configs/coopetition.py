"""Strategy coopetition (Singh et al. 2025): the main run and its variants.

Main run (Fig. 1b): 2-layer attention-only transformer, d 64, 8 heads, learned
positions; K = 2 context pairs, burstiness 1 + distractor; 12,800 classes x 20
exemplars of the embedded synthetic features; Adam 1e-5, batch 32; five
evaluators every 100 k sequences.

  python main.py --config=configs/coopetition.py --workdir=runs/coop
  python main.py --config=configs/coopetition.py:mq --workdir=runs/mq

Variants (Singh et al. 2025, appendix), with the paper's horizons; they
combine left to right, e.g. configs/coopetition.py:mq,rope:
  icl_only    labels: a random pair of all 12,800 labels per sequence (64 M)
  icl_only_graft  icl_only with layer 2, final LN and unembedding frozen from
              the main run at 20 M (Fig. 4; --config.graft.workdir=<main run>)
  ciwl_only   no query-class items; the query label on one context item
              (64 M, checkpoints at every window source below)
  ciwl_graft  icl_only with layer 2 frozen from a ciwl_only checkpoint
              (Fig. 5b window; --config.graft.sequences=<source>)
  ciwl_warm   the main run warm-started from a ciwl_only checkpoint
              (Fig. 5c window; --config.warm_start.sequences=<source>)
  mq          matched exemplars (persistent ICL)
  sinpe, rope sinusoidal / rotary positions, timescale 30 (64 M)
  depth1      one layer (64 M)
  mlp         MLP blocks (ratio 4), 320 M
  c12800_ex5, c1600_ex20, c1600_ex5   data sizes (100 M)
  mlp_c12800_ex5, mlp_c1600_ex20, mlp_c1600_ex5   MLP blocks on those data
              sizes (320 M)
  disallow_pt_head_attn_on_labels   throughout training, no layer-1 head
              attends from a label token to its exemplar (64 M)
  nol0h147    throughout training, layer-1 heads 1, 4, 7 (0-indexed, the
              previous-token heads) ablated (64 M)
  l2          one population over the L2 coefficient (the authors' unsquared
              norm), lambda in {0, 1e-5, 1e-4, 1e-3}, to 10 M: does L2 keep
              the transient flip ICL of the 2-layer model? (beyond both papers)
  l2_strong   the same to 10 M with lambda in {1e-2, 1e-1} (where L2 starts to
              over-regularise)
  mlp_l2      the mlp variant as one population: no decay, and 1e-4 on the
              MLP group, the attention group, everything (Singh et al. 2023's
              selective decay, per member), to 10 M
"""
from icl_transience import config
from icl_transience.proj.transience import classifier_config

# The window experiments (Singh et al. 2025, Sec. 5): the ciwl_only
# checkpoints that layer-2 grafts (Fig. 5b) and warm starts (Fig. 5c) start
# from. 9,750,016 is the authors' "9.75 M" checkpoint.
GRAFT_SOURCES = (4_000_000, 8_000_000, 9_750_016, 9_800_000, 15_000_000,
                 20_000_000, 25_000_000, 31_500_000, 32_000_000, 48_000_000,
                 64_000_000)
WARM_SOURCES = (4_000_000, 5_000_000, 6_000_000, 7_000_000, 8_000_000,
                9_000_000, 10_000_000, 12_000_000, 16_000_000)
L2_LAMBDAS = (0.0, 1e-5, 1e-4, 1e-3)
MLP = {"model.mlp_ratio": 4, "total_sequences": 320_000_000}
ICL_ONLY = {"train.relabel": "pairs", "train.fs_relabel": 12_800,
            "total_sequences": 64_000_000}
VARIANTS = {
    "": {},
    "icl_only": ICL_ONLY,
    "icl_only_graft": {**ICL_ONLY, "graft.mode": "out", "graft.layer": 0,
                       "graft.workdir": "runs/coop",
                       "graft.sequences": 20_000_000},
    "ciwl_only": {"train.burstiness": 0, "train.no_support": True,
                  "train.unique_rest": True,
                  "train.assign_query_label_random": True,
                  "total_sequences": 64_000_000,
                  "ckpt.at": tuple(sorted(set(GRAFT_SOURCES + WARM_SOURCES)))},
    # one run per source: python -m icl_transience.sweep ... --grid=
    # 'graft.sequences=...' (README), then proj.transience.windows
    "ciwl_graft": {**ICL_ONLY, "graft.mode": "out", "graft.layer": 0,
                   "graft.workdir": "runs/ciwl_only",
                   "graft.sequences": 9_800_000},
    # 32 M sequences after the latest source (16 M); the warm start keeps
    # the source's sequence count
    "ciwl_warm": {"warm_start.workdir": "runs/ciwl_only",
                  "warm_start.sequences": 4_000_000,
                  "total_sequences": 48_000_000},
    "mq": {"train.match_query_and_distractors": True},
    # the authors' sweep runs these three to 64 M sequences
    "sinpe": {"model.positions": "sinusoidal", "total_sequences": 64_000_000},
    "rope": {"model.positions": "rope", "total_sequences": 64_000_000},
    "depth1": {"model.depth": 1, "total_sequences": 64_000_000},
    "mlp": MLP,
    "c12800_ex5": {"train.exemplars": (0, 5), "total_sequences": 100_000_000},
    "c1600_ex20": {"train.n_classes": 1600, "total_sequences": 100_000_000},
    "c1600_ex5": {"train.n_classes": 1600, "train.exemplars": (0, 5),
                  "total_sequences": 100_000_000},
    "mlp_c12800_ex5": {**MLP, "train.exemplars": (0, 5)},
    "mlp_c1600_ex20": {**MLP, "train.n_classes": 1600},
    "mlp_c1600_ex5": {**MLP, "train.n_classes": 1600, "train.exemplars": (0, 5)},
    # the clamps hold in every forward pass, training and evaluation
    "disallow_pt_head_attn_on_labels": {"clamp.block_label_attention": "0:all",
                                        "total_sequences": 64_000_000},
    "nol0h147": {"clamp.ablate_heads": "0:1,4,7", "total_sequences": 64_000_000},
    "l2": {"population": "; ".join(f"l2={lam:g}" for lam in L2_LAMBDAS),
           "total_sequences": 10_000_000, "ckpt.every": 500_000},
    "l2_strong": {"population": "l2=1e-2; l2=1e-1", "total_sequences": 10_000_000,
                  "ckpt.every": 500_000},
    "mlp_l2": {**MLP, "population": "l2=0; l2_mlp=1e-4; l2_attention=1e-4; l2=1e-4",
               "total_sequences": 10_000_000, "ckpt.every": 500_000},
}


def get_config(variant: str = ""):
  return config.with_variants(classifier_config.coopetition_config(), variant, VARIANTS)
