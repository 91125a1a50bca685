"""Learning plateaus of Fu et al.: hidden-factor ICL on images.

Baseline (Fu et al.'s defaults): L = 48 (image, label) pairs, 15 labels, all
six factors hidden, 32 px procedural images; conv encoder + 8 pre-LN blocks,
d 256, 8 heads, MLP 4d, learned positions; Adam 1e-4 after a 1k-step linear
warm-up, clip 1.0, batch 128, 100k steps; evaluations and checkpoints every
1k steps.

  python main.py --config=configs/plateau.py --workdir=runs/plateau
  python main.py --config=configs/plateau.py:strategies --workdir=runs/strategies
  python -m icl_transience.report --workdir=runs/strategies

Variants:
  warmup        weights warm-up: D_fix for the first 5k steps (hyper.weights_warmup)
  mixed         25% D_fix sequences in every batch (hyper.fixed_fraction)
  weights_loss  + 0.1 x the six factor heads' CE on the encoder output
  onehot        factor one-hots instead of images (perfect weights component)
  noisy         pixel noise sigma 0.3 (a harder weights component)
  strategies    baseline + the three strategies as one population
  words         WordSelection stand-in: 512 word ids with 3 attributes of 8
  cpu           a 2-core CPU reproduction (a population of the four members of
                `strategies`, ~25 min): see CPU below
  cpu_onehot    the CPU problem on factor one-hots with one hidden factor (the
                floor hue; context probe on the label), W = 500, 5k steps: a
                baseline that leaves its plateau on 2 cores
  smoke         seconds; for tests
Fu et al.'s own setup, as their code runs it (task plateau_authors: frozen
768-d item embeddings through a linear read-in, 40 pairs, a pool of 20,000
maps, a fixed set of 100,000 sequences, GPT-2 12 x 128, Adam 1e-4, 46,920
steps), `authors[,variant...]`:
  python main.py --config=configs/plateau.py:authors --workdir=runs/fu
  python main.py --config=configs/plateau.py:authors \
      --config.plateau.embeddings=PATH/repre_vae.npz --workdir=runs/fu_vae
  authors,strategies  + the authors' context and weights extra losses and our
                      warm-up and mixed training, one population
  authors,fresh       an infinite fresh stream instead of the fixed set
  authors,dfix        a pool of one map (D_fix)
  authors,cpu         a 2-core CPU size whose baseline leaves its plateau
                      (6 factors of 4 values, the easiest stand-in, L = 16,
                      3 blocks of d 64): see the paper's README
  authors,smoke       seconds; for tests
Three seeds: --config.population='init_seed=1; init_seed=2; init_seed=3'.
Real Shapes3D: --config.plateau.source=shapes3d --config.plateau.shapes3d_dir=DIR
(a TFDS data_dir holding a prepared `shapes3d`).

CPU (variant cpu; knobs chosen for a plateau that ends within 8k steps of a
4-member population on 2 cores): 8 px images (supersample 2, noise 0.1) whose
only varying factors are the three hues (4 values each) and the shape;
scale and orientation are fixed (one value), so the renderer is cheap; the
hidden factor is the floor or the wall hue (chance 0.25), 4 labels, L = 16
(every value recurs ~4 times per context); 2 blocks, d 64, 4 heads, conv
16-32; Adam 3e-3 (the plateau shortens with lr) after 100 steps; batch 32;
8k steps, evaluations every 250; warm-up W scaled to 1000 steps. Smaller
probe sets (4096 / 1024 images, 1024 sequences, probe lr 3e-3).
"""
import ml_collections

from icl_transience import config

STRATEGIES = ("weights_warmup=0; weights_warmup=5000; fixed_fraction=0.25; "
              "weights_loss=0.1")


