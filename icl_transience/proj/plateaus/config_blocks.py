"""The plateau task's config blocks with their defaults: Fu et al.'s
baseline D_rnd run (per-member strategy fields in `hyper`, the rest in
`plateau`)."""
import ml_collections

from icl_transience.nn import transformer


def blocks(c) -> dict:
  """The plateau task's config blocks with their defaults (Fu et al.'s
  baseline): its per-member strategy fields (`hyper`) and `plateau`."""
  del c
  hyper = ml_collections.ConfigDict()
  hyper.weights_warmup = 0.0             # steps of D_fix before D_rnd
  hyper.fixed_fraction = 0.0             # D_fix share of every batch
  hyper.weights_loss = 0.0               # lambda of the factor-head loss

  p = ml_collections.ConfigDict()
  p.source = "procedural"                  # procedural | shapes3d
  p.shapes3d_dir = ""                      # TFDS data_dir ('' = TFDS default)
  p.input = "pixels"                       # pixels | onehot | words
  p.context_len = 48                       # L
  p.label_vocab = 15
  p.factor_sizes = (10, 10, 10, 8, 4, 15)
  p.hidden_factors = (0, 1, 2, 3, 4, 5)
  p.image_size = 32
  p.supersample = 2
  p.noise_std = 0.0                        # pixels: pixel noise; onehot: added noise
  p.word_table_seed = 0
  p.weights_loss_layer = 0                 # 0 = encoder output, k = block k
  p.icl_min_position = 16                  # ICL acc over image indices >= 16
  p.report_positions = (0, 1, 2, 4, 8, 16, 32, 47)
  p.icl_sequences = 2048                   # D_rnd test sequences (+ context-probe test)
  p.iwl_sequences = 1024                   # D_fix test sequences
  p.context_probe_train = 8192             # D_rnd sequences the context probe fits
  p.context_probe_position = 40
  p.context_probe_layer = -1               # last block
  p.context_probe_target = "factor"        # factor (which one is hidden) | label
  p.weights_probe_train = 20_000           # images
  p.weights_probe_test = 5000
  p.weights_probe_layer = -1               # the headline a / b scores
  p.probe_layers = ()                      # () = every layer 0..depth
  p.probe_method = "softmax"               # softmax (1 epoch Adam) | ridge
  p.probe_epochs = 1
  p.probe_batch_size = 32
  p.probe_lr = 1e-3
  p.probe_l2 = 1e-3                        # ridge only
  p.eval_batch_size = 64                   # sequences per evaluation chunk
  model = transformer.model_block(
      depth=8, d_model=256, mlp_ratio=4, max_len=96,   # 2 L tokens
      encoder_channels=(32, 64, 128, 128),
      encoder_readout="mean")          # mean over the 4x4 map | flatten it
  return {"model": model, "hyper": hyper, "plateau": p}


def authors_blocks(c) -> dict:
  """The blocks of Fu et al.'s setup as their code runs it (task
  plateau_authors): per-member losses and strategies (`hyper`), `plateau`."""
  del c
  hyper = ml_collections.ConfigDict()
  hyper.context_loss = 0.0               # lambda: the authors' context extra loss
  hyper.weights_loss = 0.0               # lambda: the authors' extra weights loss
  hyper.weights_warmup = 0.0             # ours: steps of D_fix (map 0) first
  hyper.fixed_fraction = 0.0             # ours: D_fix share of every batch

  p = ml_collections.ConfigDict()
  p.item_source = "embedding"            # embedding | pixels (the renderer, flat)
  p.embeddings = ""                      # the authors' repre_vae.npz ('' = stand-in)
  p.item_dim = 768                       # the stand-in's dims
  p.standin_entangle = 0.5               # 0: factors additive; 1: a ReLU mixture
  p.standin_noise = 0.5                  # fixed per-image Gaussian noise
  p.standin_seed = 0
  p.image_size = 32                      # pixels items: 3 x size^2 dims
  p.factor_sizes = (10, 10, 10, 8, 4, 15)
  p.hidden_factors = (0, 1, 2, 3, 4, 5)
  p.context_len = 40                     # (item, label) pairs
  p.n_maps = 20_000                      # the map pool: 1 = D_fix, 20,000 = D_rnd
  p.train_fraction = 0.8                 # images of training sequences
  p.dataset_seed = 0                     # split, pool, fixed sets, epoch orders
  p.train_sequences = 100_000            # the fixed training set (0 = fresh stream)
  p.test_sequences = 40_000              # held-out test sequences
  p.n_classes = 768                      # read-out width
  p.extra_dims_start = 128               # labels before, extra losses after
  p.icl_min_position = 20                # icl/acc: mean over positions >= this
  p.weights_probe_block = 2              # the stream after this block index
  p.weights_probe_sequences = 100_000    # training sequences (one pass)
  p.weights_probe_test = 40_000          # test sequences it is scored on
  p.weights_probe_variants = ("pass", "a", "b")
  p.probe_batch_size = 128
  p.probe_lr = 1e-3
  p.eval_batch_size = 125                # sequences per evaluation chunk (whole
                                         # chunks are read: 125 divides 40,000)
  model = transformer.model_block(depth=12, d_model=128, n_heads=4,
                                  mlp_ratio=4, max_len=80)
  return {"model": model, "hyper": hyper, "plateau": p}
