"""The default experiment config, population members, and up-front validation.

Every number the papers name is a field here. Periods and horizons count
*sequences seen* (like the icl-dynamics code); optimizer steps = sequences /
batch_size. Config files in configs/ start from `for_task(name)`: these
generic fields and the task's own blocks (tasks.blocks), its model included.
"""
import dataclasses
import json
import math

import ml_collections
from etils import epath

from icl_transience import monitoring
from icl_transience import tasks
from icl_transience.errors import UserError, check

# Selective L2 per member: l2_<group> is that group's coefficient (beside l2,
# which applies to optim.l2_on); a task names its groups' modules
# (tasks.TaskSpec.l2_groups).
L2_GROUP_FIELDS = ("l2_mlp", "l2_attention", "l2_embedder")
MEMBER_FIELDS = {"init_seed": int, "data_seed": int, "lr": float, "l2": float,
                 **{f: float for f in L2_GROUP_FIELDS}}
# Shorter names of member fields, in `population` as in sweep's --grid.
MEMBER_ALIASES = {"seed": "init_seed"}
MATMUL_PRECISIONS = ("highest", "high", "default")


def for_task(name: str) -> ml_collections.ConfigDict:
  """A config of task `name`: the generic fields and the task's own blocks
  (its model, data, evaluators, ...) with their defaults."""
  c = base_config()
  c.task = name
  c.update(tasks.blocks(c))
  return c


def base_config() -> ml_collections.ConfigDict:
  """The fields every task shares; a config starts from for_task(name),
  which adds the task's blocks (tasks.blocks), its model block included.
  The defaults here are those of the coopetition main run (Singh et al.
  2025)."""
  c = ml_collections.ConfigDict()
  c.task = "classify"      # a name of tasks.TASKS
  c.init_seed = 5          # model initialisation
  c.data_seed = 2          # training data stream
  c.eval_seed = 1          # fixed evaluator sets
  c.batch_size = 32
  c.total_sequences = 20_000_000  # paper main run: 64 M; figures show 20 M
  c.eval_every = 100_000
  c.steps_per_call = 625   # optimizer steps fused into one compiled call
  # Devices: -1 = one for a single member of a one-process run (its small
  # batch gains nothing from splitting), else all; 0 = all local devices
  # (all devices of all processes in a multi-process run); N = the first N.
  c.num_devices = -1
  # Members trained together: 'field=v,field=v; field=v' (fields: init_seed,
  # data_seed, lr, l2, l2_mlp, l2_attention, l2_embedder). Empty: one member
  # from the fields above.
  c.population = ""
  # How members and batches share devices: auto | batch | members (see
  # population_layout below and train/step.py).
  c.population_sharding = "auto"
  # How a device trains its members: auto | vmap (batched together) |
  # sequential (one after another inside each fused call; faster on CPU).
  # auto = sequential on CPU unless the members are split over devices.
  c.population_map = "auto"
  # Members evaluated together on one device: evaluation memory grows with
  # this, not with the population (each member's pass holds its eval batch's
  # logits).
  c.eval_members_per_pass = 8
  # float32 matmul precision of training and evaluation: highest (full
  # float32 on every backend), high (bf16_3x / TF32-like), default (the
  # backend's: TF32 on A100/H100, one bf16 pass on TPU). Data generation
  # always uses highest.
  c.matmul_precision = "highest"
  # A member whose loss or gradients turn non-finite stops training (keeping
  # its last finite state) while the others go on; False: no check.
  c.divergence_guard = True
  # Per-member task hyperparameters (numbers; task configs add fields here),
  # settable per member in `population` like lr and l2.
  c.hyper = ml_collections.ConfigDict()

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-5
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.l2 = 0.0                # penalty coefficient lambda
  c.optim.l2_form = "norm"        # norm: sum ||w|| (icl-dynamics); squared: sum ||w||^2/2
  c.optim.l2_on = "all"           # all | mlp | attention | embedder (selective decay)
  # Per-group coefficients, added to the l2 penalty above (members may differ,
  # e.g. population='l2_mlp=1e-4; l2_attention=1e-4; l2=1e-4').
  c.optim.l2_mlp = 0.0
  c.optim.l2_attention = 0.0
  c.optim.l2_embedder = 0.0
  c.optim.weight_decay = 0.0      # decoupled (AdamW) weight decay
  c.optim.clip_norm = 0.0         # global-norm gradient clipping (0 = off)
  c.optim.warmup_steps = 0        # linear lr warm-up (optimizer steps)
  c.optim.schedule = "constant"   # constant | inverse_sqrt (after warm-up)

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 1_000_000        # sequences; 0 = off
  c.ckpt.at = ()                  # explicit sequence counts, landed on exactly
  c.ckpt.log_spaced = 0           # extra log-spaced points over the horizon
  c.ckpt.keep = 0                 # keep the newest N (0 = keep all)
  # On resume, unreadable checkpoints newer than a readable one move to
  # checkpoints/corrupt/; with none readable the run stops and moves nothing,
  # unless this is set: then they move and the run starts afresh.
  c.ckpt.restart_if_corrupt = False

  # Weights from another run's checkpoint (workdir; sequences: which
  # checkpoint, -1 = newest; member: '' = its first member).
  # Warm start (Singh et al. 2025): its params, a fresh Adam state, its sequence
  # counter; the data stream restarts from this run's own seeds.
  c.warm_start = _checkpoint_ref()
  # Grafting (Singh et al. 2025): a frozen model joined at block `layer`; mode none | out
  # (frozen model runs the blocks after `layer`) | in (frozen model supplies
  # the stream after `layer`).
  c.graft = _checkpoint_ref()
  c.graft.mode = "none"
  c.graft.layer = 0
  # Live views of the metrics (monitoring.py): TensorBoard event files in
  # workdir/tensorboard/, and W&B when log.wandb names a project.
  c.log = monitoring.log_block()
  return c


