"""The Chan et al. model (Chan et al. 2022: ResNet embedder and transformer)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_transience.errors import UserError
from icl_transience.proj.transience.omniglot import chan_transformer as chan
from icl_transience.nn import resnet
from icl_transience.nn.transformer import count_params

# A small variant: Chan et al.'s architecture at reduced depth, width, number of
# block groups and image size (the embedder pools globally, so any size works).
TINY = chan.ChanTransformer(n_outputs=10, depth=2, d_model=16, n_heads=2,
                            resnet_channels=(4,), resnet_blocks=(1, 1),
                            resnet_strides=(1, 2))
BATCH, CONTEXT, SIDE = 2, 2, 21
LR = 0.1
# The test programs run in milliseconds; XLA's backend optimisations only
# lengthen their compilation.
quick_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_batch(seed=1):
  k_images, k_labels = jax.random.split(jax.random.PRNGKey(seed))
  images = jax.random.uniform(k_images, (BATCH, CONTEXT + 1, SIDE, SIDE, 1))
  labels = jax.random.randint(k_labels, (BATCH, CONTEXT), 0, 10)
  targets = jnp.array([3, 7])
  return images, labels, targets


def loss_fn(params, batch_stats, images, labels, targets):
  logits, batch_stats = chan.apply_model(TINY, params, batch_stats, images,
                                         labels, train=True)
  nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
      logits, targets[:, None], -1)[:, 0]
  return jnp.mean(nll), batch_stats


@quick_jit
def two_sgd_steps(params, batch_stats, images, labels, targets):
  """lax.scan over 2 SGD steps carrying (params, batch_stats); per step the
  loss, the gradients and the batch_stats after the step."""
  def step(carry, _):
    params, batch_stats = carry
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, labels, targets)
    params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
    return (params, batch_stats), (loss, grads, batch_stats)
  return jax.lax.scan(step, (params, batch_stats), None, length=2)


@quick_jit
def evaluate(params, batch_stats, images, labels):
  """Eval mode (model.apply without mutable=: BatchNorm must not try to
  update): query logits, logits at every position, the returned batch_stats;
  and the query logits in train mode."""
  query, returned = chan.apply_model(TINY, params, batch_stats, images, labels,
                                     False)
  every, _ = chan.apply_model(TINY, params, batch_stats, images, labels, False,
                              all_positions=True)
  train_query, _ = chan.apply_model(TINY, params, batch_stats, images, labels,
                                    True)
  return query, every, returned, train_query


@pytest.fixture(scope="module")
def tiny():
  """A fresh tiny model (the rbg PRNG compiles much faster than threefry on
  CPU), and 2 SGD steps of it on one batch."""
  images, labels, targets = tiny_batch()
  params, batch_stats = quick_jit(chan.init_variables, static_argnums=0)(
      TINY, jax.random.key(0, impl="rbg"), images, labels)
  final, per_step = two_sgd_steps(params, batch_stats, images, labels, targets)
  return dict(images=images, labels=labels, **jax.device_get(dict(
      params=params, batch_stats=batch_stats, final=final, per_step=per_step)))


def stem_conv(params, images) -> np.ndarray:
  """The stem convolution of every image, recomputed outside the model."""
  kernel = params["embedder"]["stem_conv"]["kernel"]
  return np.asarray(jax.lax.conv_general_dilated(
      images.reshape(-1, SIDE, SIDE, 1), kernel, (2, 2), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")))


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def paths(tree):
  return {jax.tree_util.keystr(k): np.asarray(x)
          for k, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_parameter_counts_at_the_paper_sizes():
  model = chan.ChanTransformer()
  images = jnp.zeros((1, 9, 105, 105, 1))
  labels = jnp.zeros((1, 8), jnp.int32)
  variables = jax.eval_shape(lambda k: model.init(k, images, labels, False),
                             jax.random.PRNGKey(0))
  params = variables["params"]
  assert count_params(params["embedder"]) == 22_176
  assert count_params(variables["batch_stats"]) == 1_280
  assert count_params(params["block_0"]) == 49_984
  body = sum(count_params(params[f"block_{i}"]) for i in range(12))
  assert body + count_params(params["ln_final"]) == 599_936
  assert params["label_embed"]["embedding"].shape == (12_880, 64)
  assert params["unembed"]["kernel"].shape == (64, 12_880)
  assert count_params(params) == 599_936 + 22_176 + 129 * 12_880 == 2_283_632
  # 105 -> 53 (stem) -> 27 (pool) -> 27, 14, 7, 4 -> mean: a 64-d embedding
  embed = jax.eval_shape(
      lambda: resnet.ResNetEmbedder().init_with_output(
          jax.random.PRNGKey(0), images, False)[0])
  assert embed.shape == (1, 9, 64)
  out = jax.eval_shape(lambda v: model.apply(v, images, labels, False,
                                            all_positions=True), variables)
  assert out.shape == (1, 17, 12_880)


def test_chan_sinusoids_are_sin_half_then_cos_half():
  table = np.asarray(chan.chan_sinusoids(17, 64, 30.0))
  p = np.arange(17)
  np.testing.assert_allclose(table[:, 0], np.sin(p), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(table[:, 32], np.cos(p), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(table[:, 5], np.sin(p / 30 ** (10 / 64)),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(table[:, 63], np.cos(p / 30 ** (62 / 64)),
                             rtol=1e-6, atol=1e-7)


def test_initialisation(tiny):
  leaves = paths(tiny["params"])
  for path, value in leaves.items():
    if path.endswith("['bn_2']['scale']"):
      assert (value == 0).all(), path  # block = its shortcut at init
    elif path.endswith("['scale']"):
      assert (value == 1).all(), path
    elif path.endswith("['bias']"):
      assert (value == 0).all(), path
  table = leaves["['label_embed']['embedding']"]
  assert np.abs(table).max() <= 0.04 and 0.01 < table.std() < 0.02
  # convolutions: truncated normal with variance 1 / fan_in (7 x 7 x 1 stem)
  stem = leaves["['embedder']['stem_conv']['kernel']"]
  assert stem.shape == (7, 7, 1, 64) and 0.13 < stem.std() < 0.155
  assert np.abs(stem).max() <= 2 / 7 / 0.87962566 + 1e-6
  stats = paths(tiny["batch_stats"])
  assert all((v == 0).all() for p, v in stats.items() if p.endswith("['mean']"))
  assert all((v == 1).all() for p, v in stats.items() if p.endswith("['var']"))


def test_gradients_and_batch_statistics_in_train_mode(tiny):
  losses, grads, stats = jax.tree.map(lambda x: x[0], tiny["per_step"])
  assert np.isfinite(losses)
  grads = paths(grads)
  assert set(grads) == set(paths(tiny["params"]))
  assert all(np.isfinite(g).all() for g in grads.values())
  # With bn_2's scale 0 only the residual branches' insides get no gradient.
  silent = ("conv_0", "conv_1", "conv_2", "bn_0", "bn_1")
  for path, g in grads.items():
    inside_branch = any(f"['{name}']" in path for name in silent)
    assert (g == 0).all() == inside_branch, path
  # Running statistics: decay 0.9 from (0, 1), statistics over all B x 3
  # images of the call (here: the stem BN, checked against its own conv).
  stem = stem_conv(tiny["params"], tiny["images"])
  stem_stats = stats["embedder"]["stem_bn"]
  np.testing.assert_allclose(stem_stats["mean"], 0.1 * stem.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stem_stats["var"],
                             0.9 + 0.1 * stem.var((0, 1, 2)), rtol=1e-4)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), stats,
                         tiny["batch_stats"])
  assert all(jax.tree.leaves(changed))


def test_sgd_in_lax_scan_carries_params_and_batch_statistics(tiny):
  losses, grads, stats = tiny["per_step"]
  params, final_stats = tiny["final"]
  assert losses.shape == (2,) and np.isfinite(losses).all()
  assert losses[1] < losses[0]
  # step 2 starts from step 1's params: p2 = p0 - lr (g0 + g1)
  expected = jax.tree.map(lambda p, g: p - LR * (g[0] + g[1]), tiny["params"],
                          grads)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # ... and from step 1's statistics: m2 = 0.9 m1 + 0.1 mean(conv with p1)
  step_1 = jax.tree.map(lambda p, g: p - LR * g[0], tiny["params"], grads)
  stem = stem_conv(step_1, tiny["images"])
  mean_1, mean_2 = stats["embedder"]["stem_bn"]["mean"]
  np.testing.assert_allclose(mean_2, 0.9 * mean_1 + 0.1 * stem.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  assert not np.allclose(mean_1, mean_2)
  # the carried statistics are step 2's, not step 1's
  np.testing.assert_array_equal(final_stats["embedder"]["stem_bn"]["mean"], mean_2)


def test_eval_mode_uses_stored_statistics_and_mutates_nothing(tiny):
  params, images, labels = tiny["params"], tiny["images"], tiny["labels"]
  trained_stats = tiny["final"][1]
  query, every, returned, train_query = evaluate(params, trained_stats, images,
                                                 labels)
  assert_trees_equal(returned, trained_stats)
  np.testing.assert_allclose(every[:, -1], query, rtol=1e-5, atol=1e-6)
  fresh = evaluate(params, tiny["batch_stats"], images, labels)[0]
  assert not np.allclose(query, fresh)  # the stored statistics are used
  # eval: a sequence ignores the rest of the batch; train: it does not
  other = images.at[1].multiply(0.5)
  other_query, _, _, other_train_query = evaluate(params, trained_stats, other,
                                                  labels)
  np.testing.assert_allclose(other_query[0], query[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(other_train_query[0], train_query[0])


def test_positions_only_see_earlier_tokens_in_eval_mode(tiny):
  params, images, labels = tiny["params"], tiny["images"], tiny["labels"]
  stats = tiny["final"][1]
  every = evaluate(params, stats, images, labels)[1]
  assert every.shape == (BATCH, 2 * CONTEXT + 1, 10)
  changes = {4: (images.at[:, -1].multiply(0.5), labels),  # the query image
             3: (images, labels.at[:, 1].add(1)),           # 2nd context label
             2: (images.at[:, 1].multiply(0.5), labels)}    # 2nd context image
  for token, (new_images, new_labels) in changes.items():
    changed = evaluate(params, stats, new_images, new_labels)[1]
    np.testing.assert_allclose(changed[:, :token], every[:, :token],
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(changed[:, token:], every[:, token:]), token


@pytest.mark.parametrize("fields,message", [
    (dict(d_model=30, n_heads=4),
     r"^model.d_model: 30 must be even and divisible by n_heads=4$"),
    (dict(resnet_channels=(16, 32)),
     r"^model.resnet_channels: give the widths of all block groups but the last "
     r"\(which has d_model channels\): 3 entries, got \(16, 32\)$"),
    (dict(resnet_channels=(16, 30, 32)),
     r"^resnet channels: every entry of \(16, 30, 32, 64\) must be divisible by "
     r"the bottleneck ratio 4")])  # (JAX appends a note on its frames)
def test_bad_sizes_are_user_errors(fields, message):
  with pytest.raises(UserError, match=message):
    model = chan.ChanTransformer(**fields)
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 21, 21, 1)),
               jnp.zeros((1, 2), jnp.int32), False)
