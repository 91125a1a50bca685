"""Grafting (Singh et al. 2025, Fig. 4): a live model joined to a frozen one at a layer.

  out: the live model runs the embeddings and blocks 0..layer; the frozen
       model runs the rest (blocks layer+1.., final LayerNorm, unembedding).
  in:  the frozen model supplies the residual stream after block `layer`
       (embeddings included); the live model runs the rest.

Gradients reach only the live model. "Graft-out from layer 0" of the paper
is mode "out", layer 0 (Singh et al. 2025, Figs. 3 and 4).
"""
import jax

MODES = ("none", "out", "in")


def forward(model, mode: str, layer: int, params, frozen, features, labels):
  """Query logits of the live `params` grafted to `frozen` (mode 'none': live only)."""
  if mode == "none":
    return model.apply({"params": params}, features, labels)
  frozen = jax.lax.stop_gradient(frozen)
  first, second = (params, frozen) if mode == "out" else (frozen, params)
  stream = model.apply({"params": first}, features, labels, stop=layer + 1)
  return model.apply({"params": second}, features, labels, stream=stream,
                     start=layer + 1)