def _checkpoint_ref() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(workdir="", sequences=-1, member=""))


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """A run's config.json; fields added since it was written get defaults
  (the generic ones and those of its task's blocks), and the fields its
  task does not have are dropped (drop_foreign_fields)."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"no run in {workdir} (config.json missing)")
  try:
    fields = json.loads(path.read_text())
  except (OSError, ValueError) as e:  # unreadable, torn, not JSON
    raise UserError(f"{path}: not a run's config ({str(e).splitlines()[0]}); "
                    "restore it from a copy, or use a new --workdir") from e
  if not isinstance(fields, dict):
    raise UserError(f"{path}: not a run's config (a JSON {type(fields).__name__}, "
                    "not an object); restore it from a copy, or use a new --workdir")
  c = ml_collections.ConfigDict(fields)
  tasks.upgrade(c)
  return fit_to_task(c)


def fit_to_task(c) -> ml_collections.ConfigDict:
  """c (in place) holding exactly its task's fields: those it lacks get
  their defaults, those of another task go; returns c."""
  _fill_defaults(c, drop_foreign_fields(c))
  return c


def run_curves(workdir: str) -> tuple:
  """The curves the run in workdir shows (tasks.curves); none when it has no
  config.json (a metrics table alone)."""
  if not (epath.Path(workdir) / "config.json").exists():
    return ()
  return tasks.curves(load_run_config(workdir))


def drop_foreign_fields(c) -> ml_collections.ConfigDict:
  """Removes (in place) the top-level blocks that neither the generic
  config nor c's task defines (e.g. the classifier's blocks, which every
  task's config carried before; the omniglot block of a transience config
  on synthetic features) and the fields of a block that its defaults lack
  (e.g. those of the one shared model block every config carried before,
  which the task never read); returns the defaults."""
  defaults = for_task(c.get("task", base_config().task))
  for name in list(c):
    if name not in defaults:
      del c[name]
    elif isinstance(c[name], ml_collections.ConfigDict):
      for field in [f for f in c[name] if f not in defaults[name]]:
        del c[name][field]
  return defaults


def _fill_defaults(c, defaults):
  for key, value in defaults.items():
    if key not in c:
      c[key] = value
    elif isinstance(value, ml_collections.ConfigDict):
      _fill_defaults(c[key], value)


def override(c, fields: dict):
  """Sets dotted fields in place ({'train.burstiness': 0, ...}); returns c.
  Setting `task` refits c to the new task's blocks (fit_to_task)."""
  for field, value in fields.items():
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
    if field == "task":
      fit_to_task(c)
  return c


