"""Interleaved-LDS associative recall (Daniels et al. 2025).

A GPT-2 regressor (proj/lds_recall/gpt2.py, Daniels et al. 2025) predicts the next state at every
position of interleaved traces (proj/lds_recall/lds.py, Daniels et al. 2025) drawn on device from
the fixed pool of training trajectories (the task's constants; None when
`lds.resample_trajectories`). Loss (Daniels et al. 2025): the squared error summed over
the state, averaged over the positions whose next token is an observation.

Evaluators (Daniels et al. 2025), from data fixed by `eval_seed`:
  pretrain_test   `pretrain_traces` traces of the training generator on a
                  separate pool of `pretrain_systems` unseen systems (one
                  trajectory each; the authors: 40,000 traces on 40,000
                  systems): "mse", the squared error summed over the state
                  and averaged over every position of every trace, label
                  rows counting 0, as the authors average it; "loss", over
                  observation targets, as in training
  pretrain_train  the same on the first `pretrain_systems` systems of the
                  training pool and their own trajectories (memorisation;
                  with resample_trajectories, another unseen pool)
  train_needle_h{H}_late{k}  needle prompts on training systems and their own
                  training trajectories, shown from time k on (the authors'
                  `train` source with late_start k; H the first haystack
                  length): memorisation against needle_h{H}; one trial per
                  example, `train_needle_examples` examples
  needle_h{H}     resume prompts of haystack length H (needle farthest back,
                  `needle_config`): after_final_{k}_{q25,median,q75} and
                  after_initial_{k}_* -- the 25/50/75th percentiles over
                  examples of the median over trials (Daniels et al. 2025)
  {variant}_h{H}  the same for each OOD variant of lds_prompts.VARIANTS in
                  `ood_variants`, at every H of `ood_haystack_lens`, or at
                  its own lengths ('synchronised@1,2,3')
Each evaluator's fixed set is keys only (`eval_keys`, from the eval seed):
the pre-training traces (eval_batch at a time) and the needle prompts (one
example at a time) are generated inside its metrics from fixed keys, since
40,000 traces of 250 57-d tokens, or a 1000-trial prompt set of the longer
haystacks, would take gigabytes. Every needle evaluator reads the same
prompt key, so they differ only in their prompts' shape.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections

from icl_transience import evaluators

from icl_transience.proj.lds_recall import lds
from icl_transience.errors import UserError, check
from icl_transience.nn import transformer
from icl_transience.proj.lds_recall import lds_prompts
from icl_transience.proj.lds_recall import gpt2

QUARTILES = ("q25", "median", "q75")
make_pool = jax.jit(lds.make_pool, static_argnums=(1, 2))


def lds_spec(c) -> lds.LDSSpec:
  """The trace generator of config c (every LDSSpec field is a c.lds field)."""
  return lds.LDSSpec(**{f.name: c.lds[f.name]
                        for f in dataclasses.fields(lds.LDSSpec)})


def needle_spec(c, haystack_len: int, variant: str = "normal",
                spec: lds.LDSSpec | None = None) -> lds_prompts.NeedleSpec:
  return lds_prompts.variant(
      variant, haystack_len=haystack_len, segment_len=c.lds.needle_segment_len,
      query_len=c.lds.needle_query_len, n_examples=c.lds.needle_examples,
      n_trials=c.lds.needle_trials, n_test_systems=c.lds.needle_test_systems,
      lds_spec=spec or lds_spec(c))


def train_needle_evaluators(c) -> dict[str, tuple[int, int]]:
  """Evaluator name -> (haystack length, late start) of the memorisation
  prompts (none when trajectories are resampled: no fixed ones to recall)."""
  if c.lds.resample_trajectories or not c.lds.haystack_lens:
    return {}
  h = c.lds.haystack_lens[0]
  return {f"train_needle_h{h}_late{k}": (h, k) for k in c.lds.train_needle_late_starts}


def train_needle_spec(c, haystack_len: int, late_start: int,
                      spec: lds.LDSSpec | None = None) -> lds_prompts.NeedleSpec:
  """Needle prompts on the training pool: one trial (the system's own
  trajectory), examples = consecutive blocks of training systems."""
  spec = spec or lds_spec(c)
  return dataclasses.replace(
      needle_spec(c, haystack_len, "normal", spec), late_start=late_start,
      n_examples=c.lds.train_needle_examples, n_trials=1,
      n_test_systems=spec.n_train_systems)


def eval_spec(spec: lds.LDSSpec) -> lds.LDSSpec:
  """The generator of the pre-training error sets: fixed trajectories and
  no backstories (the authors add those in training only)."""
  return dataclasses.replace(spec, resample_trajectories=False,
                             backstory_systems=0)


def pretrain_chunk(key, pool: lds.LDSPool, spec: lds.LDSSpec, batch: int,
                   i) -> lds.LDSBatch:
  """Traces i * batch .. (i + 1) * batch - 1 of a pre-training error set."""
  return lds.sample_batch(jax.random.fold_in(key, i), spec, pool, batch)


def pretrain_error(predict, key, pool: lds.LDSPool, spec: lds.LDSSpec,
                   n_traces: int, batch: int) -> dict:
  """Pre-training error of `predict` (inputs -> predictions) on n_traces
  traces of the training generator over `pool`, `batch` traces a pass."""
  def chunk(i):
    traces = pretrain_chunk(key, pool, spec, batch, i)
    errors = lds.position_errors(predict(traces.inputs), traces)
    return jnp.sum(errors), jnp.sum(traces.mask)

  sums, counts = jax.lax.map(chunk, jnp.arange(n_traces // batch))
  total = jnp.sum(sums)
  return {"mse": total / (n_traces * spec.context_len),
          "loss": total / jnp.maximum(jnp.sum(counts), 1)}


def needle_evaluators(c) -> dict[str, tuple[int, str]]:
  """Evaluator name -> (haystack length, variant). An OOD entry is
  'variant' (at every H of ood_haystack_lens) or 'variant@H,H,...'."""
  out = {f"needle_h{h}": (h, "normal") for h in c.lds.haystack_lens}
  for entry in c.lds.ood_variants:
    variant, sep, lengths = entry.partition("@")
    try:
      lengths = ([int(h) for h in lengths.split(",")] if sep
                 else list(c.lds.ood_haystack_lens))
    except ValueError as e:
      raise UserError(f"lds.ood_variants: '{entry}' is not variant@H[,H...] "
                      "with whole haystack lengths") from e
    for h in lengths:
      out[f"{variant}_h{h}"] = (h, variant)
  return out


class LDSTask:
  """The LDS recall task of Daniels et al. 2025 as a plug-in of the shared trainer."""

  def __init__(self, c):
    self.c = c
    self.batch_size = c.batch_size
    self.needle_config = c.lds.needle_config
    self.final_steps = tuple(c.lds.final_steps)
    self.initial_steps = tuple(c.lds.initial_steps)
    self.model = gpt2.GPT2(
        state_dim=c.lds.state_dim, d_model=c.model.d_model,
        depth=c.model.depth, n_heads=c.model.n_heads,
        mlp_ratio=c.model.mlp_ratio, max_len=c.model.max_len,
        remat=c.model.remat)
    first = f"needle_h{c.lds.haystack_lens[0]}" if c.lds.haystack_lens else None
    self.shown = {"pretrain_test": "mse"}
    if first:
      self.shown[first] = "after_final_1_median"
    self.evaluators = self._evaluators()

  @property
  def spec(self) -> lds.LDSSpec:
    return lds_spec(self.c)

  def validate(self, n_devices: int) -> None:
    c, spec = self.c, self.spec  # LDSSpec checks its own fields
    check(c.batch_size > 0 and c.batch_size % n_devices == 0, "batch_size",
           f"{c.batch_size} must be a positive multiple of the {n_devices} "
           "devices")
    check(c.model.d_model % c.model.n_heads == 0, "model.n_heads",
           f"must divide d_model={c.model.d_model}")
    check(c.model.depth >= 1 and c.model.mlp_ratio >= 1, "model.depth",
           "depth and mlp_ratio must be >= 1")
    check(c.model.max_len >= spec.context_len, "model.max_len",
           f"{c.model.max_len} positions, but traces have {spec.context_len}")
    check(c.lds.pretrain_traces > 0 and c.lds.eval_batch > 0,
           "lds.pretrain_traces", "pretrain_traces and eval_batch must be > 0")
    check(c.lds.pretrain_traces % c.lds.eval_batch == 0, "lds.pretrain_traces",
           f"{c.lds.pretrain_traces} is not a multiple of lds.eval_batch "
           f"({c.lds.eval_batch})")
    check(spec.max_systems <= c.lds.pretrain_systems <= spec.n_train_systems,
           "lds.pretrain_systems", f"must lie in [lds.max_systems, "
           f"lds.n_train_systems] = [{spec.max_systems}, "
           f"{spec.n_train_systems}]")
    check(bool(c.lds.haystack_lens), "lds.haystack_lens", "needs one length")
    for field in ("final_steps", "initial_steps"):
      top = c.lds[{"final_steps": "needle_query_len",
                   "initial_steps": "needle_segment_len"}[field]]
      check(all(1 <= k <= top for k in c.lds[field]), f"lds.{field}",
             f"steps must lie in [1, {top}], got {tuple(c.lds[field])}")
    for name, (h, variant) in needle_evaluators(c).items():
      check(variant in lds_prompts.VARIANTS, "lds.ood_variants",
             f"unknown '{variant}' (choose from "
             f"{', '.join(lds_prompts.VARIANTS)})")
      check(0 <= self.needle_config < h, "lds.needle_config",
             f"must be in [0, {h}) for evaluator {name}")
      try:
        needle_spec(c, h, variant, spec)
      except UserError as e:
        raise UserError(f"lds (evaluator {name}): {e}") from e
    for name, (h, late) in train_needle_evaluators(c).items():
      check(late >= 0 and c.lds.train_needle_examples >= 1,
             "lds.train_needle_late_starts", "late starts must be >= 0 and "
             "lds.train_needle_examples >= 1")
      try:
        train_needle_spec(c, h, late, spec)
      except UserError as e:
        raise UserError(f"lds (evaluator {name}): {e}") from e
      check(late + c.lds.needle_segment_len + c.lds.needle_query_len
             <= spec.trajectory_len, "lds.train_needle_late_starts",
             f"late start {late} runs past the {spec.trajectory_len}-state "
             "training trajectories")

  def init_weights(self, key) -> dict:
    tokens = jnp.zeros((1, self.spec.context_len, self.spec.token_dim))
    return {"params": self.model.init(key, tokens)["params"]}

  def constants(self, sharding):
    """The fixed pool of training trajectories (None when resampling)."""
    spec = self.spec
    if spec.resample_trajectories:
      return None
    pool = make_pool(jax.random.PRNGKey(self.c.lds.trajectory_seed), spec,
                     spec.n_train_systems)
    return jax.device_put(pool, sharding)

  def sample_batch(self, key, consts, hyper, step) -> lds.LDSBatch:
    del hyper, step
    return lds.sample_batch(key, self.spec, consts, self.batch_size)

  def loss(self, weights, batch: lds.LDSBatch, hyper, step):
    del hyper, step
    predictions = self.model.apply({"params": weights["params"]}, batch.inputs)
    errors = lds.position_errors(predictions, batch)
    loss = jnp.sum(errors) / jnp.maximum(jnp.sum(batch.mask), 1)
    return loss, ({"loss": loss, "mse": jnp.mean(errors)}, None)

  def eval_keys(self) -> dict:
    """The keys of the pre-training traces, their test pool (and, when
    resampling, an unseen "training" pool) and every needle prompt set."""
    names = ("traces", "test_pool", "other_pool", "needle")
    return dict(zip(names, jax.random.split(
        jax.random.PRNGKey(self.c.eval_seed), len(names))))

  def _evaluators(self) -> dict:
    """pretrain_test, pretrain_train, then the needle evaluators (all of
    them: the lds block's lists name them)."""
    def keys_of(*names):  # a fixed set: the run's own keys (not the slot's)
      return lambda key: {n: self.eval_keys()[n] for n in names}
    out = {name: evaluators.Evaluator(keys_of("traces", pool), functools.partial(
               self._pretrain_metrics, i))
           for i, (name, pool) in enumerate((("pretrain_test", "test_pool"),
                                             ("pretrain_train", "other_pool")))}
    # (validate checks the needle specs first, naming the evaluator)
    for name, args in needle_evaluators(self.c).items():
      out[name] = evaluators.Evaluator(keys_of("needle"), functools.partial(
          self._needle_metrics, needle_spec, args, False))
    for name, args in train_needle_evaluators(self.c).items():
      out[name] = evaluators.Evaluator(keys_of("needle"), functools.partial(
          self._needle_metrics, train_needle_spec, args, True))
    return out

  def _pretrain_metrics(self, which: int, weights, consts, keys) -> dict:
    """Error on pre-training set `which` (0 test, 1 training systems)."""
    predict = lambda x: self.model.apply({"params": weights["params"]}, x)
    key = jax.random.split(keys["traces"])[which]
    pool = self.pretrain_pools(keys, consts, which)
    return pretrain_error(predict, key, pool, eval_spec(self.spec),
                          self.c.lds.pretrain_traces, self.c.lds.eval_batch)

  def _needle_metrics(self, make_spec, args, on_training_pool: bool, weights,
                      consts, keys):
    return self._needle(weights["params"], keys["needle"],
                        make_spec(self.c, *args, self.spec),
                        pool=consts if on_training_pool else None)

  def pretrain_pools(self, keys, consts, which: int) -> lds.LDSPool:
    """The pool of pre-training error set `which`: 0 the test systems, 1
    the training systems (the trainer's pool, or an unseen one when
    trajectories are resampled)."""
    spec, n = eval_spec(self.spec), self.c.lds.pretrain_systems
    if which == 0:
      return lds.make_pool(keys["test_pool"], spec, n)
    return (lds.make_pool(keys["other_pool"], spec, n) if consts is None
            else jax.tree.map(lambda x: x[:n], consts))

  def pretrain_traces(self, keys, consts) -> dict[str, lds.LDSBatch]:
    """Every trace of both pre-training error sets at once, as their
    evaluators read them a chunk at a time (for small sets: inspection and
    tests); keys = eval_keys()."""
    lds_c, spec = self.c.lds, eval_spec(self.spec)
    out = {}
    for which, (name, key) in enumerate(zip(("pretrain_test", "pretrain_train"),
                                            jax.random.split(keys["traces"]))):
      pool = self.pretrain_pools(keys, consts, which)
      chunks = [pretrain_chunk(key, pool, spec, lds_c.eval_batch, i)
                for i in range(lds_c.pretrain_traces // lds_c.eval_batch)]
      out[name] = jax.tree.map(lambda *x: jnp.concatenate(x), *chunks)
    return out

  # --- evaluation internals --------------------------------------------------
  def _predict(self, params, tokens):
    """(N, L, token_dim) -> (N, L, state_dim), eval_batch sequences a pass."""
    one = lambda x: self.model.apply({"params": params}, x[None])[0]
    return jax.lax.map(one, tokens, batch_size=self.c.lds.eval_batch)

  def _needle(self, params, key, spec: lds_prompts.NeedleSpec,
              pool: lds.LDSPool | None = None) -> dict:
    """Quartiles over examples of trial-median step errors (pool: prompts
    on its systems and their own trajectories)."""
    def one_example(example):
      tokens = lds_prompts.needle_prompts(key, spec, example,
                                          self.needle_config, pool)
      errors = lds_prompts.prediction_errors(
          self._predict(params, tokens[:, :-1]), tokens, self.spec)
      return (lds_prompts.trial_medians(
                  lds_prompts.after_final(errors, spec, self.final_steps)),
              lds_prompts.trial_medians(lds_prompts.after_initial(
                  errors, spec, self.needle_config, self.initial_steps)))

    # several examples a pass when they are small (one trial each)
    per_pass = max(1, self.c.lds.eval_batch // spec.n_trials)
    final, initial = jax.lax.map(one_example, jnp.arange(spec.n_examples),
                                 batch_size=per_pass)
    metrics = {}
    for kind, steps, medians in (
        ("after_final", self.final_steps, final),
        ("after_initial", self.initial_steps, initial)):
      quartiles = lds_prompts.example_quartiles(medians)
      for i, k in enumerate(steps):
        for j, q in enumerate(QUARTILES):
          metrics[f"{kind}_{k}_{q}"] = quartiles[j, i]
    return metrics


def lds_block() -> ml_collections.ConfigDict:
  """c.lds: the generator (every LDSSpec field) and the evaluators."""
  b = ml_collections.ConfigDict(
      {f: getattr(lds.LDSSpec(), f) for f in lds.LDSSpec.__dataclass_fields__})
  b.trajectory_seed = 0          # the fixed pool of training trajectories
  b.haystack_lens = (5,)         # needle_h{H} evaluators
  b.needle_segment_len = 10      # observations per haystack segment
  b.needle_query_len = 10        # observations in the query segment
  b.needle_examples = 50
  b.needle_trials = 1000         # trajectories per example
  b.needle_test_systems = 100
  b.needle_config = 0            # haystack rotation: 0 = needle farthest back
  b.final_steps = (1, 2, 3, 5, 10)    # k of "k after final"
  b.initial_steps = (2, 3, 4, 5, 6)   # k of "k after initial"
  # names of lds_prompts.VARIANTS, each at every H of ood_haystack_lens or
  # at its own: ("misdirected_label@2", "synchronised@1,2,3")
  b.ood_variants = ()
  b.ood_haystack_lens = (2,)
  b.pretrain_traces = 40_000     # traces per pre-training error set
  b.pretrain_systems = 40_000    # systems (one trajectory each) per set
  # memorisation: needle prompts on training systems, from these start times
  b.train_needle_late_starts = (0, 1, 2)
  b.train_needle_examples = 1000
  b.eval_batch = 250             # sequences per forward pass in evaluation
  return b


def blocks(c) -> dict:
  """The LDS task's config blocks with their defaults: its GPT-2 model
  (learned positions; remat: recompute blocks in the backward pass) and
  `lds`."""
  del c
  return {"model": transformer.model_block(mlp_ratio=4, max_len=2048, remat=False),
          "lds": lds_block()}
