"""Ablation and recording at a checkpoint (Singh et al. 2025, Fig. 2 and App. B).

Ablating a head zeroes its value vectors. Other activations can be kept at
their values from a first clean pass (queries, keys, values, attention
pattern, per layer); the token embeddings can be zeroed at the input, with
the positions kept (the authors' direct-embedding ablation), or the whole
embedding (tokens and positions) subtracted at the readout (ours). An
induction clamp of strength s sets the query's attention in chosen heads to
s on each context label token equal to the target and 1 - s on each other
label token (the authors' "optogenetic" induction-head clamp, which assumes
two context pairs; Singh et al. 2025, Fig. 2b plots 2s - 1).
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
  induction: tuple = ()    # ((block, heads), ...) given the induction clamp
  induction_strength: float = 1.0


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


def parse_heads(text: str, field: str) -> tuple:
  """'0:1,4,7;1:all' -> ((0, (1, 4, 7)), (1, 'all')); a bad entry is one
  line naming `field`."""
  return _entries(text, field, lambda h: h if h == "all" else int(h), "heads")


def _entries(text, field, item, what):
  out = []
  for entry in filter(None, (e.strip() for e in text.split(";"))):
    block, sep, rest = entry.partition(":")
    try:
      values = tuple(item(v.strip()) for v in rest.split(","))
      if not sep or not values:
        raise ValueError(entry)
      out.append((int(block), "all" if values == ("all",) else values))
    except ValueError as e:
      raise UserError(f"{field}: bad entry '{entry}' (use block:{what})") from e
  return tuple(out)


def _activation(name):
  if name not in ACTIVATIONS:
    raise ValueError(name)
  return name


def parse(ablate: str = "", keep: str = "", drop_embedding: bool = False,
          zero_tokens: bool = False, induction: str = "",
          induction_strength: float = 1.0):
  """From flag text: ablate '0:1,4,7;1:all', keep '1:q,k', induction '1:0'."""
  return Intervention(parse_heads(ablate, "--ablate"),
                      _entries(keep, "--keep", _activation, "q,k,v,pattern"),
                      drop_embedding, zero_tokens,
                      parse_heads(induction, "--induction"),
                      float(induction_strength))


def check(iv: Intervention, depth: int, n_heads: int, name: str = "intervention"):
  for block, _ in iv.ablate + iv.keep + iv.induction:
    if not 0 <= block < depth:
      raise UserError(f"{name}: block {block} outside the model's {depth} blocks")
  for _, heads in iv.ablate + iv.induction:
    if heads != "all" and not all(0 <= h < n_heads for h in heads):
      raise UserError(f"{name}: heads {heads} outside 0..{n_heads - 1}")
  if not 0.0 <= iv.induction_strength <= 1.0:
    raise UserError(f"{name}: induction strength {iv.induction_strength} "
                    "outside [0, 1]")


def induction_pattern(labels, target, strength: float):
  """The clamped query row (B, 2K+1): s on each label token equal to the
  target, 1 - s on each other label token, 0 on exemplars and the query."""
  on_labels = jnp.where(labels == target[:, None], strength, 1.0 - strength)
  rows = jnp.stack([jnp.zeros_like(on_labels), on_labels], axis=2)
  rows = rows.reshape(labels.shape[0], -1)
  return jnp.concatenate([rows, jnp.zeros_like(rows[:, :1])], axis=1)


def record(model, params, features, labels) -> dict:
  """Logits, residual streams (B, depth+1, T, D) and per-block q, k, v, pattern."""
  logits, state = model.apply({"params": params}, features, labels,
                              mutable=["intermediates"])
  inter = state["intermediates"]
  blocks = [{a: inter[f"block_{i}"]["attn"][a][0] for a in ACTIVATIONS}
            for i in range(model.depth)]
  return {"logits": logits, "residual": jnp.stack(inter["residual"], 1),
          "blocks": blocks}


def forward(model, params, features, labels, iv: Intervention, target=None):
  """Query logits under the intervention (one clean pass first if needed;
  the induction clamp needs the query's target labels)."""
  clean = record(model, params, features, labels)["blocks"] if iv.keep else None
  ablate, keep, induction = dict(iv.ablate), dict(iv.keep), dict(iv.induction)
  if induction and target is None:
    raise ValueError("the induction clamp needs the target labels")
  patches = []
  for i in range(model.depth):
    patch = transformer.Patch(clean={a: clean[i][a] for a in keep.get(i, ())})
    if i in ablate:
      patch = patch.replace(head_mask=transformer.head_vector(ablate[i], model.n_heads, 0.0, 1.0))
    if i in induction:
      patch = patch.replace(
          query_pattern=induction_pattern(labels, target, iv.induction_strength),
          query_heads=transformer.head_vector(induction[i], model.n_heads, 1.0, 0.0) > 0)
    patches.append(patch)
  return model.apply({"params": params}, features, labels, patches=tuple(patches),
                     drop_embedding=iv.drop_embedding, zero_tokens=iv.zero_tokens)