def with_variants(c, arg: str, variants: dict) -> ml_collections.ConfigDict:
  """c with the variants named in `arg` applied left to right: a config
  file's argument, e.g. `configs/plateau.py:cpu,onehot` ('' = none)."""
  for name in (n.strip() for n in arg.split(",")):
    if name and name not in variants:
      raise UserError(f"unknown variant '{name}' (choose from "
                      f"{', '.join(v for v in variants if v)}; combine with ',')")
    override(c, variants.get(name, {}))
  return c


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  init_seed: int
  data_seed: int
  lr: float
  l2: float
  extra: tuple = ()  # (field, value) pairs of the config's `hyper` block
  # (field, value) of the L2 group fields that some member of the population
  # sets (none: the state holds none, as before they existed)
  l2_groups: tuple = ()

  @property
  def hyper(self) -> dict:
    """The member's per-member numbers, as the trainer's state holds them."""
    return dict(lr=self.lr, l2=self.l2, **dict(self.l2_groups), **dict(self.extra))


def members(c) -> list[Member]:
  """Parses `population` into members; unset fields come from the config."""
  defaults = dict(init_seed=c.init_seed, data_seed=c.data_seed,
                  lr=c.optim.lr, l2=c.optim.l2)
  groups = {f: float(c.optim.get(f, 0.0)) for f in L2_GROUP_FIELDS}
  hyper = {k: float(v) for k, v in c.get("hyper", {}).items()}
  kinds = dict(MEMBER_FIELDS, **{k: float for k in hyper})
  entries = [e.strip() for e in c.population.split(";") if e.strip()]
  parsed = [("main", {})] if not entries else [_entry(e, kinds) for e in entries]
  # the L2 groups some member or the config sets (the state holds only those)
  used = [f for f in L2_GROUP_FIELDS
          if groups[f] or any(f in fields for _, fields in parsed)]
  out = []
  for name, set_here in parsed:
    fields = {**defaults, **groups, **hyper, **set_here}
    out.append(Member(name=name, **{k: fields[k] for k in defaults},
                      extra=tuple((k, fields[k]) for k in sorted(hyper)),
                      l2_groups=tuple((f, fields[f]) for f in used)))
  names = [m.name for m in out]
  if len(set(names)) != len(names):
    raise UserError("population: two members are identical")
  return out


def _entry(entry: str, kinds: dict) -> tuple[str, dict]:
  """One member of `population`: its name and the fields it sets."""
  fields, parts = {}, []
  for item in entry.split(","):
    key, sep, value = (s.strip() for s in item.partition("="))
    key = MEMBER_ALIASES.get(key, key)
    if not sep or key not in kinds:
      raise UserError(f"population: bad member field '{item.strip()}' "
                      f"(use {', '.join(kinds)} as field=value)")
    try:
      fields[key] = kinds[key](value)
    except ValueError as e:
      raise UserError(f"population: bad value in '{item.strip()}'") from e
    parts.append(f"{key}{value}")
  return "_".join(parts), fields


def population_layout(c, n_devices: int) -> str:
  """batch or members (train/step.py). auto: a population over more than one
  device splits its members (padded to a multiple of the device count);
  one member splits its batch."""
  if c.population_sharding != "auto":
    return c.population_sharding
  return "members" if n_devices > 1 and len(members(c)) > 1 else "batch"


