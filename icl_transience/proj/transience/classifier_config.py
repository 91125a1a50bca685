"""The classifier's config blocks (data, train, evals) and its checks of
them and of model and graft (one line naming the field); the training
SequenceSpec and the output size."""
import ml_collections

from icl_transience import config
from icl_transience.errors import check
from icl_transience.nn import transformer
from icl_transience.proj.transience import graft
from icl_transience.proj.transience import interventions
from icl_transience.proj.transience import sequences
from icl_transience.proj.transience import sources


def blocks(c) -> dict:
  """The classifier's config blocks with their defaults: the coopetition main
  run (Singh et al. 2025) on the embedded synthetic features."""
  del c
  data = ml_collections.ConfigDict()
  data.source = "synthetic"     # synthetic | features | onehot | omniglot
  data.n_classes = 12_984       # 12,800 training + 184 held out
  data.n_exemplars = 20
  data.dim = 512
  data.rank = 16                # synthetic: class subspace dimension R
  data.spread = 0.7             # synthetic: within-class spread s
  data.isotropic_noise = 0.1
  # synthetic: >= 0 groups classes 8k..8k+7 as one character's 8 transforms,
  # clusters this far apart around one centre; < 0: independent classes
  data.transform_spread = -1.0
  data.relu_features = False    # synthetic: max(x, 0) per coordinate (ResNet-like)
  data.feature_shift = 0.0      # synthetic: added to every coordinate, before the ReLU
  data.feature_scale = 1.0      # synthetic: multiplies every feature (last)
  data.subclusters = 1          # synthetic: groups of near-duplicates per class
  data.subcluster_spread = 0.0  # synthetic: their centres' distance from the class centre
  data.dataset_seed = 0
  data.path = ""                # features: .h5/.hdf5/.npy/.npz file
  data.key = "resnet18/224/feat"  # features: HDF5 dataset / npz array name
  # (LLaMa embedding files, Singh et al. 2023, Sec. 4.3: '{clustering_seed}/{n_exemplars}/feat').
  # intended: class = 8 * character + transform (Singh et al. 2023, appendix); released: the
  # authors' files' layout (bug-compatible; needs 20 exemplars, 8 | classes).
  data.layout = "intended"
  data.omniglot_dir = ""        # omniglot: folder of the release's zip archives
  data.tfds_dir = ""            # omniglot: TFDS data_dir ('' = TFDS default)

  train = ml_collections.ConfigDict()  # the training sequence distribution
  train.n_classes = 12_800
  train.exemplars = (0, 20)
  train.context_len = 2
  train.burstiness = 1
  train.distractor = True
  train.no_support = False
  train.unique_rest = False
  train.relabel = "none"        # none | flip | 01 | pairs
  train.fs_relabel = 0          # labels 0..N-1 for relabel='pairs' (ICL-only)
  train.assign_query_label_random = False
  train.match_query_and_distractors = False
  train.zipf_exponent = 0.0

  evals = ml_collections.ConfigDict()
  evals.names = ("train_eval", "icl", "flip_icl", "iwl_copy_avail", "pure_iwl")
  # train_eval's query items (+ as many distractors), fixed across variants;
  # train_dist is the variant's own training distribution
  evals.standard_burstiness = 1
  evals.n_sequences = 5000
  evals.n_classes = 1600
  evals.exemplars = (0, 5)
  evals.batch_size = 1000

  # Clamps held throughout training (Singh et al. 2025, appendix), as
  # 'block:heads;...' ('0:1,4,7', '0:all'); blocks and heads 0-indexed.
  clamp = ml_collections.ConfigDict()
  clamp.ablate_heads = ""           # those heads' values zeroed
  clamp.block_label_attention = ""  # no attention from a label token to its exemplar
  return {"model": model_block(), "data": data, "train": train,
          "evals": evals, "clamp": clamp}


def model_block():
  """The sequence classifier (proj/transience/classifier.py): the 2-layer
  attention-only model of the coopetition main run."""
  return transformer.model_block(
      max_len=32,
      positions="learned",     # learned | sinusoidal | rope
      pos_timescale=30.0,      # sinusoids' timescale; rope's base
      attention_bias=False)    # biases on the attention projections


def coopetition_config() -> ml_collections.ConfigDict:
  """The coopetition main run: the generic fields and the classifier's blocks."""
  return config.for_task("classify")


