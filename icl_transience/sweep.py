"""Sweeps: a grid of config values, run as few compiled programs as possible.

  python -m icl_transience.sweep --config=configs/coopetition.py \\
      --workdir=runs/sweep --grid='seed=5,6,7 lr=1e-5,3e-5'
  python -m icl_transience.sweep ... --list        # the groups, then exit
  python -m icl_transience.sweep ... --group=1     # one group (one job each)

The grid is the product of its axes (`field=v1,v2,...`, space separated; a
field is any dotted config field, or seed / data_seed / lr / l2). Points that
differ only in member fields (init_seed, data_seed, optim.lr, optim.l2,
optim.l2_mlp / l2_attention / l2_embedder, hyper.*) keep every array
shape, so they train together as one population program; each other
combination of values is its own group, run one after another (or as
separate jobs with --group). A group's workdir is <workdir>/<group name>;
each member has its own checkpoint item and metrics rows there. Finished
groups are skipped and interrupted ones resume. At the end
<workdir>/summary.json collects every member's final probes.
"""
import dataclasses
import itertools
import json
import os

from absl import app
from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.analysis import figures
from icl_transience.errors import Diverged, UserError
from icl_transience.train import checkpoints
from icl_transience.train import loop

ALIASES = {**config_lib.MEMBER_ALIASES, "lr": "optim.lr", "l2": "optim.l2"}
# config field -> member field
MEMBER_FIELDS = {"init_seed": "init_seed", "data_seed": "data_seed",
                 "optim.lr": "lr", "optim.l2": "l2",
                 **{f"optim.{f}": f for f in config_lib.L2_GROUP_FIELDS}}


def member_fields(c) -> dict:
  """Config fields that vary per member: seeds, lr, l2 and the hyper block."""
  return dict(MEMBER_FIELDS, **{f"hyper.{k}": k for k in c.get("hyper", {})})


@dataclasses.dataclass(frozen=True)
class Group:
  name: str
  overrides: dict       # non-member fields shared by the group
  population: str       # the members, in config.population syntax


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
  axes = []
  for axis in text.split():
    field, sep, values = axis.partition("=")
    if not sep or not values or not field:
      raise UserError(f"--grid: bad axis '{axis}' (use field=v1,v2,...)")
    axes.append((ALIASES.get(field, field), values.split(",")))
  if not axes:
    raise UserError("--grid: empty")
  return axes


def _typed(c, field: str, text: str):
  node = c
  *parents, leaf = field.split(".")
  for part in parents:
    node = node.get(part)
    if not hasattr(node, "keys"):
      break
  if not hasattr(node, "keys") or leaf not in node:
    raise UserError(f"--grid: unknown config field '{field}'")
  kind = type(node[leaf])
  if kind is bool:
    return text.lower() in ("1", "true", "yes")
  try:
    return kind(text)
  except ValueError as e:
    raise UserError(f"--grid: {field}={text} is not a {kind.__name__}") from e


def groups(c, grid: str) -> list[Group]:
  """The grid's points grouped into population programs."""
  axes = parse_grid(grid)
  fields = member_fields(c)
  shared_axes = [(f, v) for f, v in axes if f not in fields]
  member_axes = [(f, v) for f, v in axes if f in fields]
  out = []
  for shared in itertools.product(*(v for _, v in shared_axes)):
    overrides = {f: _typed(c, f, v) for (f, _), v in zip(shared_axes, shared)}
    name = "_".join(f"{f.split('.')[-1]}={v}" for (f, _), v in
                    zip(shared_axes, shared)) or "all"
    members = [",".join(f"{fields[f]}={v}" for (f, _), v in
                         zip(member_axes, point))
               for point in itertools.product(*(v for _, v in member_axes))]
    out.append(Group(name, overrides, "; ".join(m for m in members if m)))
  return out


def group_config(c, group: Group):
  g = config_lib.override(c.copy_and_resolve_references(), group.overrides)
  g.population = group.population
  config_lib.members(g)  # a bad member value fails here, before training
  return g


def finished(c, workdir: str) -> bool:
  if not (epath.Path(workdir) / "checkpoints").exists():
    return False
  with checkpoints.manager(workdir, read_only=True) as mngr:
    return mngr.latest_step() == c.total_sequences // c.batch_size


def summary(root: str, all_groups: list[Group]) -> list[dict]:
  """Every member's final value of each curve its task shows."""
  out = []
  for group in all_groups:
    workdir = os.path.join(root, group.name)
    rows = metrics_table.read(workdir)
    curves = config_lib.run_curves(workdir)
    for member in dict.fromkeys(r["member"] for r in rows):
      entry = {"group": group.name, "member": member}
      for curve in curves:
        evaluator, metric = curve.evaluator, curve.metric
        x, y = figures.series(rows, member, evaluator, metric)
        if x:  # evaluator, or evaluator:metric where it shows several
          shared = sum(curve.evaluator == evaluator for curve in curves) > 1
          entry.update(sequences=x[-1], **{
              f"{evaluator}:{metric}" if shared else evaluator: y[-1]})
      out.append(entry)
  return out


def run(c, root: str, grid: str, only: int | None = None) -> list[str]:
  """Trains the groups (or group `only`); returns the names of those trained."""
  all_groups = groups(c, grid)
  trained = []
  for i, group in enumerate(all_groups):
    if only is not None and i != only:
      continue
    g, workdir = group_config(c, group), os.path.join(root, group.name)
    if finished(g, workdir):
      logging.info("group %d (%s) is finished; skipping", i, group.name)
      continue
    logging.info("group %d of %d: %s, members: %s", i, len(all_groups),
                 group.name, group.population or "one")
    try:
      loop.train(g, workdir)
    except Diverged as e:  # the other groups still train
      logging.warning("group %d (%s): %s", i, group.name, e)
      continue
    trained.append(group.name)
  table = summary(root, all_groups)
  metrics_table.atomic_write_text(os.path.join(root, "summary.json"),
                                  json.dumps(table, indent=2) + "\n")
  for entry in table:
    print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in entry.items()))
  return trained


def define_flags():
  """The command-line flags, defined only when run as a program (every entry
  point defines --workdir; the modules import side by side)."""
  config_flags.DEFINE_config_file("config", None, "Base config file.")
  flags.DEFINE_string("workdir", None, "Sweep root directory.")
  flags.DEFINE_string("grid", None, "Axes: 'field=v1,v2 field=v1,v2'.")
  flags.DEFINE_integer("group", None, "Run only this group (0-based).")
  flags.DEFINE_bool("list", False, "Print the groups and exit.")
  flags.mark_flags_as_required(["config", "workdir", "grid"])


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  cli.start_logging()
  all_groups = groups(f.config, f.grid)
  if f.list:
    for i, group in enumerate(all_groups):
      print(f"{i}: {group.name}  members: {group.population or 'one'}")
    return
  if f.group is not None and not 0 <= f.group < len(all_groups):
    raise UserError(f"--group: {f.group} not in 0..{len(all_groups) - 1}")
  run(f.config, f.workdir, f.grid, f.group)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
