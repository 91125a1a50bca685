"""Edge pruning (our own method; the authors' code has none): the disentangled forward pass, the edge graph,
hard-concrete masks and a short optimisation on a tiny random GPT-2."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_transience.proj.lds_recall import edge_pruning as ep
from icl_transience.proj.lds_recall import gpt2

GRAPH = ep.Graph(depth=2, n_heads=2)
MODEL = gpt2.GPT2(state_dim=3, d_model=8, depth=2, n_heads=2, max_len=12)


@pytest.fixture(scope="module")
def model():
  tokens = jax.random.normal(jax.random.PRNGKey(1), (6, 10, 7))
  params = jax.jit(MODEL.init)(jax.random.PRNGKey(0), tokens)["params"]
  # larger weights than the 0.02 init, so every path matters
  params = jax.tree.map(lambda w: w * 20.0 if w.ndim == 2 else w, params)
  return params, tokens


def masks_from_edges(edges, graph: ep.Graph):
  """Binary masks keeping exactly the named edges."""
  wanted = set(edges)
  keep = np.array([n in wanted for n in jax.tree.leaves(graph.edge_names())],
                  np.float32)
  leaves, tree = jax.tree.flatten(ep.full_masks(graph))
  bounds = np.cumsum([0] + [leaf.size for leaf in leaves])
  return jax.tree.unflatten(tree, [
      jnp.asarray(keep[a:b].reshape(leaf.shape))
      for leaf, a, b in zip(leaves, bounds[:-1], bounds[1:])])


def test_graph_counts_and_names():
  # writers: read_in + 2 x (2 heads + mlp) = 7; attention readers of layer 0
  # see 1 writer, of layer 1 see 4; MLP 0 sees 3, MLP 1 sees 6; read-out 7
  assert GRAPH.n_writers == 7
  assert GRAPH.n_edges() == 2 * 3 * 1 + 2 * 3 * 4 + 3 + 6 + 7
  names = ep.Graph(1, 1).edge_names()
  assert names["attn"][0][0] == [["read_in->a0.h0.q"], ["read_in->a0.h0.k"],
                                 ["read_in->a0.h0.v"]]
  assert names["mlp"][0] == ["read_in->m0", "a0.h0->m0"]
  assert names["read_out"] == ["read_in->read_out", "a0.h0->read_out", "m0->read_out"]


def test_all_masks_one_is_the_full_model(model):
  params, tokens = model
  full = jax.jit(MODEL.apply)({"params": params}, tokens)
  pruned = jax.jit(ep.pruned_forward, static_argnums=3)(
      params, tokens, ep.full_masks(GRAPH), GRAPH)
  np.testing.assert_allclose(pruned, full, rtol=1e-5, atol=1e-5)


def test_no_edge_into_read_out_reads_out_zero(model):
  params, tokens = model
  masks = ep.full_masks(GRAPH)
  masks["read_out"] = jnp.zeros_like(masks["read_out"])
  out = ep.pruned_forward(params, tokens, masks, GRAPH)
  zero_input = (params["ln_final"]["bias"] @ params["read_out"]["kernel"]
                + params["read_out"]["bias"])
  np.testing.assert_allclose(out, jnp.broadcast_to(zero_input, out.shape), atol=1e-5)


def test_only_direct_path_is_read_in_through_read_out(model):
  params, tokens = model
  masks = jax.tree.map(jnp.zeros_like, ep.full_masks(GRAPH))
  masks["read_out"] = masks["read_out"].at[0].set(1.0)
  out = ep.pruned_forward(params, tokens, masks, GRAPH)
  x = tokens @ params["read_in"]["kernel"] + params["read_in"]["bias"]
  x = x + params["positions"][:tokens.shape[1]]
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  x = (x - mean) / jnp.sqrt(var + 1e-5) * params["ln_final"]["scale"] + params["ln_final"]["bias"]
  np.testing.assert_allclose(out, x @ params["read_out"]["kernel"] + params["read_out"]["bias"],
                             rtol=1e-5, atol=1e-5)


def test_edge_names_round_trip_and_jaccard():
  edges = ["read_in->a0.h1.k", "a1.h0->read_out", "m0->m1"]
  masks = masks_from_edges(edges, GRAPH)
  assert sorted(ep.kept_edges(masks, GRAPH)) == sorted(edges)
  assert sum(float(m.sum()) for m in jax.tree.leaves(masks)) == 3
  assert ep.jaccard(edges, edges[:2]) == pytest.approx(2 / 3)


def test_hard_concrete_masks():
  spec = ep.PruneSpec()
  log_alpha = {"a": jnp.array([-10.0, 0.0, 10.0])}
  det = ep.deterministic_masks(log_alpha, spec)["a"]
  np.testing.assert_allclose(det, [0.0, 0.5, 1.0], atol=1e-3)
  samples = jax.jit(jax.vmap(lambda k: ep.sample_masks(k, log_alpha, spec)["a"]))(
      jax.random.split(jax.random.PRNGKey(0), 2000))
  assert (samples >= 0).all() and (samples <= 1).all()
  assert (samples[:, 0] == 0).mean() > 0.99 and (samples[:, 2] == 1).mean() > 0.99
  assert 0.3 < (samples[:, 1] > 0.5).mean() < 0.7
  assert float(ep.expected_sparsity({"a": jnp.full((4,), 10.0)}, spec)) < 1e-3


def test_short_optimisation_prunes_edges(model):
  params, tokens = model
  reference = jax.jit(MODEL.apply)({"params": params}, tokens)
  spec = dataclasses.replace(ep.PruneSpec(), target_sparsity=0.7, steps=150,
                             batch_size=6, mask_lr=0.2, lambda_lr=0.5)
  log_alpha, history = ep.prune(jax.random.PRNGKey(2), params, GRAPH, tokens,
                                reference, rows=(7, 8), spec=spec)
  kept = ep.kept_edges(ep.binary_masks(log_alpha, spec), GRAPH)
  start = ep.kept_edges(ep.binary_masks(ep.full_masks(GRAPH, spec.init_log_alpha),
                                        spec), GRAPH)
  assert len(start) == GRAPH.n_edges()
  # target sparsity 0.7: 30 % of the edges kept (measured: 12 of 46, and an
  # expected sparsity of 0.738 at the last step)
  assert 0.2 * GRAPH.n_edges() <= len(kept) <= 0.4 * GRAPH.n_edges()
  assert abs(history[max(history)][1] - 0.7) < 0.06  # followed the target