def check_model(model, tokens: int):
  """The classifier's model block, for sequences of `tokens` tokens; one
  line naming the field."""
  check(model.positions in transformer.POSITIONS, "model.positions",
        f"unknown '{model.positions}' (choose from {', '.join(transformer.POSITIONS)})")
  check(model.d_model % model.n_heads == 0, "model.n_heads",
        f"must divide d_model={model.d_model}")
  check(tokens <= model.max_len, "model.max_len",
        f"{model.max_len} positions, but sequences have {tokens} tokens")


def train_spec(c) -> sequences.SequenceSpec:
  """The training distribution: config block `train` is a SequenceSpec."""
  return sequences.SequenceSpec(**dict(c.train, exemplars=tuple(c.train.exemplars)))


def n_outputs(c) -> int:
  """Output (and label table) size: training classes, or fs_relabel labels."""
  return c.train.fs_relabel if c.train.relabel == "pairs" else c.train.n_classes


def check_spec(spec: sequences.SequenceSpec, field: str, shape):
  check(spec.relabel in sequences.RELABEL_SCHEMES, f"{field}.relabel",
         f"unknown scheme '{spec.relabel}' "
         f"(choose from {', '.join(sequences.RELABEL_SCHEMES)})")
  check(spec.context_len >= 1, f"{field}.context_len", "must be >= 1")
  check(spec.burstiness >= 0, f"{field}.burstiness", "must be >= 0")
  check(spec.n_rest >= 0, f"{field}.burstiness",
         f"{spec.burstiness} query items"
         f"{' + as many distractors' if spec.distractor else ''} do not fit "
         f"in a context of {spec.context_len}")
  needed = spec.n_excluded + (spec.n_rest if spec.unique_rest else 1)
  check(spec.n_classes >= max(needed, 2), f"{field}.n_classes",
         f"{spec.n_classes} classes are too few for this sequence type")
  check(spec.n_classes <= shape.n_classes, f"{field}.n_classes",
         f"{spec.n_classes} classes, but the source holds {shape.n_classes}")
  lo, hi = spec.exemplars
  check(0 <= lo < hi <= shape.n_exemplars, f"{field}.exemplars",
         f"range [{lo}, {hi}) outside the source's {shape.n_exemplars} exemplars")
  check(spec.relabel != "pairs" or spec.fs_relabel >= 2, f"{field}.fs_relabel",
         "relabel='pairs' needs fs_relabel >= 2")
  needs_distractor = spec.relabel in ("flip", "01", "pairs")
  check(not needs_distractor or (spec.burstiness > 0 and spec.distractor),
         f"{field}.relabel", f"'{spec.relabel}' needs burstiness > 0 and a "
         "distractor")
  check(spec.zipf_exponent >= 0, f"{field}.zipf_exponent", "must be >= 0")


def validate(c):
  """The classifier task's fields (data, train, model, graft); the
  evaluators check theirs (probes.validate)."""
  check(c.data.source != "omniglot", "data.source", "the Omniglot images are "
         "the omniglot task: set task=omniglot (configs/transience.py:omniglot)")
  shape = sources.source_shape(c.data)
  sources.check_finite(c.data)
  check(c.data.layout in ("intended", "released"), "data.layout",
         "choose intended or released")
  check(c.data.layout == "intended" or (
      shape.n_classes % 8 == 0 and shape.n_exemplars == 20), "data.layout",
         "'released' needs 20 exemplars and a multiple of 8 classes")
  spec = train_spec(c)
  check_spec(spec, "train", shape)
  if c.train.relabel == "pairs":
    check(c.train.fs_relabel >= 2, "train.fs_relabel", "must be >= 2")
  check_model(c.model, 2 * c.train.context_len + 1)
  for field in ("ablate_heads", "block_label_attention"):
    heads = interventions.parse_heads(c.clamp[field], f"clamp.{field}")
    interventions.check(interventions.Intervention(ablate=heads), c.model.depth,
                        c.model.n_heads, f"clamp.{field}")
  check(c.graft.mode in graft.MODES, "graft.mode",
         f"unknown '{c.graft.mode}' (choose from {', '.join(graft.MODES)})")
  if c.graft.mode != "none":
    check(bool(c.graft.workdir), "graft.workdir", "needed to graft")
    check(0 <= c.graft.layer < c.model.depth, "graft.layer",
           f"must be in [0, {c.model.depth})")
