"""Transience of emergent ICL (Singh et al. 2023), fixed-feature 12-layer run.

Singh et al. 2023, appendix: 12 layers, d 64, 8 heads, MLP x4,
sinusoidal positions (timescale 30); K = 8 context pairs, burstiness 3 +
distractor + 2 others; 12,800 classes x 20 exemplars of the embedded
synthetic features (the "reordered" layout), calibrated for this model:
rank 8, non-negative (ReLU) features, each class 2 groups of near-duplicate
exemplars (subclusters 2, subcluster_spread 1.7, spread 0.15, no isotropic
noise), so ICL comes first as in the paper (proj/transience/NOTES.md, "Fifth
screening"); the 2-layer coopetition configs keep their own setting.
Adam 3e-4 constant, batch 32;
the six fixed-feature evaluators (1,000 sequences on all 12,800 classes and
20 exemplars) every 500 k sequences; checkpoints every 40 M. The paper's
horizon is 1.6 B sequences.

  python main.py --config=configs/transience.py --workdir=runs/transience
  python main.py --config=configs/transience.py:c1600 --workdir=runs/t1600
  python -m icl_transience.report --workdir=runs/transience

Variants: c1600 (the "norotate" 1,600 classes, init seed 2023), mq (matched
exemplars: persistent ICL), omniglot (below), depth3 (the decay within a CPU
budget: this config at 3 layers instead of 12, to 10 M sequences, evaluated
every 200 k with pairs_icl; about 30 steps/s on one core), screen (a short look at a
dataset setting: 1 M sequences, evaluated every 100 k, with pairs_icl
beside the six, e.g.
`configs/transience.py:screen --config.data.spread=1.0`; 22-52 min on 2
CPU cores (9-24 steps/s, depending on the machine), then
`python -m icl_transience.report --workdir=...`).

The Chan et al. image pipeline (Chan et al. 2022, as run by Singh et al. 2023: Omniglot
drawings through a jointly trained ResNet, 12,800 training classes, bursty
2-way 3-shot sequences, holdout ICL and no-support IWL evaluators):

  python main.py --config=configs/transience.py:omniglot \
      --config.data.omniglot_dir=DIR --workdir=runs/chan   # zip archives
  python main.py --config=configs/transience.py:omniglot \
      --workdir=runs/chan          # prepared TFDS omniglot (default data_dir;
                                   # --config.data.tfds_dir=DIR for another)

`task=omniglot` is the image task (proj/transience/omniglot/task.py), whose
fields live in the `omniglot` block; it shares model depth/width/heads/MLP
ratio/timescale, batch 32, Adam 3e-4 and the 1.6 B-sequence (5e7-step)
horizon with the fixed-feature run. The optimizer schedule is the one
difference outside that block: the trainer reads it from `optim`, so the
variant also sets Chan's warm-up + inverse-sqrt decay, and Chan's
evaluators (`evals.names`); with only --config.task=omniglot add
--config.optim.warmup_steps=4000 --config.optim.schedule=inverse_sqrt and
"--config.evals.names=('no_support_zipfian','fewshot_holdout')".
"""
from icl_transience import config
from icl_transience.proj.transience.omniglot import task as omniglot
from icl_transience.proj.transience import classifier_config

# The embedded features calibrated for the 12-layer run: ICL first, as in the
# paper's fixed-feature run (flip 0.857, '01' ICL 0.97 at 0.5 M; proj/transience/NOTES.md).
CALIBRATED_DATA = {"data.rank": 8, "data.spread": 0.15, "data.isotropic_noise": 0.0,
                   "data.relu_features": True, "data.subclusters": 2,
                   "data.subcluster_spread": 1.7}
# the authors' six fixed-feature evaluators
EVALUATORS = ("b2_train_eval", "train_eval", "iwl_copy_avail", "flip_icl", "icl",
              "pure_iwl")
# a short look at a setting; + pairs_icl: flip_icl below it is the in-weights
# pull (proj/transience/NOTES.md)
SCREEN = {"total_sequences": 1_000_000, "eval_every": 100_000,
          "ckpt.every": 500_000, "evals.names": EVALUATORS + ("pairs_icl",)}
VARIANTS = {
    "": {},
    "c1600": {"train.n_classes": 1600, "evals.n_classes": 1600,
              "init_seed": 2023},
    "mq": {"train.match_query_and_distractors": True},
    "screen": SCREEN,
    # the CPU regime of the decay: the screen at 3 layers, not 12 (ICL
    # first, then flip falls 0.1 below its peak within an hour of one core)
    "depth3": {**SCREEN, "model.depth": 3, "total_sequences": 10_000_000,
               "eval_every": 200_000},
    # lr(t) = 3e-4 min(t / 4000, sqrt(4000 / t)) (Chan et al. 2022)
    "omniglot": {"task": "omniglot", "data.source": "omniglot",
                 "evals.names": ("no_support_zipfian", "fewshot_holdout"),
                 "optim.warmup_steps": 4000,
                 "optim.schedule": "inverse_sqrt"},
}


def transience_config():
  c = classifier_config.coopetition_config()
  return config.override(c, {
      "init_seed": 6, "data_seed": 2, "eval_seed": 1,
      "total_sequences": 1_600_000_000, "eval_every": 500_000,
      "train.context_len": 8, "train.burstiness": 3,
      "evals.names": EVALUATORS,
      "evals.standard_burstiness": 3,
      "evals.n_sequences": 1000, "evals.n_classes": 12_800,
      "evals.exemplars": (0, 20),
      "model.depth": 12, "model.mlp_ratio": 4, "model.positions": "sinusoidal",
      "optim.lr": 3e-4, "ckpt.every": 40_000_000,
      **CALIBRATED_DATA,
      "omniglot": omniglot.default_config(),
  })


def get_config(variant: str = ""):
  return config.with_variants(transience_config(), variant, VARIANTS)
