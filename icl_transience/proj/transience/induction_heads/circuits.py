"""The training-time clamps of Singh et al. (ICML 2024), Sec. 3-4 and Appendix:
each holds in every forward pass of a run, training and evaluation.

The induction circuit of the 2-layer attention-only model is split into
subcircuits: A, the previous-token (PT) head of layer 1 (steps 1, 2); B, the
induction head's match (steps 3qk, 4); C, its copy (steps 3v, 5). A clamp
sets a subcircuit to its ideal so that only the rest is learned:

- ablate: those heads' values are zero (a head adds only its output bias);
  only_head k >= 0 (a per-member number) ablates every other head of the
  last block (Fig. 4b);
- prev_token: those heads attend, from every token, to the token before
  (token 0 to itself);
- induction (strength s, a per-member number): from the query, those heads
  put s on the label token whose label is the query's, 1 - s on the other
  label token, 0 on exemplars (Fig. 15 plots 2s - 1);
- copy_from (one layer-2 head): the output is that head's pre-softmax scores
  from the query to the two label tokens, on those two labels' logits, and
  -1e9 on every other logit, so only the head's query-key path is trained;
- perfect_layer1: layer 1 adds nothing; layer 2's patterns are those it
  computes on the embeddings shifted by one token (each token t in
  1..T-2 carries token t-1's embedding; token 0 and the query keep their
  own), and its values come from the plain embeddings (three passes).

Blocks and heads are 0-based: the paper's layer 1 is block 0. Clamps assume
two context pairs (tokens x1 l1 x2 l2 xq) and a 2-block model.
"""
import dataclasses

import jax.numpy as jnp
import numpy as np

from icl_transience.errors import check
from icl_transience.nn import transformer
from icl_transience.proj.transience import interventions

TOKENS = 5              # x1 l1 x2 l2 xq
LABEL_TOKENS = (1, 3)


@dataclasses.dataclass(frozen=True)
class Clamps:
  ablate: tuple = ()         # ((block, heads), ...)
  prev_token: tuple = ()     # ((block, heads), ...)
  induction: tuple = ()      # ((block, heads), ...)
  copy_from: tuple = ()      # ((1, (head,)),) or ()
  perfect_layer1: bool = False

  @property
  def any(self) -> bool:
    return self != Clamps()


def from_config(ih) -> Clamps:
  """The clamps of the config block `ih` (one-line errors name its fields)."""
  parse = lambda f: interventions.parse_heads(ih[f], f"ih.{f}")
  return Clamps(parse("ablate_heads"), parse("prev_token_heads"),
                parse("induction_heads"), parse("copy_from_head"),
                bool(ih.perfect_layer1))


def validate(clamps: Clamps, depth: int, n_heads: int, positions: str):
  for field, entries in (("ablate_heads", clamps.ablate),
                         ("prev_token_heads", clamps.prev_token),
                         ("induction_heads", clamps.induction),
                         ("copy_from_head", clamps.copy_from)):
    interventions.check(interventions.Intervention(ablate=entries), depth,
                        n_heads, f"ih.{field}")
  check(not clamps.copy_from or (
      len(clamps.copy_from) == 1 and clamps.copy_from[0][0] == depth - 1
      and clamps.copy_from[0][1] != "all" and len(clamps.copy_from[0][1]) == 1),
        "ih.copy_from_head", "one head of the last block, e.g. '1:3'")
  check(not (clamps.any and depth != 2), "model.depth",
        "the clamps are defined on the 2-block model")
  check(not clamps.perfect_layer1 or positions == "rope", "ih.perfect_layer1",
        "shifts whole token embeddings, which carry no position only with "
        "model.positions=rope")


def previous_token_pattern(length: int = TOKENS) -> jnp.ndarray:
  """(T, T): row t attends to t - 1; row 0 to itself."""
  rows = np.arange(length)
  return jnp.asarray(np.eye(length)[np.maximum(rows - 1, 0)], jnp.float32)


