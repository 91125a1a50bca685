"""The rank-1 tensor toy model of Singh et al. (ICML 2024), Fig 5a and Fig 9.

Three vectors a, b, c in R^dim learn the target T* = a* (x) b* (x) c* by
full-batch gradient descent on
  L = 1/2 mean[(a (x) b (x) c - T*)^2]      (mean over the dim^3 entries).
The three factors interact multiplicatively, like the paper's induction-head
subcircuits, so the unclamped run sits on a plateau (near a (x) b (x) c = 0,
where the loss is that of the zero tensor) before its loss drops.
Clamping a vector (overwriting it with its true value at the start and after
every step) shortens the plateau (c) or removes it (b and c): Fig 5a.
Fig 9 (appendix) tracks two progress measures: 1 - cos^2(a, a*), and the
loss with b, c set to their true vectors.

The paper's setup: dim 20, seed 1, true vectors and initial values N(0, 1),
learning rate 1, 1000 steps. All three conditions run in one compiled program.

  python -m icl_transience.proj.transience.induction_heads.tensor_toy --out=DIR

writes DIR/tensor_toy.json, DIR/fig5a_tensor_toy.png and
DIR/fig9_tensor_toy_progress.png, and prints each condition's steps to 1% of
its initial loss.
"""
import dataclasses
import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from icl_transience import cli
from icl_transience import metrics_table
from icl_transience.analysis import figures  # selects matplotlib's Agg backend
from icl_transience.errors import UserError
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

# Condition name -> which of (a, b, c) is clamped (Fig 5a's legend).
CONDITIONS = {"none": (False, False, False),
              "c": (False, False, True),
              "bc": (False, True, True)}
COLOURS = {"none": "black", "c": "#377eb8", "bc": "#984ea3"}  # the paper's
LABELS = {"none": "none", "c": "c", "bc": "b, c"}
RESULT_FILE = "tensor_toy.json"
LOSS_FIGURE = "fig5a_tensor_toy.png"
PROGRESS_FIGURE = "fig9_tensor_toy_progress.png"


@dataclasses.dataclass(frozen=True)
class TensorToyConfig:
  dim: int = 20
  seed: int = 1
  lr: float = 1.0
  steps: int = 1000

  def __post_init__(self):
    for name in ("dim", "steps"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}: expected a positive integer, got {value!r}")
    if not self.lr > 0:
      raise UserError(f"lr: expected a positive number, got {self.lr!r}")


@dataclasses.dataclass(frozen=True)
class ToyRun:
  """Per condition (rows in CONDITIONS order) and per step t = 0..steps,
  measured after t gradient steps."""
  losses: np.ndarray          # (conditions, steps + 1)
  misalignment: np.ndarray    # (conditions, steps + 1): 1 - cos^2(a, a*)
  loss_true_bc: np.ndarray    # (conditions, steps + 1): loss at b, c = +-b*, +-c*
  final: np.ndarray           # (conditions, 3, dim): a, b, c after the last step
  truth: np.ndarray           # (3, dim): a*, b*, c*


def outer3(vectors):
  """a (x) b (x) c for the rows a, b, c of vectors."""
  return jnp.einsum("i,j,k->ijk", vectors[0], vectors[1], vectors[2])


def loss(vectors, truth):
  """1/2 mean over the dim^3 entries of (a (x) b (x) c - a* (x) b* (x) c*)^2."""
  return 0.5 * jnp.mean((outer3(vectors) - outer3(truth)) ** 2)


def misalignment(vectors, truth):
  """Fig 9, progress measure 1: 1 - cos^2(a, a*)."""
  a, a_true = vectors[0], truth[0]
  return 1.0 - jnp.dot(a, a_true) ** 2 / (jnp.dot(a, a) * jnp.dot(a_true, a_true))


def loss_true_bc(vectors, truth):
  """Fig 9, progress measure 2: the loss with b, c set to +-b*, +-c*, the
  smaller over the signs. Flipping both b and c leaves the tensor unchanged,
  so the minimum is over the sign of a alone. Only the sign is factored out,
  not the scale: where b, c end as rescaled truths, a carries the inverse
  scale and this measure levels off above zero."""
  a = vectors[0]
  return jnp.minimum(loss(truth.at[0].set(a), truth),
                     loss(truth.at[0].set(-a), truth))


def clamp(vectors, truth, mask):
  """The rows selected by mask (3,) overwritten with their true values."""
  return jnp.where(mask[:, None], truth, vectors)


def gd_step(vectors, truth, mask, lr):
  """One full-batch gradient-descent step, then the clamp."""
  return clamp(vectors - lr * jax.grad(loss)(vectors, truth), truth, mask)


def init(cfg: TensorToyConfig):
  """(initial vectors, truth), each (3, dim) with rows a, b, c.

  The authors' draws: split(PRNGKey(seed), 6) gives a*, b*, c*, then the
  initial a, b, c. Call under non-partitionable threefry to match them.
  """
  keys = jax.random.split(jax.random.PRNGKey(cfg.seed), 6)
  draws = jnp.stack([jax.random.normal(k, (cfg.dim,)) for k in keys])
  return draws[3:], draws[:3]


def _measures(vectors, truth):
  return jnp.stack([loss(vectors, truth), misalignment(vectors, truth),
                    loss_true_bc(vectors, truth)])


def _run_one(vectors, truth, mask, cfg: TensorToyConfig):
  vectors = clamp(vectors, truth, mask)

  def body(v, _):
    v = gd_step(v, truth, mask, cfg.lr)
    return v, _measures(v, truth)

  final, history = jax.lax.scan(body, vectors, None, length=cfg.steps)
  history = jnp.concatenate([_measures(vectors, truth)[None], history])
  return final, history


