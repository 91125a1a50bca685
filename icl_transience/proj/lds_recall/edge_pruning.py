"""Edge pruning of the LDS GPT-2 (after Bhaskar et al.
2024, "Finding Transformer Circuits with Edge Pruning").

Disentangled residual stream. Writers: the read-in (token read-in plus
positions), every attention head, every MLP. Readers: every head's query, key
and value inputs (masked separately, as Bhaskar et al.), every MLP's input
and the read-out. A reader sees the masked sum of the outputs of the writers
before it -- the read-in and earlier layers' heads and MLPs; an MLP also sees
its own layer's heads -- and applies its own LayerNorm to that sum; with every
mask 1 the sum is the ordinary residual stream. A head's output is its slice
of the attention output projection plus 1/n_heads of that projection's bias.

Masks are hard-concrete (Louizos et al. 2018) with one log-alpha per edge,
sampled once per optimisation step; the objective is the MSE between the
pruned and the full model's predictions at chosen rows, plus the Lagrangian
lambda1 (s - t) + lambda2 (s - t)^2 of the expected sparsity s (from the L0
expectation) and a target t ramped linearly to `target_sparsity`; the log-
alphas descend, the lambdas ascend. The circuit is the edges whose
deterministic mask exceeds `threshold`.

Parameter layout read (proj/lds_recall/gpt2.py): read_in, positions, block_{i}/
{ln_attn, attn/{qkv (q | k | v, heads contiguous), out}, ln_mlp, mlp_in,
mlp_out}, ln_final, read_out.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_transience.proj.lds_recall import gpt2

QKV = ("q", "k", "v")


@dataclasses.dataclass(frozen=True)
class Graph:
  """The computation graph of a depth x n_heads GPT-2 (hashable)."""
  depth: int
  n_heads: int

  @property
  def n_writers(self) -> int:
    return 1 + self.depth * (self.n_heads + 1)

  def head_writer(self, layer: int, head: int) -> int:
    return 1 + layer * (self.n_heads + 1) + head

  def mlp_writer(self, layer: int) -> int:
    return 1 + layer * (self.n_heads + 1) + self.n_heads

  @property
  def writer_names(self) -> list[str]:
    names = ["read_in"]
    for i in range(self.depth):
      names += [f"a{i}.h{h}" for h in range(self.n_heads)] + [f"m{i}"]
    return names

  def edge_names(self) -> dict:
    """Names "writer->reader" in the layout of the mask pytree."""
    w = self.writer_names
    attn = [[[[f"{w[j]}->a{i}.h{h}.{x}" for j in range(self.head_writer(i, 0))]
              for x in QKV] for h in range(self.n_heads)] for i in range(self.depth)]
    mlp = [[f"{w[j]}->m{i}" for j in range(self.mlp_writer(i))]
           for i in range(self.depth)]
    return {"attn": attn, "mlp": mlp,
            "read_out": [f"{name}->read_out" for name in w]}

  def n_edges(self) -> int:
    return len(jax.tree.leaves(self.edge_names()))


def full_masks(graph: Graph, value: float = 1.0) -> dict:
  """Masks (or log-alphas) of every edge set to `value`."""
  return {"attn": [jnp.full((graph.n_heads, 3, graph.head_writer(i, 0)), value)
                   for i in range(graph.depth)],
          "mlp": [jnp.full((graph.mlp_writer(i),), value) for i in range(graph.depth)],
          "read_out": jnp.full((graph.n_writers,), value)}


def _layer_norm(p, x):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + gpt2.LN_EPS) * p["scale"] + p["bias"]


def _gather(writers, mask):
  """sum_w mask[..., w] writers[w] over the first mask.shape[-1] writers."""
  stack = jnp.stack(writers[:mask.shape[-1]])
  return jnp.einsum("...w,wbtd->...btd", mask, stack)


def pruned_forward(params, tokens, masks, graph: Graph):
  """Predictions (B, T, state_dim) of the GPT-2 with edge masks."""
  b, t, _ = tokens.shape
  d = params["positions"].shape[-1]
  hd = d // graph.n_heads
  embed = tokens @ params["read_in"]["kernel"] + params["read_in"]["bias"]
  writers = [embed + params["positions"][:t]]
  causal = jnp.tril(jnp.ones((t, t), bool))
  for i in range(graph.depth):
    p = params[f"block_{i}"]
    x = _layer_norm(p["ln_attn"], _gather(writers, masks["attn"][i]))  # (H, 3, B, T, d)
    kernel = p["attn"]["qkv"]["kernel"].reshape(d, 3, graph.n_heads, hd)
    bias = p["attn"]["qkv"]["bias"].reshape(3, graph.n_heads, hd)
    qkv = jnp.einsum("hxbtd,dxhe->xbthe", x, kernel) + bias[:, None, None]
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(hd)
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    heads = jnp.einsum("bhqk,bkhe->hbqe", jax.nn.softmax(scores, -1), v)
    out = p["attn"]["out"]
    per_head = jnp.einsum("hbqe,hed->hbqd", heads,
                          out["kernel"].reshape(graph.n_heads, hd, d))
    writers += list(per_head + out["bias"] / graph.n_heads)
    h = _layer_norm(p["ln_mlp"], _gather(writers, masks["mlp"][i]))
    h = jax.nn.gelu(h @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"], approximate=True)
    writers.append(h @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"])
  x = _layer_norm(params["ln_final"], _gather(writers, masks["read_out"]))
  return x @ params["read_out"]["kernel"] + params["read_out"]["bias"]


@dataclasses.dataclass(frozen=True)
class PruneSpec:
  """Optimisation settings (hashable). Hard-concrete constants of Louizos
  et al.; the rest are our choices."""
  target_sparsity: float = 0.95   # fraction of edges removed
  steps: int = 1500
  batch_size: int = 64            # prompts per step
  mask_lr: float = 0.1            # Adam on the log-alphas
  lambda_lr: float = 0.1          # Adam ascent on the Lagrange multipliers
  ramp_fraction: float = 0.5      # target sparsity reached after this share
  init_log_alpha: float = 3.0     # masks start (almost surely) on
  beta: float = 2.0 / 3.0
  gamma: float = -0.1
  zeta: float = 1.1
  threshold: float = 0.5          # deterministic mask > threshold: kept


def sample_masks(key, log_alpha, spec: PruneSpec):
  leaves, tree = jax.tree.flatten(log_alpha)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, a in zip(keys, leaves):
    u = jax.random.uniform(k, a.shape, minval=1e-6, maxval=1 - 1e-6)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + a) / spec.beta)
    out.append(jnp.clip(s * (spec.zeta - spec.gamma) + spec.gamma, 0.0, 1.0))
  return jax.tree.unflatten(tree, out)


def deterministic_masks(log_alpha, spec: PruneSpec):
  return jax.tree.map(lambda a: jnp.clip(
      jax.nn.sigmoid(a) * (spec.zeta - spec.gamma) + spec.gamma, 0.0, 1.0), log_alpha)


def binary_masks(log_alpha, spec: PruneSpec):
  return jax.tree.map(lambda m: (m > spec.threshold).astype(jnp.float32),
                      deterministic_masks(log_alpha, spec))


def expected_sparsity(log_alpha, spec: PruneSpec):
  """1 - E[kept edges] / edges, from P(mask > 0) of each hard-concrete gate."""
  shift = spec.beta * math.log(-spec.gamma / spec.zeta)
  leaves = jax.tree.leaves(log_alpha)
  kept = sum(jnp.sum(jax.nn.sigmoid(a - shift)) for a in leaves)
  return 1.0 - kept / sum(a.size for a in leaves)


def faithfulness(params, graph: Graph, masks, tokens, reference, rows):
  """MSE (summed over the state, mean over prompts and rows) between the
  masked model's predictions and `reference` at `rows`."""
  predictions = pruned_forward(params, tokens, masks, graph)[:, rows]
  return jnp.mean(jnp.sum((predictions - reference[:, rows]) ** 2, -1))


