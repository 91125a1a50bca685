"""Tasks: what a training run learns, as plug-ins of the shared trainer.

The trainer (train/step.py) owns everything generic: the population of
members, the optimizer, L2 penalties, fusing steps with lax.scan, device
layouts, checkpoints, resume and the checkpoint-sweep job. A task supplies the
model, the data and the evaluators, as an object built from the config with:

  validate(n_devices)                  raises UserError naming a bad field
  init_weights(key) -> {"params": ..., ["model_state": ...]}
      model_state holds non-trained collections (BatchNorm statistics).
  constants(sharding) -> pytree | None
      device-resident data every step reads (a feature table, a trajectory
      pool, images), placed with `sharding`; passed to sample_batch/evaluate.
  sample_batch(key, consts, hyper, step) -> pytree
      one member's batch of c.batch_size items, leading axis = batch (the
      trainer splits it over devices); hyper = the member's hyperparameters
      ({lr, l2, and every field of c.hyper}); step = optimizer steps taken.
  loss(weights, batch, hyper, step) -> (loss, (metrics, model_state))
      weights = {"params", ["model_state"], ["frozen"]}; metrics a dict of
      scalars (at least the loss); model_state the updated collections
      (or None). The trainer adds L2 penalties itself.
  eval_sets(sharding) -> pytree        fixed evaluation data (eval_seed)
  evaluate(weights, consts, eval_sets) -> {evaluator: {metric: scalar}}
      one member; jittable (the trainer maps it over members or checkpoints,
      eval_members_per_pass of them vmapped at a time).
  shown: {evaluator: metric}           what the progress bar shows

`build(c)` picks the task from `c.task`; a classifier config whose
`data.source` is 'omniglot' runs the Chan et al. image task. `REPORTS` names
each task's `report(workdir, out_dir)` for `python -m icl_transience.report`
(the classifier tasks' report is the transience detector there).
"""
import importlib

TASKS = {
    "classify": "icl_transience.proj.transience.task:ClassifyTask",
    "omniglot": "icl_transience.proj.transience.omniglot.task:OmniglotTask",
    "lds": "icl_transience.proj.lds_recall.task:LDSTask",
    "plateau": "icl_transience.proj.plateaus.task:PlateauTask",
    "plateau_authors": "icl_transience.proj.plateaus.authors_task:AuthorsPlateauTask",
    "dictionary": "icl_transience.proj.lds_recall.dictionary.task:DictionaryTask",
}
# Each task's config blocks with their defaults: blocks(c) -> {name: ConfigDict}.
BLOCKS = {
    "classify": "icl_transience.proj.transience.classifier_config:blocks",
    "omniglot": "icl_transience.proj.transience.omniglot.task:blocks",
    "lds": "icl_transience.proj.lds_recall.task:blocks",
    "plateau": "icl_transience.proj.plateaus.config_blocks:blocks",
    "plateau_authors": "icl_transience.proj.plateaus.config_blocks:authors_blocks",
    "dictionary": "icl_transience.proj.lds_recall.dictionary.task:blocks",
}
REPORTS = {
    "lds": "icl_transience.proj.lds_recall.report",
    "plateau": "icl_transience.proj.plateaus.report",
    "plateau_authors": "icl_transience.proj.plateaus.report",
    "dictionary": "icl_transience.proj.lds_recall.dictionary.report",
}


def task_name(c) -> str:
  name = c.get("task", "classify")
  if name == "classify" and c.get("data", {}).get("source") == "omniglot":
    return "omniglot"
  return name


def build(c):
  """The task object for config c."""
  from icl_transience.errors import UserError  # pylint: disable=g-import-not-at-top
  name = task_name(c)
  if name not in TASKS:
    raise UserError(f"task: unknown '{name}' (choose from "
                    f"{', '.join(t for t in TASKS if t != 'omniglot')})")
  return _load(TASKS[name])(c)


def _load(path: str):
  module, attr = path.split(":")
  return getattr(importlib.import_module(module), attr)


def blocks(c) -> dict:
  """The config blocks (with defaults) of config c's task; {} if unknown."""
  name = task_name(c)
  return _load(BLOCKS[name])(c) if name in BLOCKS else {}