def _patches(model, clamps: Clamps, labels, target, strength=1.0,
             only_head=-1.0) -> list:
  """Each block's Patch for the ablation, PT and match clamps."""
  heads = lambda h, on: transformer.head_vector(h, model.n_heads, on, 1.0 - on)
  ablate, prev, match = (dict(clamps.ablate), dict(clamps.prev_token),
                         dict(clamps.induction))
  last = model.depth - 1
  patches = []
  for i in range(model.depth):
    patch = transformer.Patch()
    mask = heads(ablate[i], 0.0) if i in ablate else jnp.ones(model.n_heads)
    if i == last:  # only_head < 0: every head
      mask = mask * jnp.where((only_head < 0) | (jnp.arange(model.n_heads) ==
                                                 only_head), 1.0, 0.0)
    if i in ablate or i == last:
      patch = patch.replace(head_mask=mask)
    if i in prev:
      patch = patch.replace(pattern=previous_token_pattern(labels.shape[1] * 2 + 1),
                            pattern_heads=heads(prev[i], 1.0) > 0)
    if i in match:
      patch = patch.replace(
          query_pattern=interventions.induction_pattern(labels, target, strength),
          query_heads=heads(match[i], 1.0) > 0)
    patches.append(patch)
  return patches


def _copy_logits(model, q, k, labels, head: int):
  """The head's pre-softmax query scores to the label tokens, on those
  labels' logits; -1e9 elsewhere."""
  scores = jnp.einsum("bd,btd->bt", q[:, -1, head], k[:, LABEL_TOKENS, head])
  scores = scores / np.sqrt(q.shape[-1])
  rows = jnp.arange(labels.shape[0])[:, None]
  return jnp.full((labels.shape[0], model.n_outputs), -1e9).at[rows, labels].set(
      scores)


def _run(model, params, feats, labels, patches, **kwargs):
  """(logits, block-1 q / k / pattern) of one pass."""
  out, state = model.apply({"params": params}, feats, labels, patches=tuple(patches),
                           mutable=["intermediates"], **kwargs)
  attn = state["intermediates"][f"block_{model.depth - 1}"]["attn"]
  return out, {a: attn[a][0] for a in ("q", "k", "pattern")}


def _last_block(model, params, feats, labels, patches, perfect_layer1: bool,
                grafted=None):
  """The last block's q / k / pattern: of the plain pass (on the `grafted`
  stream entering block 1, if given), or under the layer-1 clamp of the pass
  on the shifted embeddings; and the embeddings."""
  if grafted is not None:
    return _run(model, params, feats, labels, patches, stream=grafted, start=1)[1], None
  if not perfect_layer1:
    return _run(model, params, feats, labels, patches)[1], None
  embedded = model.apply({"params": params}, feats, labels, stop=0)
  shifted = embedded.at[:, 1:-1].set(embedded[:, :-2])
  return _run(model, params, feats, labels, patches, stream=shifted,
              start=1)[1], embedded


def forward(model, params, feats, labels, target, clamps: Clamps,
            strength=1.0, only_head=-1.0, grafted=None):
  """Query logits (B, n_outputs) of the classifier under the clamps (the
  match clamp's strength and only_head may be traced per-member numbers);
  grafted: the stream entering block 1, from a frozen model (Appendix,
  Fig. 7), which replaces the live embeddings and block 0."""
  patches = _patches(model, clamps, labels, target, strength, only_head)
  copy_head = clamps.copy_from[0][1][0] if clamps.copy_from else None
  if grafted is not None:
    return model.apply({"params": params}, feats, labels, stream=grafted, start=1,
                       patches=tuple(patches))
  if not clamps.perfect_layer1 and copy_head is None:
    return model.apply({"params": params}, feats, labels, patches=tuple(patches))
  seen, embedded = _last_block(model, params, feats, labels, patches,
                               clamps.perfect_layer1)
  if copy_head is not None:
    return _copy_logits(model, seen["q"], seen["k"], labels, copy_head)
  last = patches[1].replace(clean={"pattern": seen["pattern"]})
  return model.apply({"params": params}, feats, labels, stream=embedded,
                     start=1, patches=(patches[0], last))


def attention_patterns(model, params, feats, labels, target, clamps: Clamps,
                       strength=1.0, only_head=-1.0, grafted=None):
  """The last block's attention pattern (B, heads, T, T) as the clamped
  model computes it (under the layer-1 clamp: from the shifted embeddings);
  the progress measures read it."""
  patches = _patches(model, clamps, labels, target, strength, only_head)
  return _last_block(model, params, feats, labels, patches,
                     clamps.perfect_layer1, grafted)[0]["pattern"]


def merge(*entries) -> tuple:
  """((block, heads), ...) lists joined block by block (a union of heads;
  'all' absorbs the rest)."""
  out = {}
  for block, heads in (e for group in entries for e in group):
    if "all" in (heads, out.get(block)):
      out[block] = "all"
    else:
      out[block] = tuple(sorted(set(out.get(block, ())) | set(heads)))
  return tuple(sorted(out.items()))
