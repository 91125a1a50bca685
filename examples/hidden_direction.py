"""A complete task in one module, an example of the task contract
(docs/adding_a_task.md): items x ~ N(0, I) in `hidden.dim` dimensions are
labelled 1[x . w > 0] for a hidden direction w (from `hidden.seed`); a
linear classifier learns w. The evaluator `heldout`: a fixed set of items,
its accuracy and loss.

  python main.py --config=examples/hidden_direction.py --workdir=runs/example
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from icl_transience import config
from icl_transience import evaluators
from icl_transience import tasks
from icl_transience.errors import check


def blocks(c) -> dict:
  """The task's config block, with its defaults."""
  del c
  return {"hidden": ml_collections.ConfigDict(dict(dim=8, seed=0, eval_items=256))}


class HiddenDirectionTask:
  """Logistic regression on a hidden direction (the contract: tasks.Task)."""
  shown = {"heldout": "acc"}

  def __init__(self, c):
    self.c, self.h = c, c.hidden
    self.model = nn.Dense(1, name="linear")
    self.evaluators = {"heldout": evaluators.Evaluator(  # fixed set, metrics
        lambda key: jax.random.normal(key, (self.h.eval_items, self.h.dim)),
        lambda weights, direction, items: self._metrics(
            weights["params"], items, (items @ direction > 0).astype(jnp.float32)))}

  def validate(self, n_devices: int):
    del n_devices
    for field in ("dim", "eval_items"):
      check(self.h[field] >= 1, f"hidden.{field}", f"must be >= 1, got {self.h[field]}")

  def init_weights(self, key):
    return {"params": self.model.init(key, jnp.zeros((1, self.h.dim)))["params"]}

  def constants(self, sharding):  # the hidden direction
    return jax.device_put(jax.random.normal(jax.random.key(self.h.seed),
                                            (self.h.dim,)), sharding)

  def sample_batch(self, key, direction, hyper, step):
    del hyper, step
    items = jax.random.normal(key, (self.c.batch_size, self.h.dim))
    return {"items": items, "labels": (items @ direction > 0).astype(jnp.float32)}

  def _metrics(self, params, items, labels):
    logits = self.model.apply({"params": params}, items)[:, 0]
    loss = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    return {"loss": loss, "acc": jnp.mean((logits > 0) == (labels > 0))}

  def loss(self, weights, batch, hyper, step):
    del hyper, step
    metrics = self._metrics(weights["params"], batch["items"], batch["labels"])
    return metrics["loss"], (metrics, None)


SPEC = tasks.TaskSpec(
    build=HiddenDirectionTask, blocks=blocks, resumable=("hidden.eval_items",),
    curves=lambda c: (tasks.Curve("heldout", "acc", "held-out accuracy"),))


def get_config(arg: str = ""):
  """A run of seconds on a CPU."""
  del arg
  return config.override(config.for_task("hidden_direction"), {
      "batch_size": 16, "steps_per_call": 25, "total_sequences": 1600,
      "eval_every": 400, "optim.lr": 0.05, "ckpt.every": 800})
