"""The OLMo stand-in of Daniels et al. (after their OLMo analysis).

A small causal decoder LM learns a synthetic corpus of two "languages" A and
B (n_words ids each) linked by a fixed random bijection, the dictionary
(seeded by `dictionary_seed`). A document is either a plain stream of words
of one language, or few-shot blocks

  a1 a2 a3 <L> o1 o2 o3 ;

where the phrase a1 a2 a3 is A words (distinct), <L> one of n_labels label
ids, and o the phrase translated to B (translate), copied (copy) or reversed
(reverse). Each document binds three distinct labels to the three tasks; the
model must read a label's meaning from its earlier blocks.

Evaluators (held-out prompts from eval_seed; the context blocks show every
task at least once, the final block is the query):
  first_token   accuracy / log-prob of o1 predicted at the final <L> (needs
                the label's in-context meaning), overall and per task
  second_token  accuracy / log-prob of o2 given the true o1 (continuation)
  misdirected   the query is a translation but its label is the one the
                context bound to copy: does o1 follow the label (a1) or the
                translation (dict(a1))? given dict(a1), does o2 follow the
                continuation (dict(a2)) or the label (a2)?
  corpus        next-token loss / accuracy on training-distribution documents

Token ids: A words [0, n), B words [n, 2n), labels [2n, 2n + n_labels), then
the separator ";" and the document start; ids up to vocab_size are unused.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from icl_transience import evaluators
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall.dictionary import decoder
from icl_transience.nn import transformer

TASK_NAMES = ("translate", "copy", "reverse")
TRANSLATE, COPY, REVERSE = range(3)


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """The corpus (hashable: a static jit argument), at the stand-in's defaults."""
  n_words: int = 200           # per language
  n_labels: int = 20
  phrase_len: int = 3
  n_blocks: int = 8            # few-shot blocks per document (our choice)
  plain_fraction: float = 0.5  # share of plain A/B documents (our choice)
  vocab_size: int = 600        # model vocabulary (>= the ids used)
  dictionary_seed: int = 0     # the A -> B bijection

  @property
  def label_start(self) -> int:
    return 2 * self.n_words

  @property
  def separator(self) -> int:
    return self.label_start + self.n_labels

  @property
  def document_start(self) -> int:
    return self.separator + 1

  @property
  def block_len(self) -> int:
    return 2 * self.phrase_len + 2

  @property
  def seq_len(self) -> int:
    """Tokens per document; the model sees seq_len - 1 of them."""
    return 1 + self.n_blocks * self.block_len

  @property
  def query_label_position(self) -> int:
    """Index of the final block's label in a document."""
    return 1 + (self.n_blocks - 1) * self.block_len + self.phrase_len


def corpus_spec(c) -> CorpusSpec:
  d = c.dictionary
  return CorpusSpec(n_words=d.n_words, n_labels=d.n_labels,
                    phrase_len=d.phrase_len, n_blocks=d.n_blocks,
                    plain_fraction=d.plain_fraction, vocab_size=d.vocab_size,
                    dictionary_seed=d.dictionary_seed)


@functools.lru_cache(maxsize=None)
def translation_table(n_words: int, seed: int) -> np.ndarray:
  """The dictionary: A word i translates to B word n_words + table[i]."""
  return np.random.default_rng(seed).permutation(n_words).astype(np.int32)


def _outputs(spec: CorpusSpec, task, phrase):
  """The output phrase of `task` on the A phrase (phrase_len,)."""
  table = jnp.asarray(translation_table(spec.n_words, spec.dictionary_seed))
  options = jnp.stack([table[phrase] + spec.n_words, phrase, phrase[::-1]])
  return options[task]


def _block(spec: CorpusSpec, task, phrase, label):
  return jnp.concatenate([phrase, label[None], _outputs(spec, task, phrase),
                          jnp.array([spec.separator])]).astype(jnp.int32)


