"""The dictionary stand-in (Daniels et al. 2025's OLMo analysis): corpus invariants, prompts, the
evaluators, the report and one tiny end-to-end run."""
import json
import math
import os

import jax
import numpy as np
import pytest

from icl_transience import config as config_lib
from icl_transience import metrics_table
from icl_transience.proj.lds_recall.dictionary import report as dictionary_report
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall.dictionary import task as dic
from helpers import REPO  # pylint: disable=unused-import  (puts configs/ on the path)
import dictionary_recall  # pylint: disable=wrong-import-order

SPEC = dic.CorpusSpec(n_words=20, n_labels=6, n_blocks=5, vocab_size=48)


def blocks_of(tokens, spec=SPEC):
  return tokens[1:].reshape(spec.n_blocks, spec.block_len)


def check_block(block, spec=SPEC):
  """The task of a well-formed few-shot block, from its output."""
  phrase, label, output = block[:3], block[3], block[4:7]
  assert block[7] == spec.separator
  assert spec.label_start <= label < spec.separator
  assert (phrase < spec.n_words).all() and len(set(phrase)) == 3
  table = dic.translation_table(spec.n_words, spec.dictionary_seed)
  answers = [table[phrase] + spec.n_words, phrase, phrase[::-1]]
  matches = [i for i, a in enumerate(answers) if (output == a).all()]
  assert len(matches) == 1
  return matches[0], label


def test_translation_table_is_a_fixed_bijection():
  table = dic.translation_table(200, 0)
  assert sorted(table) == list(range(200))
  np.testing.assert_array_equal(table, dic.translation_table(200, 0))
  assert (table != dic.translation_table(200, 1)).any()


@pytest.fixture(scope="module")
def sets():
  """Normal and misdirected prompts and corpus documents (one compile)."""
  build = jax.jit(dic.eval_sets, static_argnums=(1, 2, 3))
  return jax.tree.map(np.asarray, build(jax.random.PRNGKey(0), SPEC, 200, 400))


def test_documents_plain_or_consistent_few_shot(sets):
  docs = sets["corpus"]
  assert docs.shape == (400, SPEC.seq_len) and (docs[:, 0] == SPEC.document_start).all()
  plain = docs[:, 1:].max(1) < 2 * SPEC.n_words
  assert 0.4 < plain.mean() < 0.6
  for doc in docs[plain]:  # one language per plain document
    body = doc[1:]
    assert (body < SPEC.n_words).all() or (body >= SPEC.n_words).all()
  tasks_seen = set()
  for doc in docs[~plain][:100]:
    bound = {}
    for block in blocks_of(doc):
      task, label = check_block(block)
      assert bound.setdefault(label, task) == task  # a label means one task
      tasks_seen.add(task)
    assert len(set(bound.values())) == len(bound)  # distinct labels per task
  assert tasks_seen == {dic.TRANSLATE, dic.COPY, dic.REVERSE}


@pytest.mark.parametrize("misdirected", [False, True])
def test_query_prompts(sets, misdirected):
  p = sets["misdirected" if misdirected else "normal"]
  position = SPEC.query_label_position
  for i in range(200):
    blocks = blocks_of(p["tokens"][i])
    context = dict(check_block(b)[::-1] for b in blocks[:-1])
    assert sorted(set(context.values())) == [0, 1, 2]  # every task shown
    task, label = check_block(blocks[-1])
    assert task == p["task"][i] and p["tokens"][i][position] == label
    assert p["first"][i] == blocks[-1][4] and p["second"][i] == blocks[-1][5]
    np.testing.assert_array_equal([p["label_first"][i], p["label_second"][i]],
                                  blocks[-1][:2])
    if misdirected:  # a translation whose label the context bound to copy
      assert task == dic.TRANSLATE and context[label] == dic.COPY
    else:
      assert context[label] == task
  if not misdirected:
    assert set(p["task"]) == {0, 1, 2}


def smoke_config(**overrides):
  return config_lib.override(dictionary_recall.get_config("smoke"), overrides)


