"""Tasks: what a training run learns, as plug-ins of the shared trainer.

The trainer (train/step.py) owns everything generic: the population of
members, the optimizer, L2 penalties, fusing steps with lax.scan, device
layouts, checkpoints, resume and the checkpoint-sweep job. A task is a
TaskSpec: how to build its run object (a `Task`) and everything else the
generic tools need to know of it. The registry below maps each task's name
to its TaskSpec ('module:NAME'), one line each; a config's `task` field
picks the entry (docs/adding_a_task.md).
"""
import dataclasses
import importlib
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import ml_collections

from icl_transience.errors import UserError

TASKS = {
    "classify": "icl_transience.proj.transience.spec:CLASSIFY",
    "omniglot": "icl_transience.proj.transience.spec:OMNIGLOT",
    "induction_heads": "icl_transience.proj.transience.spec:INDUCTION_HEADS",
    "lds": "icl_transience.proj.lds_recall.spec:LDS",
    "dictionary": "icl_transience.proj.lds_recall.spec:DICTIONARY",
    "plateau": "icl_transience.proj.plateaus.spec:PLATEAU",
    "plateau_authors": "icl_transience.proj.plateaus.spec:AUTHORS",
    "hidden_direction": "examples.hidden_direction:SPEC",
}


class Task(Protocol):
  """A run's task object, built from its config by TaskSpec.build."""

  shown: Mapping[str, str]  # {evaluator: metric} the progress bar shows

  def validate(self, n_devices: int) -> None:
    """Raises UserError naming a bad field."""

  def init_weights(self, key) -> dict:
    """{"params": ..., ["model_state": ...]}; model_state holds non-trained
    collections (BatchNorm statistics)."""

  def constants(self, sharding) -> Any:
    """Device-resident data every step reads (a feature table, a trajectory
    pool, images), placed with `sharding`, or None."""

  def sample_batch(self, key, consts, hyper, step) -> Any:
    """One member's batch of c.batch_size items, leading axis = batch;
    hyper = the member's numbers ({lr, l2, ..., the fields of c.hyper});
    step = optimizer steps taken."""

  def loss(self, weights, batch, hyper, step) -> tuple:
    """(loss, (metrics, model_state)); weights = {"params", ["model_state"],
    ["frozen"], "hyper"}; metrics a dict of scalars (at least the loss); the
    trainer adds L2 penalties itself."""

  # the evaluators this run computes, in order ({name: evaluators.Evaluator}:
  # how its fixed set is built and which metrics it computes)
  evaluators: Mapping[str, Any]


class Curve(NamedTuple):
  """A curve the generic figures, the sweep summary and the curve report
  show: an evaluator's metric, its legend label and colour, and the
  metric's chance level there (None: the report's default for the metric)."""
  evaluator: str
  metric: str
  label: str
  colour: str | None = None
  chance: float | None = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Everything the core knows of a task."""
  build: Callable[..., Task]          # build(c) -> the run's Task
  blocks: Callable[..., dict]         # blocks(c) -> {name: ConfigDict}, with defaults
  # fields (dotted, or a block's name) a resumed run may change, beside the
  # generic ones (horizons, checkpoints, layouts, views)
  resumable: tuple[str, ...] = ()
  # selective L2: group -> names of the modules whose parameters it holds
  l2_groups: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  # curves(c) -> the curves figures, the curve report and the sweep summary
  # show (tasks.Curve), in drawing order
  curves: Callable[..., tuple[Curve, ...]] = lambda c: ()
  # report(workdir, out_dir) for `python -m icl_transience.report`; None:
  # the generic curve report (peak, final, emerged / transient / persistent)
  report: Callable[[str, str], Any] | None = None
  grafts: bool = False                # whether the task reads a frozen model
  # For configs written before a task of its own split off from this one:
  # successor(c) -> the name of the task that runs c now, or None.
  successor: Callable[..., str | None] | None = None
  # For configs written before a field moved: {old dotted name: new one}.
  renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)


def task_name(c) -> str:
  return c.get("task", "classify")


def spec(c) -> TaskSpec:
  """The TaskSpec of config c's task (a one-line error for an unknown name)."""
  name = task_name(c)
  if name not in TASKS:
    raise UserError(f"task: unknown '{name}' (choose from {', '.join(TASKS)})")
  module, attr = TASKS[name].split(":")
  try:
    return getattr(importlib.import_module(module), attr)
  except ImportError as e:  # e.g. the example task, outside the package
    raise UserError(f"task: cannot load '{name}' from {module} ({e}); run "
                    "from the repository root") from e


def upgrade(c):
  """Brings (in place) a config written by an older version up to date: the
  task it runs now (TaskSpec.successor), then its moved fields
  (TaskSpec.renamed); returns c."""
  if task_name(c) in TASKS and spec(c).successor:
    c.task = spec(c).successor(c) or task_name(c)
  if task_name(c) in TASKS:
    for old, new in spec(c).renamed.items():
      _move(c, old, new)
  return c


def _move(c, old: str, new: str):
  """Moves c's dotted field `old` (if it has one) to `new`."""
  *parents, leaf = old.split(".")
  node = c
  for p in parents:
    node = node.get(p, {})
  if leaf in node:
    *parents, new_leaf = new.split(".")
    target = c
    for p in parents:
      target[p] = target.get(p) or ml_collections.ConfigDict()
      target = target[p]
    target[new_leaf] = node[leaf]
    del node[leaf]


def build(c) -> Task:
  """The task object for config c."""
  return spec(c).build(c)


def curves(c) -> tuple[Curve, ...]:
  """The curves config c's task shows."""
  return spec(c).curves(c)


def blocks(c) -> dict:
  """The config blocks (with defaults) of config c's task; {} if unknown."""
  return spec(c).blocks(c) if task_name(c) in TASKS else {}
