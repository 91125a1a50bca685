"""Ablation and recording at a checkpoint (Singh et al. 2025, Fig. 2 and App. B).

Ablating a head zeroes its value vectors. Other activations can be kept at
their values from a first clean pass (queries, keys, values, attention
pattern, per layer); the token embeddings can be zeroed at the input, with
the positions kept (the authors' direct-embedding ablation), or the whole
embedding (tokens and positions) subtracted at the readout (ours).
`TABLE` holds the interventions of the App. B table (2-layer model; layer 1
of the paper is block 0 here).
"""
import dataclasses

import jax.numpy as jnp

from icl_transience.errors import UserError
from icl_transience.nn import transformer

ACTIVATIONS = ("q", "k", "v", "pattern")


@dataclasses.dataclass(frozen=True)
class Intervention:
  ablate: tuple = ()       # ((block, heads), ...); heads: tuple of ints or "all"
  keep: tuple = ()         # ((block, activations kept clean), ...)
  drop_embedding: bool = False        # ours: subtract token + position at the readout
  zero_tokens: bool = False           # the authors': zero token embeddings at the input


ALL_OF_LAYER_1 = ((0, "all"),)
TABLE = {
    "none": Intervention(),
    "layer1_ablated_layer2_qkv_clean": Intervention(ALL_OF_LAYER_1, ((1, ("q", "k", "v")),)),
    "layer1_ablated_recompute_queries": Intervention(ALL_OF_LAYER_1, ((1, ("k", "v")),)),
    "layer1_ablated_recompute_keys": Intervention(ALL_OF_LAYER_1, ((1, ("q", "v")),)),
    "layer1_ablated_recompute_values": Intervention(ALL_OF_LAYER_1, ((1, ("q", "k")),)),
    "all_heads_ablated": Intervention(((0, "all"), (1, "all"))),
    "direct_embedding_removed": Intervention(
        keep=((0, ("pattern", "v")), (1, ("pattern", "v"))), zero_tokens=True),
    "embedding_subtracted_at_readout": Intervention(
        keep=((0, ("pattern", "v")), (1, ("pattern", "v"))), drop_embedding=True),
}


def parse(ablate: str = "", keep: str = "", drop_embedding: bool = False,
          zero_tokens: bool = False):
  """From flag text: ablate '0:1,4,7;1:all', keep '1:q,k'."""

  def entries(text, field, item):
    out = []
    for entry in filter(None, (e.strip() for e in text.split(";"))):
      block, sep, rest = entry.partition(":")
      try:
        values = tuple(item(v.strip()) for v in rest.split(","))
        if not sep or not values:
          raise ValueError(entry)
        out.append((int(block), "all" if values == ("all",) else values))
      except ValueError as e:
        raise UserError(f"--{field}: bad entry '{entry}' (use "
                        f"block:{'heads' if field == 'ablate' else 'q,k,v,pattern'})") from e
    return tuple(out)

  def activation(name):
    if name not in ACTIVATIONS:
      raise ValueError(name)
    return name

  head = lambda h: h if h == "all" else int(h)
  return Intervention(entries(ablate, "ablate", head), entries(keep, "keep", activation),
                      drop_embedding, zero_tokens)


def check(iv: Intervention, depth: int, n_heads: int, name: str = "intervention"):
  for block, heads in iv.ablate + iv.keep:
    if not 0 <= block < depth:
      raise UserError(f"{name}: block {block} outside the model's {depth} blocks")
  for _, heads in iv.ablate:
    if heads != "all" and not all(0 <= h < n_heads for h in heads):
      raise UserError(f"{name}: heads {heads} outside 0..{n_heads - 1}")


def record(model, params, features, labels) -> dict:
  """Logits, residual streams (B, depth+1, T, D) and per-block q, k, v, pattern."""
  logits, state = model.apply({"params": params}, features, labels,
                              mutable=["intermediates"])
  inter = state["intermediates"]
  blocks = [{a: inter[f"block_{i}"]["attn"][a][0] for a in ACTIVATIONS}
            for i in range(model.depth)]
  return {"logits": logits, "residual": jnp.stack(inter["residual"], 1),
          "blocks": blocks}


def forward(model, params, features, labels, iv: Intervention):
  """Query logits under the intervention (one clean pass first if needed)."""
  clean = record(model, params, features, labels)["blocks"] if iv.keep else None
  ablate, keep = dict(iv.ablate), dict(iv.keep)
  patches = []
  for i in range(model.depth):
    mask = None
    if i in ablate:
      heads = list(range(model.n_heads)) if ablate[i] == "all" else list(ablate[i])
      mask = jnp.ones(model.n_heads).at[jnp.array(heads)].set(0.0)
    kept = {a: clean[i][a] for a in keep.get(i, ())}
    patches.append(transformer.Patch(mask, kept))
  return model.apply({"params": params}, features, labels, patches=tuple(patches),
                     drop_embedding=iv.drop_embedding, zero_tokens=iv.zero_tokens)