def _draw(key, sizes: dict[str, int]) -> dict[str, jax.Array]:
  """Named uint32 words from one threefry call (cheap to compile)."""
  bits = jax.random.bits(key, (sum(sizes.values()),))
  out, start = {}, 0
  for name, n in sizes.items():
    out[name], start = bits[start:start + n], start + n
  return out


def _unit(bits) -> jax.Array:
  """Uniform [0, 1) floats from uint32 words (24 bits each)."""
  return (bits >> 8).astype(jnp.float32) / (1 << 24)


def _below(bits, n: int) -> jax.Array:
  """Uniform integers in [0, n) from uint32 words (bias <= n / 2^32)."""
  return (bits % jnp.uint32(n)).astype(jnp.int32)


def _distinct(bits, n: int, k: int) -> jax.Array:
  """k distinct integers of [0, n), uniformly, from n words (Gumbel top-k)."""
  return jax.lax.top_k(_unit(bits), k)[1].astype(jnp.int32)


def _sizes(spec: CorpusSpec) -> dict[str, int]:
  return {"labels": spec.n_labels, "phrases": spec.n_blocks * spec.n_words,
          "tasks": spec.n_blocks}


def _few_shot(spec: CorpusSpec, words, tasks, misdirect: bool = False):
  """Tokens of a few-shot document of `tasks`, its phrases (n_blocks,
  phrase_len); misdirect: the last block gets the label bound to copy."""
  task_labels = spec.label_start + _distinct(words["labels"], spec.n_labels, 3)
  phrases = jax.vmap(lambda b: _distinct(b, spec.n_words, spec.phrase_len))(
      words["phrases"].reshape(spec.n_blocks, spec.n_words))
  labels = task_labels[tasks]
  if misdirect:
    labels = labels.at[-1].set(task_labels[COPY])
  blocks = jax.vmap(functools.partial(_block, spec))(tasks, phrases, labels)
  tokens = jnp.concatenate([jnp.array([spec.document_start], jnp.int32),
                            blocks.reshape(-1)])
  return tokens, phrases


def sample_document(key, spec: CorpusSpec):
  """One training document, (seq_len,) int32."""
  words = _draw(key, {**_sizes(spec), "plain": 1, "language": 1,
                      "stream": spec.seq_len - 1})
  few_shot, _ = _few_shot(spec, words, _below(words["tasks"], 3))
  language = _below(words["language"], 2)
  plain = jnp.concatenate([jnp.array([spec.document_start], jnp.int32),
                           _below(words["stream"], spec.n_words)
                           + language * spec.n_words])
  is_plain = _unit(words["plain"][0]) < spec.plain_fraction
  return jnp.where(is_plain, plain, few_shot)


def sample_documents(key, spec: CorpusSpec, n: int):
  return jax.vmap(lambda k: sample_document(k, spec))(jax.random.split(key, n))


def query_prompt(key, spec: CorpusSpec, misdirected: bool = False) -> dict:
  """One evaluation document whose final block is the query.

  Context blocks show every task at least once (in random order). Returns the
  tokens and the query's task, its A phrase and the ids an answer may follow:
  first / second = the true o1 / o2 of the shown (teacher-forced) outputs;
  label_first / label_second = a1 / a2, the copy answers a misdirected
  label asks for.
  """
  n_context = spec.n_blocks - 1
  words = _draw(key, {**_sizes(spec), "order": n_context})
  # tasks 0, 1, 2 then random ones, shuffled: every task appears
  context = jnp.concatenate([jnp.arange(3), _below(words["tasks"][3:n_context], 3)])
  context = context[_distinct(words["order"], n_context, n_context)]
  query = (jnp.int32(TRANSLATE) if misdirected
           else _below(words["tasks"][-1], 3))
  tasks = jnp.concatenate([context, query[None]]).astype(jnp.int32)
  tokens, phrases = _few_shot(spec, words, tasks, misdirected)
  position = spec.query_label_position
  return {"tokens": tokens, "task": query,
          "first": tokens[position + 1], "second": tokens[position + 2],
          "label_first": phrases[-1, 0], "label_second": phrases[-1, 1]}


