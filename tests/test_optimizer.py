"""The trainer's update is optax's: Adam, AdamW, clipping, the warm-up and
inverse-sqrt schedules, and Adam on the loss plus the L2 penalty."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from icl_transience import config as config_lib
from icl_transience import tasks
from icl_transience.train import loop
from icl_transience.train import step as step_lib

from helpers import smoke_config

LR, WARMUP = 1e-3, 2
ATTENTION = ("attn", "ln_attn")        # the attention group: attention + its LayerNorm
MLP = ("mlp_in", "mlp_out", "ln_mlp")  # the MLP group


def warmup_inverse_sqrt():
  """Linear warm-up over WARMUP steps, then lr sqrt(WARMUP / t), t = step + 1."""
  return optax.join_schedules(
      [optax.linear_schedule(LR / WARMUP, LR, WARMUP - 1),
       lambda count: LR * jnp.sqrt(WARMUP / (count + WARMUP))], [WARMUP - 1])


CASES = {
    "adam": ({}, lambda: optax.adam(LR), None),
    "warmup_inverse_sqrt": ({"optim.warmup_steps": WARMUP,
                             "optim.schedule": "inverse_sqrt"},
                            lambda: optax.adam(warmup_inverse_sqrt()), None),
    "adamw": ({"optim.weight_decay": 0.1},
              lambda: optax.adamw(LR, weight_decay=0.1), None),
    "clipping": ({"optim.clip_norm": 0.05},
                 lambda: optax.chain(optax.clip_by_global_norm(0.05), optax.adam(LR)),
                 None),
    "l2_norm": ({"optim.l2": 0.05}, lambda: optax.adam(LR), ("norm", 0.05, None)),
    "l2_squared_attention": ({"optim.l2": 0.05, "optim.l2_form": "squared",
                              "optim.l2_on": "attention"},
                             lambda: optax.adam(LR), ("squared", 0.05, ATTENTION)),
    "l2_mlp_member": ({"population": "l2_mlp=0.05", "model.mlp_ratio": 2},
                      lambda: optax.adam(LR), ("norm", 0.05, MLP)),
}


def reference_penalty(params, form: str, modules):
  """Written out: sum over the group's leaves of ||w|| (Singh et al. 2023's
  unsquared form) or ||w||^2 / 2; a group is every leaf under one of
  `modules` (None: every leaf). A zero leaf's norm gets gradient 0."""
  total = 0.0
  for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    if modules is not None and not {getattr(k, "key", None) for k in path} & set(modules):
      continue
    squares = jnp.sum(w * w)
    total += (jnp.sqrt(jnp.maximum(squares, 1e-30)) if form == "norm"
              else 0.5 * squares)
  return total


@pytest.mark.parametrize("case", list(CASES))
def test_three_updates_equal_optax(case):
  fields, reference, l2 = CASES[case]
  c = smoke_config(**{"optim.lr": LR, **fields})
  mesh = loop.make_mesh(1)
  with jax.set_mesh(mesh):
    trainer = step_lib.Trainer(c, mesh)
    table = trainer.task.constants(trainer.replicated)
    member = config_lib.members(c)[0]
    hyper = {k: jnp.float32(v) for k, v in member.hyper.items()}
    state = trainer._init_member(member.init_seed, member.data_seed, hyper)  # pylint: disable=protected-access
    sample = jax.jit(trainer.task.sample_batch, static_argnums=3)
    batches = [sample(jax.random.PRNGKey(i), table, hyper, i) for i in range(3)]
    update = jax.jit(trainer._update)  # pylint: disable=protected-access
    ours, alive = state, jnp.bool_(True)
    for batch in batches:
      ours, alive, _ = update(ours, batch, alive)

    def loss(params, batch):
      value = trainer.task.loss({"params": params}, batch, hyper, 0)[0]
      if l2:
        value += l2[1] * reference_penalty(params, l2[0], l2[2])
      return value

    tx = reference()

    @jax.jit
    def reference_update(params, opt, batch):
      updates, opt = tx.update(jax.grad(loss)(params, batch), opt, params)
      return optax.apply_updates(params, updates), opt

    params, opt = state["params"], tx.init(state["params"])
    for batch in batches:
      params, opt = reference_update(params, opt, batch)
  assert int(ours["step"]) == 3 and bool(alive)
  moved = 0.0
  for got, want, start in zip(jax.tree.leaves(ours["params"]), jax.tree.leaves(params),
                              jax.tree.leaves(state["params"]), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    moved = max(moved, float(np.abs(np.asarray(want) - np.asarray(start)).max()))
  assert moved > 1e-3  # three steps of lr 1e-3 moved the parameters


def test_selective_l2_groups_are_whole_sub_modules():
  """Each group holds every parameter of its sub-modules, LayerNorms
  included (Singh et al. 2023's selective regularisation); the others none."""
  c = smoke_config(**{"model.mlp_ratio": 2})
  spec = tasks.spec(c)
  params = jax.eval_shape(spec.build(c).init_weights, jax.random.PRNGKey(0))["params"]
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  group = lambda g: {p for p, (path, _) in zip(
      paths, jax.tree_util.tree_flatten_with_path(params)[0])
                     if step_lib.in_l2_group(path, step_lib.group_modules(spec, g))}
  first = "['block_0']"
  assert group("attention") >= {f"{first}['ln_attn']['scale']",
                                f"{first}['attn']['qkv']['kernel']"}
  assert group("mlp") >= {f"{first}['ln_mlp']['bias']",
                          f"{first}['mlp_in']['kernel']"}
  assert group("embedder") == {"['input_proj']['kernel']", "['input_proj']['bias']",
                               "['label_embed']['embedding']", "['positions']"}
  assert not group("attention") & group("mlp")
  assert not any("mlp" in p for p in group("attention"))
  rest = set(paths) - group("attention") - group("mlp") - group("embedder")
  assert rest == {"['ln_final']['scale']", "['ln_final']['bias']",
                  "['unembed']['kernel']", "['unembed']['bias']"}
  assert group("all") == set(paths)
