"""The coopetition transformer (Singh et al. 2025, Sec. 2): parameter counts,
variants, causality."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from icl_transience.proj.transience import classifier_config
from icl_transience.proj.transience import interventions
from icl_transience.nn import transformer
from icl_transience.proj.transience import classifier


def n_params(**model_overrides):
  c = classifier_config.coopetition_config()
  for k, v in model_overrides.items():
    c.model[k] = v
  model = classifier.build_model(c.model, classifier_config.n_outputs(c))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 3, 512)), jnp.zeros((1, 2), jnp.int32))
  return transformer.count_params(shapes["params"])


def test_default_parameter_count_is_the_papers():
  assert n_params() == 1_719_232


def test_variant_parameter_counts():
  assert n_params(mlp_ratio=4) == 1_785_664
  assert n_params(depth=12, mlp_ratio=4, positions="sinusoidal") == 2_280_896
  assert n_params(depth=1) == 1_719_232 - 16_512


def tiny_model(positions, mlp_ratio=0):
  """A 2-block model, 4 two-pair sequences and its initial variables."""
  cfg = ml_collections.ConfigDict(dict(depth=2, d_model=16, n_heads=2,
                                       mlp_ratio=mlp_ratio, positions=positions,
                                       max_len=32, pos_timescale=30.0,
                                       attention_bias=False))
  model = classifier.build_model(cfg, 10)
  feats = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 8))
  labels = jnp.array([[1, 2]] * 4)
  return model, feats, labels, model.init(jax.random.PRNGKey(0), feats, labels)


@pytest.mark.parametrize("positions", transformer.POSITIONS)
def test_query_logits_ignore_nothing_before_and_positions_matter(positions):
  model, feats, labels, params = tiny_model(positions)
  out = model.apply(params, feats, labels)
  assert out.shape == (4, 10) and np.isfinite(out).all()
  # every input token influences the query logits
  assert not np.allclose(out, model.apply(params, feats, labels.at[:, 0].set(3)))
  assert not np.allclose(out, model.apply(params, feats.at[:, 0].add(1.0), labels))
  # swapping the two context pairs changes the output only through positions
  swapped = model.apply(params, feats[:, [1, 0, 2]], labels[:, ::-1])
  assert not np.allclose(out, swapped, atol=1e-6)


def test_sinusoids_interleave_sin_and_cos():
  table = np.asarray(transformer.sinusoids(5, 8, 30.0))
  np.testing.assert_allclose(table[:, 0], np.sin(np.arange(5)), rtol=1e-6)
  np.testing.assert_allclose(table[:, 1], np.cos(np.arange(5)), rtol=1e-6)
  np.testing.assert_allclose(table[3, 2], np.sin(3 / 30 ** 0.25), rtol=1e-6)


@pytest.mark.parametrize("positions", transformer.POSITIONS)
def test_a_token_changes_no_earlier_position(positions):
  """Causal attention: the residual streams of every block before token t
  are those of a sequence whose token t (and later ones) differ."""
  model, feats, labels, variables = tiny_model(positions, mlp_ratio=4)
  params = variables["params"]
  stream = lambda f, l: np.asarray(interventions.record(model, params, f, l)["residual"])
  clean = stream(feats, labels)  # (B, depth + 1, tokens, D); tokens x1 y1 x2 y2 xq
  for t, (f, l) in {1: (feats, labels.at[:, 0].set(7)),
                    2: (feats.at[:, 1].add(1.0), labels),
                    4: (feats.at[:, 2].add(1.0), labels)}.items():
    changed = stream(f, l)
    np.testing.assert_array_equal(changed[:, :, :t], clean[:, :, :t])
    assert (np.abs(changed[:, -1, t] - clean[:, -1, t]).sum(-1) > 1e-4).all()