def solve(cfg: TensorToyConfig = TensorToyConfig()) -> ToyRun:
  """Runs every condition of CONDITIONS in one jitted, vmapped scan.

  The draws use JAX's non-partitionable threefry (the authors' JAX default),
  set for this computation only.
  """
  masks = jnp.asarray(list(CONDITIONS.values()))
  with jax.threefry_partitionable(False):
    vectors, truth = init(cfg)
    run = jax.jit(jax.vmap(lambda m: _run_one(vectors, truth, m, cfg)))
    final, history = run(masks)
  history = np.asarray(history)
  return ToyRun(losses=history[..., 0], misalignment=history[..., 1],
                loss_true_bc=history[..., 2], final=np.asarray(final),
                truth=np.asarray(truth))


def steps_to_fraction(losses, fraction: float = 0.01):
  """The first step t with losses[t] <= fraction * losses[0], or None."""
  if not 0 < fraction <= 1:
    raise UserError(f"fraction: expected a number in (0, 1], got {fraction!r}")
  losses = np.asarray(losses)
  if losses.ndim != 1 or not losses.size:
    raise UserError(f"losses: expected a non-empty 1-D curve, got shape {losses.shape}")
  hits = np.flatnonzero(losses <= fraction * losses[0])
  return int(hits[0]) if hits.size else None


def summary(run: ToyRun, cfg: TensorToyConfig) -> dict:
  """The JSON record: the setup and, per condition, its curves."""
  conditions = {}
  for i, name in enumerate(CONDITIONS):
    conditions[name] = {
        "clamped": [v for v, on in zip("abc", CONDITIONS[name]) if on],
        "initial_loss": float(run.losses[i, 0]),
        "final_loss": float(run.losses[i, -1]),
        "steps_to_1pct": steps_to_fraction(run.losses[i]),
        "loss": run.losses[i].tolist(),
        "misalignment": run.misalignment[i].tolist(),
        "loss_true_bc": run.loss_true_bc[i].tolist(),
    }
  return {"paper": "Singh, Moskovitz, Hill, Chan, Saxe (ICML 2024), Fig 5a, Fig 9",
          "config": dataclasses.asdict(cfg),
          "step": "measured after t gradient steps, t = 0..steps",
          "conditions": conditions}


def loss_figure(run: ToyRun, path: str):
  """Fig 5a: the loss against gradient-descent steps, one line per condition."""
  fig, ax = plt.subplots(figsize=(7, 4))
  for i, name in enumerate(CONDITIONS):
    ax.plot(run.losses[i], label=LABELS[name], color=COLOURS[name], lw=2)
  ax.set(xlabel="gradient-descent step", ylabel="loss", yscale="log",
         title="Rank-1 tensor toy model (Singh et al. 2024, Fig 5a)")
  ax.legend(title="clamped", fontsize=8)
  ax.grid(alpha=0.3)
  figures.save(fig, path)


def progress_figure(run: ToyRun, path: str):
  """Fig 9: the two progress measures against gradient-descent steps."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  panels = ((run.misalignment, "1 - cos$^2$(a, a*)", "linear"),
            (run.loss_true_bc, "loss with b = $\\pm$b*, c = $\\pm$c*", "log"))
  for ax, (values, ylabel, yscale) in zip(axes, panels):
    for i, name in enumerate(CONDITIONS):
      ax.plot(values[i], label=LABELS[name], color=COLOURS[name], lw=2)
    ax.set(xlabel="gradient-descent step", ylabel=ylabel, yscale=yscale)
    ax.grid(alpha=0.3)
  axes[0].legend(title="clamped", fontsize=8)
  fig.suptitle("Progress measures of the tensor toy model (Singh et al. 2024, Fig 9)")
  figures.save(fig, path)


def write(run: ToyRun, cfg: TensorToyConfig, out: str) -> list[str]:
  """Writes the JSON record (atomically) and both figures into out."""
  try:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, RESULT_FILE)
    record = summary(run, cfg)
    metrics_table.atomic_write(path, lambda f: json.dump(record, f, indent=1))
  except OSError as e:
    raise UserError(f"--out: cannot write {out} ({e.strerror or e})") from e
  paths = [path, os.path.join(out, LOSS_FIGURE), os.path.join(out, PROGRESS_FIGURE)]
  loss_figure(run, paths[1])
  progress_figure(run, paths[2])
  return paths


def define_flags():
  """The command-line flags, defined only when run as a program."""
  flags.DEFINE_string("out", None, "Output folder.", required=True)
  flags.DEFINE_integer("dim", 20, "Dimension of a, b, c.")
  flags.DEFINE_integer("seed", 1, "Seed of the true vectors and the initial values.")
  flags.DEFINE_float("lr", 1.0, "Learning rate.")
  flags.DEFINE_integer("steps", 1000, "Gradient-descent steps.")


@cli.exit_on_user_error
def main(argv):
  del argv
  cli.quiet_library_logs()
  f = flags.FLAGS
  cfg = TensorToyConfig(dim=f.dim, seed=f.seed, lr=f.lr, steps=f.steps)
  run = solve(cfg)
  print(f"{'clamped':>8} {'initial loss':>13} {'final loss':>11} {'steps to 1%':>12}")
  for i, name in enumerate(CONDITIONS):
    steps = steps_to_fraction(run.losses[i])
    print(f"{LABELS[name]:>8} {run.losses[i, 0]:13.4g} {run.losses[i, -1]:11.4g} "
          f"{'never' if steps is None else steps:>12}")
  for path in write(run, cfg, f.out):
    print(path)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