def plateau_config() -> ml_collections.ConfigDict:
  """The baseline D_rnd run of Fu et al."""
  c = config.for_task("plateau")
  c.num_devices = 0          # every device: the batch is large enough to split
  c.batch_size = 128
  c.total_sequences = 128 * 100_000        # 100k steps
  c.eval_every = 128 * 1000
  c.steps_per_call = 500
  c.ckpt.every = 128 * 1000

  c.model.depth = 8
  c.model.d_model = 256
  c.model.n_heads = 8
  c.model.mlp_ratio = 4
  c.model.max_len = 96                     # 2 L tokens
  c.model.encoder_channels = (32, 64, 128, 128)
  c.model.encoder_readout = "mean"         # mean over the 4x4 map | flatten it

  c.optim.lr = 1e-4
  c.optim.warmup_steps = 1000
  c.optim.clip_norm = 1.0
  c.optim.schedule = "constant"
  return c


CPU_STRATEGIES = ("weights_warmup=0; weights_warmup=1000; fixed_fraction=0.25; "
                  "weights_loss=0.1")
CPU = {
    "population": CPU_STRATEGIES,
    "batch_size": 32, "steps_per_call": 250, "total_sequences": 32 * 8000,
    "eval_every": 32 * 250, "ckpt.every": 32 * 2000,
    "model.depth": 2, "model.d_model": 64, "model.n_heads": 4,
    "model.max_len": 32, "model.encoder_channels": (16, 32),
    "model.encoder_readout": "flatten",
    "optim.lr": 3e-3, "optim.warmup_steps": 100,
    "plateau.image_size": 8, "plateau.noise_std": 0.1,
    "plateau.factor_sizes": (4, 4, 4, 1, 4, 1), "plateau.hidden_factors": (0, 1),
    "plateau.label_vocab": 4, "plateau.context_len": 16,
    "plateau.icl_min_position": 6, "plateau.context_probe_position": 12,
    "plateau.report_positions": (0, 2, 4, 8, 15),
    "plateau.icl_sequences": 512, "plateau.iwl_sequences": 256,
    "plateau.context_probe_train": 1024, "plateau.weights_probe_train": 4096,
    "plateau.weights_probe_test": 1024, "plateau.probe_lr": 3e-3,
}

# The CPU problem with factor one-hots and one hidden factor (the floor hue):
# the baseline leaves its plateau within the horizon on 2 cores.
CPU_ONEHOT = dict(
    CPU, population="weights_warmup=0; weights_warmup=500; fixed_fraction=0.25; "
                    "weights_loss=0.1",
    total_sequences=32 * 5000, **{
        "plateau.input": "onehot", "plateau.hidden_factors": (0,),
        "plateau.context_probe_target": "label"})

SMOKE = {
    "batch_size": 8, "steps_per_call": 10, "total_sequences": 8 * 40,
    "eval_every": 8 * 20, "ckpt.every": 8 * 20,
    "model.depth": 2, "model.d_model": 64, "model.n_heads": 2,
    "model.mlp_ratio": 1, "model.max_len": 16, "model.encoder_channels": (4, 4),
    "optim.lr": 1e-3, "optim.warmup_steps": 5,
    "plateau.input": "onehot", "plateau.context_len": 8,
    "plateau.factor_sizes": (4, 4, 4), "plateau.hidden_factors": (0, 1),
    "plateau.label_vocab": 4,
    "plateau.icl_min_position": 2, "plateau.report_positions": (0, 7),
    "plateau.context_probe_position": 6, "plateau.icl_sequences": 32,
    "plateau.iwl_sequences": 16, "plateau.context_probe_train": 64,
    "plateau.weights_probe_train": 128, "plateau.weights_probe_test": 64,
    "plateau.eval_batch_size": 16, "plateau.probe_method": "ridge",
    "plateau.probe_layers": (0,), "plateau.weights_probe_layer": 0,
}

VARIANTS = {
    "": {},
    "warmup": {"hyper.weights_warmup": 5000.0},
    "mixed": {"hyper.fixed_fraction": 0.25},
    "weights_loss": {"hyper.weights_loss": 0.1},
    "onehot": {"plateau.input": "onehot"},
    "noisy": {"plateau.noise_std": 0.3},
    "strategies": {"population": STRATEGIES},
    "words": {"plateau.input": "words", "plateau.factor_sizes": (8, 8, 8),
              "plateau.hidden_factors": (0, 1, 2), "plateau.label_vocab": 8},
    "cpu": CPU,
    "cpu_onehot": CPU_ONEHOT,
    "smoke": SMOKE,
}


