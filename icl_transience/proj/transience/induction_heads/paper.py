"""One command per figure of Singh et al. (ICML 2024): it trains the runs
the figure needs (a finished run is skipped, a stopped one resumes) and
draws it.

  python -m icl_transience.proj.transience.induction_heads.paper \\
      --figure=5b --workdir=runs/ih [--train=false]

Runs live in WORKDIR/<variant> (the variants of configs/induction_heads.py,
',' written '_'); the figure goes to WORKDIR/figures/ih_fig<N>.png. Figures:
  3     the seeds 5-9 population (Fig. 3a losses, 3b strengths: the report)
  4b    train loss with one layer-2 head alone (0-7) and with all
  5b    train loss under the subcircuit clamps (none, 1, 1+2, match, copy,
        1+2 + copy)
  6     2 x 4: classes (top) and labels (bottom); normal training (2e6),
        B (layer 1 + copy clamped), C (match clamped), B + C (layer 1
        clamped), 3e5
  7     a frozen trained layer 1 (seeds 5, 6, 7) grafted under a fresh
        layer 2 (init seed 5), against normal training
  8     previous-token clamps on one and on all layer-1 heads
  15    the match clamp's strength s: train and held-out-pair losses, each
        run coloured by 2s - 1 (the paper's colour bar)
"""
import importlib.util
import os

import matplotlib.pyplot as plt
import numpy as np
from absl import app
from absl import flags
from absl import logging

from icl_transience import cli
from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.analysis import figures
from icl_transience.errors import UserError
from icl_transience.train import loop

LN2 = float(np.log(2))
FIG5B = (("noclamp", "none"), ("pt", "1 (PT pattern 0:2)"), ("l1", "1,2 (layer 1)"),
         ("match", "1,2,3qk,4 (match)"), ("copy", "3v,5 (copy)"),
         ("l1_copy", "1,2,3v,5 (layer 1 + copy)"))
DATA = (("", "50 classes, 5 labels"), ("classes100", "100 classes"),
        ("classes200", "200 classes"), ("labels10", "10 labels"),
        ("labels15", "15 labels"))
COLUMNS = (("long", "normal training"), ("l1_copy,short", "B (layer 1 + copy clamped)"),
           ("match,short", "C (match clamped)"), ("l1,short", "B + C (layer 1 clamped)"))
FIG8 = (("noclamp", "no clamp"), ("pt", "PT clamp on 0:2"), ("pt_all", "PT clamp on all"))


def fig6_variants():
  return [",".join(filter(None, (d, col))) for d, _ in DATA for col, _ in COLUMNS]


GRAFT_SEEDS = (5, 6, 7)
RUNS = {"3": ["seeds"], "4b": ["fig4b"], "5b": [v for v, _ in FIG5B],
        "6": fig6_variants(), "7": ["seeds"] + [f"graft{s}" for s in GRAFT_SEEDS],
        "8": [v for v, _ in FIG8], "15": ["fig15"]}


def workdir(root: str, variant: str) -> str:
  return os.path.join(root, variant.replace(",", "_") or "main")


def load_config(path: str, variant: str, root: str):
  """The variant's config; graft<S>: the graft variant on the seeds run's
  member init_seed<S> (trained from init seed 5, as the paper's Fig. 7)."""
  spec = importlib.util.spec_from_file_location("ih_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not variant.startswith("graft"):
    return module.get_config(variant)
  c = module.get_config("graft")
  c.graft.workdir, c.graft.member = workdir(root, "seeds"), f"init_seed{variant[5:]}"
  return c


def train(config_path: str, root: str, variants):
  for variant in variants:
    logging.info("run %s", variant or "main")
    loop.train(load_config(config_path, variant, root), workdir(root, variant))


def curves(root, variant, evaluator="fsl_train"):
  """{member: (x, y)} of the evaluator's loss in the variant's run."""
  rows = metrics_table.read(workdir(root, variant))
  if not rows:
    raise UserError(f"--workdir: no metrics in {workdir(root, variant)} (train it: "
                    "drop --train=false)")
  members = dict.fromkeys(r["member"] for r in rows)
  return {m: figures.series(rows, m, evaluator, "loss") for m in members}


def _axes(ax, title, xmax=None):
  ax.axhline(LN2, color="grey", ls="--", lw=0.8)
  ax.set(title=title, xlabel="sequences seen", ylabel="train loss")
  if xmax:
    ax.set_xlim(0, xmax)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)