def prune(key, params, graph: Graph, tokens, reference, rows,
          spec: PruneSpec = PruneSpec()):
  """Optimised log-alphas and a history {step: (mse, expected sparsity)}
  every tenth of the run. tokens / reference: (N, T, .) prompts and the full
  model's predictions; rows: the scored rows."""
  log_alpha, (mse, sparsity) = _optimise(key, params, tokens, reference,
                                         graph=graph, rows=tuple(rows), spec=spec)
  every = max(1, spec.steps // 10)
  history = {int(s): (float(mse[s]), float(sparsity[s]))
             for s in range(0, spec.steps, every)}
  return log_alpha, history


@functools.partial(jax.jit, static_argnames=("graph", "rows", "spec"))
def _optimise(key, params, tokens, reference, *, graph: Graph, rows: tuple,
              spec: PruneSpec):
  rows = np.asarray(rows)
  state = {"log_alpha": full_masks(graph, spec.init_log_alpha),
           "lambdas": jnp.zeros(2)}
  optimizer = optax.multi_transform(
      {"log_alpha": optax.adam(spec.mask_lr), "lambdas": optax.adam(spec.lambda_lr)},
      {"log_alpha": "log_alpha", "lambdas": "lambdas"})
  ramp = max(1, int(spec.ramp_fraction * spec.steps))

  def objective(state, step, key):
    k_batch, k_mask = jax.random.split(key)
    picked = jax.random.randint(k_batch, (spec.batch_size,), 0, tokens.shape[0])
    masks = sample_masks(k_mask, state["log_alpha"], spec)
    mse = faithfulness(params, graph, masks, tokens[picked], reference[picked], rows)
    target = spec.target_sparsity * jnp.minimum(1.0, step / ramp)
    gap = expected_sparsity(state["log_alpha"], spec) - target
    lam = state["lambdas"]
    return mse + lam[0] * gap + lam[1] * gap ** 2, (mse, gap + target)

  def update(carry, step):
    state, opt = carry
    grads, aux = jax.grad(objective, has_aux=True)(
        state, step, jax.random.fold_in(key, step))
    grads["lambdas"] = -grads["lambdas"]  # ascent
    updates, opt = optimizer.update(grads, opt, state)
    return (optax.apply_updates(state, updates), opt), aux

  (state, _), history = jax.lax.scan(
      update, (state, optimizer.init(state)), jnp.arange(spec.steps))
  return state["log_alpha"], history


def kept_edges(masks, graph: Graph) -> list[str]:
  """Names of the edges whose (binary) mask is 1."""
  names = jax.tree.leaves(graph.edge_names())
  values = np.concatenate([np.ravel(m) for m in jax.tree.leaves(masks)])
  return [n for n, v in zip(names, values) if v > 0.5]


def jaccard(a, b) -> float:
  a, b = set(a), set(b)
  return len(a & b) / len(a | b) if a | b else 1.0