def members_in_sequence(c, members_split: bool, backend: str) -> bool:
  """Whether a device trains its members one after another (population_map)."""
  if c.population_map != "auto":
    return c.population_map == "sequential" and not members_split
  return backend == "cpu" and not members_split


def validate(c, n_devices: int = 1):
  """Raises UserError naming the first bad field. Opens files, compiles nothing."""
  for field in c.get("hyper", {}):
    check(isinstance(c.hyper[field], (int, float)), f"hyper.{field}",
           "per-member fields must be numbers")
  check(c.matmul_precision in MATMUL_PRECISIONS,
         "matmul_precision", f"choose {', '.join(MATMUL_PRECISIONS)}")
  spec = tasks.spec(c)
  groups = ("all", *spec.l2_groups)
  check(c.optim.l2_on in groups, "optim.l2_on", f"choose {', '.join(groups)}")
  check(c.optim.l2_form in ("norm", "squared"), "optim.l2_form",
         "choose 'norm' or 'squared'")
  check(c.optim.schedule in ("constant", "inverse_sqrt"), "optim.schedule",
         "choose constant or inverse_sqrt")
  for field in ("weight_decay", "clip_norm", "warmup_steps"):
    check(c.optim[field] >= 0, f"optim.{field}", "must be >= 0")
  check(c.population_sharding in ("auto", "batch", "members"),
         "population_sharding", "choose auto, batch or members")
  split = population_layout(c, n_devices) == "batch"
  check(c.batch_size > 0 and (not split or c.batch_size % n_devices == 0),
         "batch_size", f"{c.batch_size} must be a positive multiple of the "
         f"{n_devices} devices it is split over")
  check(c.steps_per_call > 0, "steps_per_call", "must be positive")
  check(c.num_devices >= -1, "num_devices", "-1 (auto), 0 (all) or a count")
  check(c.eval_members_per_pass > 0, "eval_members_per_pass", "must be positive")
  check(c.population_map in ("auto", "vmap", "sequential"), "population_map",
         "choose auto, vmap or sequential")
  check(c.population_map != "sequential" or
         population_layout(c, n_devices) == "batch",
         "population_map", "'sequential' needs the batch layout (members "
         "split over devices are trained together)")
  grid = c.batch_size * c.steps_per_call
  for field in ("total_sequences", "eval_every", "ckpt.every"):
    value = c.get(field) if "." not in field else c.ckpt.every
    check(value >= 0 and value % grid == 0, field,
           f"{value} is not a multiple of batch_size x steps_per_call = {grid}")
  check(all(int(a) == a and a > 0 and a % c.batch_size == 0 for a in c.ckpt.at),
         "ckpt.at", f"{tuple(c.ckpt.at)}: sequence counts must be positive "
         f"multiples of batch_size = {c.batch_size}")
  check(c.total_sequences > 0, "total_sequences", "must be positive")
  check(c.eval_every > 0, "eval_every", "must be positive")
  check(c.ckpt.keep >= 0, "ckpt.keep", "must be >= 0")
  for m in members(c):
    check(m.lr > 0 and math.isfinite(m.lr), "optim.lr", f"bad lr {m.lr}")
    for field, value in (("l2", m.l2),) + m.l2_groups:
      check(value >= 0 and math.isfinite(value), f"optim.{field}",
             f"bad {field} {value}")
      check(field == "l2" or field.removeprefix("l2_") in spec.l2_groups,
             f"optim.{field}", f"the {tasks.task_name(c)} task has no such "
             "parameter group")
  check(c.graft.mode == "none" or spec.grafts, "graft.mode",
         f"the {tasks.task_name(c)} task does not graft")
  for ref in ("warm_start", "graft"):
    if c[ref].workdir:
      check((epath.Path(c[ref].workdir) / "config.json").exists(),
             f"{ref}.workdir", f"no run in {c[ref].workdir} (config.json missing)")
  spec.build(c).validate(n_devices)