def authors_config() -> ml_collections.ConfigDict:
  """Fu et al.'s Shapes3D run as their code trains it (frozen embeddings)."""
  c = config.for_task("plateau_authors")
  c.num_devices = 0
  c.batch_size = 128
  c.steps_per_call = 391                   # half an epoch
  c.eval_every = 128 * 782                 # an epoch: 782 batches of 128
  c.ckpt.every = 128 * 782
  c.total_sequences = 128 * 46_920         # 60 epochs
  c.model.depth = 12
  c.model.d_model = 128
  c.model.n_heads = 4
  c.model.mlp_ratio = 4
  c.model.max_len = 80
  c.optim.lr = 1e-4                        # constant; no warm-up, no clipping
  return c


AUTHORS_STRATEGIES = ("context_loss=0, weights_loss=0; context_loss=0.1; "
                      "weights_loss=0.1; weights_warmup=2000; fixed_fraction=0.25")
# A 2-core CPU size of the authors' setup on the stand-in (see the paper's
# README), whose baseline plateau ends within the horizon: six factors of 4
# values (4,096 images), the stand-in at its easiest (additive, noiseless),
# L = 16; 3 blocks of d 64, Adam 1e-3, batch 32, 20,000 training sequences,
# 16,000 steps evaluated every 250, smaller test and probe sets. Members: the
# baseline (weights_loss0), the authors' two extra losses and our mixed
# training.
AUTHORS_CPU = {
    "population": "weights_loss=0; context_loss=0.1; weights_loss=0.1; "
                  "fixed_fraction=0.25",
    "batch_size": 32, "steps_per_call": 250, "total_sequences": 32 * 16_000,
    "eval_every": 32 * 250, "ckpt.every": 32 * 1000,
    "model.depth": 3, "model.d_model": 64, "model.max_len": 32,
    "optim.lr": 1e-3,
    "plateau.factor_sizes": (4, 4, 4, 4, 4, 4), "plateau.context_len": 16,
    "plateau.icl_min_position": 8, "plateau.standin_entangle": 0.0,
    "plateau.standin_noise": 0.0,
    "plateau.train_sequences": 20_000, "plateau.test_sequences": 2048,
    "plateau.weights_probe_sequences": 2048, "plateau.weights_probe_test": 1024,
    "plateau.probe_batch_size": 32, "plateau.eval_batch_size": 256,
    "plateau.weights_probe_block": 1,
}
AUTHORS_SMOKE = {
    "batch_size": 8, "steps_per_call": 10, "total_sequences": 8 * 40,
    "eval_every": 8 * 20, "ckpt.every": 8 * 20,
    "model.depth": 2, "model.d_model": 32, "model.n_heads": 2,
    "model.mlp_ratio": 1, "model.max_len": 16,
    "plateau.item_dim": 24, "plateau.n_classes": 64,
    "plateau.extra_dims_start": 16, "plateau.context_len": 8,
    "plateau.factor_sizes": (4, 4, 10), "plateau.hidden_factors": (0, 1, 2),
    "plateau.n_maps": 6, "plateau.train_sequences": 64,
    "plateau.test_sequences": 32, "plateau.icl_min_position": 4,
    "plateau.weights_probe_block": 0, "plateau.weights_probe_sequences": 32,
    "plateau.weights_probe_test": 16, "plateau.probe_batch_size": 8,
    "plateau.eval_batch_size": 16,
}
AUTHORS_VARIANTS = {
    "": {},
    "strategies": {"population": AUTHORS_STRATEGIES},
    "fresh": {"plateau.train_sequences": 0},       # an infinite fresh stream
    "dfix": {"plateau.n_maps": 1},
    "cpu": AUTHORS_CPU,
    "smoke": AUTHORS_SMOKE,
}


def get_config(variant: str = ""):
  """`authors[,v...]` starts from Fu et al.'s code's setup (AUTHORS_VARIANTS);
  anything else from our pixel task (VARIANTS)."""
  names = [n.strip() for n in variant.split(",")]
  if names[0] == "authors":
    return config.with_variants(authors_config(), ",".join(names[1:]),
                                AUTHORS_VARIANTS)
  return config.with_variants(plateau_config(), variant, VARIANTS)