def query_prompts(key, spec: CorpusSpec, n: int, misdirected: bool = False):
  return jax.vmap(lambda k: query_prompt(k, spec, misdirected))(
      jax.random.split(key, n))


def eval_sets(key, spec: CorpusSpec, n_prompts: int, n_documents: int):
  """The fixed evaluation data: normal and misdirected query prompts and
  training-distribution documents ("corpus")."""
  k_normal, k_misdirected, k_corpus = jax.random.split(key, 3)
  return {"normal": query_prompts(k_normal, spec, n_prompts, False),
          "misdirected": query_prompts(k_misdirected, spec, n_prompts, True),
          "corpus": sample_documents(k_corpus, spec, n_documents)}


def _answer_scores(logits, target):
  """(accuracy, log-prob) per prompt of `target` under (n, vocab) logits."""
  log_probs = jax.nn.log_softmax(logits)
  hit = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
  return hit, jnp.take_along_axis(log_probs, target[:, None], 1)[:, 0]


def query_metrics(first_logits, second_logits, prompts, misdirected: bool):
  """Per-prompt scores {name: (n,)} of the two answer positions."""
  if misdirected:
    names = {"first_follows_label": (first_logits, "label_first"),
             "first_follows_task": (first_logits, "first"),
             "second_follows_continuation": (second_logits, "second"),
             "second_follows_label": (second_logits, "label_second")}
  else:
    names = {"first": (first_logits, "first"), "second": (second_logits, "second")}
  out = {}
  for name, (logits, target) in names.items():
    out[name], out[f"{name}_logprob"] = _answer_scores(logits, prompts[target])
  return out