def draw_fig15(root: str):
  """Two panels (train, held-out label pairs), a line per strength s,
  coloured by 2s - 1."""
  c = config_lib.load_run_config(workdir(root, "fig15"))
  strength = {m.name: dict(m.extra)["match_strength"] for m in config_lib.members(c)}
  colour = plt.get_cmap("coolwarm")
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for ax, evaluator, title in ((axes[0], "fsl_train", "train"),
                               (axes[1], "fsl_val_rl", "test (held-out label pairs)")):
    for member, (x, y) in curves(root, "fig15", evaluator).items():
      ax.plot(x, y, lw=1.1, color=colour(strength[member]), label=member)
    ax.axhline(LN2, color="grey", ls="--", lw=0.8)
    ax.set(title=f"Singh et al. 2024, Fig. 15: {title}", xlabel="sequences seen",
           ylabel="loss", ylim=(0, 4))
    ax.grid(alpha=0.3)
  bar = fig.colorbar(plt.cm.ScalarMappable(cmap=colour, norm=plt.Normalize(-1, 1)),
                     ax=axes, fraction=0.03)
  bar.set_label("2s - 1 (match clamp on head 1:3)")
  return fig


def draw(figure: str, root: str) -> str:
  path = os.path.join(root, "figures", f"ih_fig{figure}.png")
  if figure == "15":
    figures.save(draw_fig15(root), path)
    return path
  if figure == "6":
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for row, data in ((0, DATA[:3]), (1, DATA[:1] + DATA[3:])):
      for col, (column, title) in enumerate(COLUMNS):
        for d, label in data:
          (x, y), = curves(root, ",".join(filter(None, (d, column)))).values()
          axes[row, col].plot(x, y, label=label, lw=1.2)
        _axes(axes[row, col], title)
  else:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if figure in ("3", "4b"):
      runs = [(RUNS[figure][0], None)]
    elif figure == "7":
      runs = [(f"graft{s}", f"layer 1 of seed {s}, frozen") for s in GRAFT_SEEDS]
      x, y = curves(root, "seeds")["init_seed5"]
      ax.plot(x, y, color="black", lw=1.2, label="normal training (seed 5)")
    else:
      runs = FIG5B if figure == "5b" else FIG8
    for variant, label in runs:
      for member, (x, y) in curves(root, variant).items():
        ax.plot(x, y, lw=1.2, label=label or member,
                ls="--" if member == "only_head-1" else "-")
    _axes(ax, f"Singh et al. 2024, Fig. {figure}", 400_000 if figure == "5b" else None)
  fig.tight_layout()
  figures.save(fig, path)
  return path


def define_flags():
  flags.DEFINE_enum("figure", None, list(RUNS), "Which figure.", required=True)
  flags.DEFINE_string("workdir", None, "Folder of the runs (one per variant).", required=True)
  flags.DEFINE_string("config_file", "configs/induction_heads.py", "The config file.")
  flags.DEFINE_bool("train", True, "Train (or finish) the runs first.")


@cli.exit_on_user_error
def main(argv):
  del argv
  f = flags.FLAGS
  cli.start_logging()
  if f.train:
    if not os.path.isfile(f.config_file):
      raise UserError(f"--config_file: no file {f.config_file}")
    train(f.config_file, f.workdir, RUNS[f.figure])
  print(draw(f.figure, f.workdir))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