def test_validate_names_bad_fields():
  dic.DictionaryTask(smoke_config()).validate(1)
  for field, value in (("dictionary.n_blocks", 3), ("dictionary.vocab_size", 40),
                       ("model.max_len", 16), ("dictionary.eval_batch_size", 48)):
    with pytest.raises(UserError, match=field):
      dic.DictionaryTask(smoke_config(**{field: value})).validate(1)


def test_query_metrics_scores_the_right_targets():
  prompts = {k: np.array(v) for k, v in dict(
      first=[3, 4], second=[5, 6], label_first=[1, 1], label_second=[2, 2]).items()}
  one_hot = lambda ids: jax.nn.one_hot(np.array(ids), 8) * 10.0
  scores = dic.query_metrics(one_hot([1, 4]), one_hot([5, 2]), prompts, True)
  np.testing.assert_array_equal(scores["first_follows_label"], [1, 0])
  np.testing.assert_array_equal(scores["first_follows_task"], [0, 1])
  np.testing.assert_array_equal(scores["second_follows_continuation"], [1, 0])
  np.testing.assert_array_equal(scores["second_follows_label"], [0, 1])
  normal = dic.query_metrics(one_hot([3, 4]), one_hot([5, 5]), prompts, False)
  np.testing.assert_array_equal(normal["second"], [1, 0])
  assert normal["first_logprob"][0] > math.log(0.99)


def test_emergence_ratio():
  steps = [0, 100, 200, 400, 800, 1600]
  first = [0.0, 0.0, 0.1, 0.2, 0.9, 1.0]
  second = [0.0, 0.6, 0.9, 1.0, 1.0, 1.0]
  e = dictionary_report.emergence(steps, first, second)
  assert e["first_half_step"] == 800 and e["second_half_step"] == 100
  assert e["ratio"] == 8.0 and e["second_earlier_2x"]
  e = dictionary_report.emergence(steps, second, first)
  assert not e["second_earlier_2x"]


def test_end_to_end_training_and_report(tmp_path):
  from icl_transience.train import loop  # pylint: disable=g-import-not-at-top
  c = smoke_config(total_sequences=640, eval_every=320, **{"ckpt.every": 0})
  loop.train(c, str(tmp_path))
  rows = metrics_table.read(str(tmp_path))
  names = {"first_token": {"acc", "logprob", "acc_translate", "acc_copy",
                           "acc_reverse"},
           "misdirected": {"first_follows_label", "first_follows_task",
                           "second_follows_continuation", "second_follows_label"},
           "corpus": {"loss", "acc"}}
  names["second_token"] = names["first_token"]
  for evaluator, metrics in names.items():
    logged = [r for r in rows if r["evaluator"] == evaluator]
    assert {r["step"] for r in logged} == {0, 20, 40}
    assert metrics <= {r["metric"] for r in logged}
    assert all(math.isfinite(r["value"]) for r in logged)
  loss = {r["step"]: r["value"] for r in rows
          if r["evaluator"] == "corpus" and r["metric"] == "loss"}
  assert loss[40] < loss[0] - 0.5
  summary = dictionary_report.report(str(tmp_path), str(tmp_path / "report"))
  (member,) = summary["members"]
  curve = lambda evaluator, metric: [r["value"] for r in sorted(
      (r for r in rows if (r["evaluator"], r["metric"]) == (evaluator, metric)),
      key=lambda r: r["step"])]
  assert member["steps"] == [0, 20, 40]
  assert member["first_acc"] == curve("first_token", "acc")
  assert member["second_acc"] == curve("second_token", "acc")
  assert member["first_final"] == curve("first_token", "acc")[-1]
  assert member["misdirected_first_follows_label"] == curve(
      "misdirected", "first_follows_label")[-1]
  saved = json.loads((tmp_path / "report" / "report.json").read_text())
  assert saved == json.loads(json.dumps(summary))
  assert os.path.getsize(tmp_path / "report" / "figures" / "dictionary_main.png") > 10_000