class DictionaryTask:
  """Next-token prediction on the dictionary corpus."""

  shown = {"first_token": "acc", "second_token": "acc",
           "misdirected": "first_follows_label"}

  def __init__(self, c):
    self.c = c
    self.spec = corpus_spec(c)
    self.model = decoder.build_model(c)
    self.evaluators = {
        "first_token": evaluators.Evaluator(
            self._part("normal"), functools.partial(self._token_metrics, "first")),
        "second_token": evaluators.Evaluator(
            self._part("normal"), functools.partial(self._token_metrics, "second")),
        "misdirected": evaluators.Evaluator(self._part("misdirected"),
                                            self._misdirected_metrics),
        "corpus": evaluators.Evaluator(self._part("corpus"), self._corpus_metrics)}

  def validate(self, n_devices: int):
    s, d, m = self.spec, self.c.dictionary, self.c.model
    checks = [
        (s.n_words >= s.phrase_len >= 2, "dictionary.n_words",
         f"need n_words >= phrase_len >= 2 (got {s.n_words}, {s.phrase_len})"),
        (s.n_labels >= 3, "dictionary.n_labels", "need >= 3 (one per task)"),
        (s.n_blocks >= 4, "dictionary.n_blocks",
         "need >= 4 (three context blocks, one per task, and the query)"),
        (0.0 <= s.plain_fraction <= 1.0, "dictionary.plain_fraction",
         "must be in [0, 1]"),
        (s.vocab_size >= s.document_start + 1, "dictionary.vocab_size",
         f"{s.vocab_size} < the {s.document_start + 1} ids the corpus uses"),
        (m.max_len >= s.seq_len - 1, "model.max_len",
         f"{m.max_len} positions, but documents have {s.seq_len - 1} inputs"),
        (m.d_model % m.n_heads == 0, "model.n_heads",
         f"must divide d_model={m.d_model}"),
        (self.c.batch_size % n_devices == 0, "batch_size",
         f"must be a multiple of the {n_devices} devices"),
        (d.eval_prompts > 0 and d.eval_prompts % d.eval_batch_size == 0,
         "dictionary.eval_batch_size", "must divide dictionary.eval_prompts"),
    ]
    for ok, field, message in checks:
      if not ok:
        raise UserError(f"{field}: {message}")

  def init_weights(self, key):
    tokens = jnp.zeros((1, self.spec.seq_len - 1), jnp.int32)
    return {"params": self.model.init(key, tokens)["params"]}

  def constants(self, sharding):
    del sharding
    return None

  def sample_batch(self, key, consts, hyper, step):
    del consts, hyper, step
    return {"tokens": sample_documents(key, self.spec, self.c.batch_size)}

  def _next_token(self, params, tokens):
    logits = self.model.apply({"params": params}, tokens[:, :-1])
    targets = tokens[:, 1:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    acc = jnp.mean(jnp.argmax(logits, -1) == targets)
    return jnp.mean(ce), acc

  def loss(self, weights, batch, hyper, step):
    del hyper, step
    loss, acc = self._next_token(weights["params"], batch["tokens"])
    return loss, ({"loss": loss, "acc": acc}, None)

  def _part(self, name: str):
    """key -> part `name` of eval_sets from the run's eval seed (the parts
    share one key split, so an evaluator's set does not depend on its slot)."""
    d = self.c.dictionary
    return lambda key: eval_sets(jax.random.PRNGKey(self.c.eval_seed), self.spec,
                                 d.eval_prompts, d.eval_batch_size)[name]

  def _chunked(self, fn, tree):
    """lax.map of fn over eval_batch_size chunks; scores concatenated."""
    size = self.c.dictionary.eval_batch_size
    chunks = jax.tree.map(lambda x: x.reshape(-1, size, *x.shape[1:]), tree)
    out = jax.lax.map(fn, chunks)
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)

  def _query_scores(self, params, prompts, misdirected: bool):
    position = self.spec.query_label_position

    def scores(chunk):
      read = jnp.broadcast_to(jnp.array([position, position + 1]),
                              (chunk["tokens"].shape[0], 2))
      logits = self.model.apply({"params": params}, chunk["tokens"][:, :-1],
                                read=read)
      return query_metrics(logits[:, 0], logits[:, 1], chunk, misdirected)

    return self._chunked(scores, prompts)

  def _token_metrics(self, which: str, weights, consts, prompts):
    """first_token / second_token: accuracy and log-prob, overall and per task."""
    del consts
    normal = self._query_scores(weights["params"], prompts, False)
    metrics = {"acc": normal[which].mean(),
               "logprob": normal[f"{which}_logprob"].mean()}
    for index, name in enumerate(TASK_NAMES):
      is_task = (prompts["task"] == index).astype(jnp.float32)
      metrics[f"acc_{name}"] = ((normal[which] * is_task).sum()
                                / jnp.maximum(is_task.sum(), 1.0))
    return metrics

  def _misdirected_metrics(self, weights, consts, prompts):
    del consts
    scores = self._query_scores(weights["params"], prompts, True)
    return {k: v.mean() for k, v in scores.items()}

  def _corpus_metrics(self, weights, consts, documents):
    del consts
    loss, acc = self._next_token(weights["params"], documents)
    return {"loss": loss, "acc": acc}


def corpus_block() -> ml_collections.ConfigDict:
  """c.dictionary: the corpus and its evaluators."""
  return ml_collections.ConfigDict(dict(
      n_words=200,           # per language (A and B)
      n_labels=20,           # symbolic label ids
      phrase_len=3,          # a1 a2 a3 <L> o1 o2 o3 ;
      n_blocks=8,            # few-shot blocks per document (our choice)
      plain_fraction=0.5,    # share of plain A/B word streams (our choice)
      vocab_size=600,
      dictionary_seed=0,     # the A -> B bijection
      eval_prompts=1024,     # held-out prompts per evaluator
      eval_batch_size=256,
  ))


def blocks(c) -> dict:
  """The dictionary task's config blocks with their defaults: its decoder
  (learned positions) and `dictionary`."""
  del c
  return {"model": transformer.model_block(depth=6, d_model=256, mlp_ratio=4,
                                           max_len=64),
          "dictionary": corpus_block()}
