"""First- vs second-token accuracy over Hugging Face-style checkpoints (the
OLMo analysis of Daniels et al. 2025, on local files).

  python -m icl_transience.proj.lds_recall.hf_checkpoints --checkpoints=DIR \
      [--prompts=FILE.json] --out=DIR

DIR holds one sub-directory per checkpoint (e.g. step1000/), each with a
config.json and model*.safetensors; the step is the number in the name.
Architectures by config.json "model_type": gpt2 (wte, wpe, h.{i}.ln_1,
attn.c_attn / c_proj as Conv1D (in, out), ln_2, mlp.c_fc / c_proj, ln_f; the
head tied to wte unless lm_head.weight exists) and the Llama family (llama;
olmo: LayerNorm without parameters and optional qkv clipping; olmo2: RMSNorm
after attention / MLP and on queries / keys), all with rotate-half rotary
embeddings and grouped key-value heads.

Safetensors are read with the `safetensors` package (never unpickled); the
weights keep their stored dtype (F32, F16 or BF16) on the device, and the
jitted forward pass computes in float32.

Prompt file (JSON): {"prompts": [{"tokens": [ids], "first": i, "set": name,
"first_target": id, "second_target": id}, ...]} where tokens[i] is the first
output token (predicted at i - 1), tokens[i + 1] the second (predicted at i,
given the true first); targets default to those tokens, "set" to "normal".
Without a file: the dictionary stand-in's prompts (proj/lds_recall/dictionary/task.py), a
"normal" set and a "misdirected" set scored as (first follows the label,
second follows the continuation).
"""
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from absl import app
from absl import flags

from icl_transience import cli
from icl_transience import metrics_table
from icl_transience.errors import UserError
from icl_transience.proj.lds_recall.dictionary import report as dictionary_report
from icl_transience.proj.lds_recall.dictionary import task as dictionary

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16),
                np.dtype(ml_dtypes.bfloat16))
LLAMA_FAMILY = ("llama", "olmo", "olmo2")
_tanh_gelu = lambda x: jax.nn.gelu(x, approximate=True)
ACTIVATIONS = {"gelu_new": _tanh_gelu, "gelu_pytorch_tanh": _tanh_gelu,
               "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "relu": jax.nn.relu}


# --- safetensors ---------------------------------------------------------------
def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a safetensors file, in its stored float dtype (bf16
  stays bf16); UserError if the file is malformed or holds other dtypes."""
  try:
    tensors = safetensors.numpy.load_file(path)
  except (safetensors.SafetensorError, OSError, TypeError, ValueError) as e:
    raise UserError(f"{path}: not a readable safetensors file "
                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
  for name, array in tensors.items():
    if array.dtype not in FLOAT_DTYPES:
      raise UserError(f"{path}: tensor {name!r} has dtype {array.dtype} (supported: "
                      f"{', '.join(str(d) for d in FLOAT_DTYPES)})")
  return tensors


def load_checkpoint(directory: str) -> tuple[dict, dict]:
  """(config.json, {name: array}) of one checkpoint directory; the
  "transformer." prefix of GPT2LMHeadModel files is dropped."""
  config_path = os.path.join(directory, "config.json")
  try:
    with open(config_path) as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{config_path}: unreadable ({e})") from e
  files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
  if not files:
    raise UserError(f"{directory}: no .safetensors file")
  weights = {}
  for name in files:
    weights.update(read_safetensors(os.path.join(directory, name)))
  weights = {k.removeprefix("transformer."): v for k, v in weights.items()}
  if config.get("model_type") not in ("gpt2",) + LLAMA_FAMILY:
    raise UserError(f"{config_path}: unsupported model_type "
                    f"{config.get('model_type')!r} (supported: gpt2, "
                    f"{', '.join(LLAMA_FAMILY)})")
  return config, weights


# --- forward passes --------------------------------------------------------------
def _layer_norm(x, weight=None, bias=None, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  y = (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
  y = y if weight is None else y * weight
  return y if bias is None else y + bias


def _rms_norm(x, weight, eps):
  return x / jnp.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _attend(q, k, v, scale):
  """Causal attention over (B, T, H, hd); k, v may have fewer (grouped) heads."""
  groups = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
  t = q.shape[1]
  scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
  out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)
  return out.reshape(*out.shape[:2], -1)


def gpt2_logits(config: dict, w: dict, tokens):
  """(B, T) ids -> (B, T, vocab) logits of a GPT-2 checkpoint."""
  n_heads, eps = config["n_head"], config.get("layer_norm_epsilon", 1e-5)
  act = ACTIVATIONS.get(config.get("activation_function", "gelu_new"))
  if act is None:
    raise UserError(f"config.json: unsupported activation_function "
                    f"{config['activation_function']!r}")
  b, t = tokens.shape
  x = w["wte.weight"][tokens].astype(jnp.float32) + w["wpe.weight"][:t]
  for i in range(config["n_layer"]):
    p = lambda name: w[f"h.{i}.{name}"]  # pylint: disable=cell-var-from-loop
    h = _layer_norm(x, p("ln_1.weight"), p("ln_1.bias"), eps)
    q, k, v = jnp.split(h @ p("attn.c_attn.weight") + p("attn.c_attn.bias"), 3, -1)
    q, k, v = (a.reshape(b, t, n_heads, -1) for a in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    if config.get("scale_attn_by_inverse_layer_idx", False):
      scale /= i + 1
    x = x + _attend(q, k, v, scale) @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
    h = _layer_norm(x, p("ln_2.weight"), p("ln_2.bias"), eps)
    h = act(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))
    x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
  x = _layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
  return x @ w.get("lm_head.weight", w["wte.weight"]).T


def _rotate(x, theta: float):
  """Rotate-half rotary embedding of (B, T, H, hd) (Hugging Face layout)."""
  t, hd = x.shape[1], x.shape[-1]
  freq = theta ** (-np.arange(0, hd, 2) / hd)
  angle = np.concatenate([np.outer(np.arange(t), freq)] * 2, -1)
  cos, sin = (jnp.asarray(f(angle))[None, :, None] for f in (np.cos, np.sin))
  half = hd // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
  return x * cos + rotated * sin


def llama_logits(config: dict, w: dict, tokens):
  """(B, T) ids -> logits of a llama / olmo / olmo2 checkpoint."""
  kind = config["model_type"]
  if config.get("rope_scaling"):
    raise UserError("config.json: rope_scaling is not supported")
  n_heads = config["num_attention_heads"]
  n_kv = config.get("num_key_value_heads") or n_heads
  head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
  eps, clip = config.get("rms_norm_eps", 1e-6), config.get("clip_qkv")
  theta = config.get("rope_theta", 10000.0)
  norm = ((lambda x, name: _layer_norm(x)) if kind == "olmo" else
          (lambda x, name: _rms_norm(x, w[f"{name}.weight"], eps)))
  linear = lambda x, name: x @ w[f"{name}.weight"].T + w.get(f"{name}.bias", 0.0)
  b, t = tokens.shape
  x = w["model.embed_tokens.weight"][tokens].astype(jnp.float32)
  for i in range(config["num_hidden_layers"]):
    layer = f"model.layers.{i}"
    h = x if kind == "olmo2" else norm(x, f"{layer}.input_layernorm")
    q, k, v = (linear(h, f"{layer}.self_attn.{n}_proj") for n in "qkv")
    if clip is not None:
      q, k, v = (jnp.clip(a, -clip, clip) for a in (q, k, v))
    if kind == "olmo2":
      q, k = norm(q, f"{layer}.self_attn.q_norm"), norm(k, f"{layer}.self_attn.k_norm")
    q, k = (_rotate(a.reshape(b, t, -1, head_dim), theta) for a in (q, k))
    v = v.reshape(b, t, n_kv, head_dim)
    h = linear(_attend(q, k, v, head_dim ** -0.5), f"{layer}.self_attn.o_proj")
    if kind == "olmo2":
      x = x + norm(h, f"{layer}.post_attention_layernorm")
      h = x
    else:
      x = x + h
      h = norm(x, f"{layer}.post_attention_layernorm")
    mlp = f"{layer}.mlp"
    h = linear(jax.nn.silu(linear(h, f"{mlp}.gate_proj")) *
               linear(h, f"{mlp}.up_proj"), f"{mlp}.down_proj")
    x = x + (norm(h, f"{layer}.post_feedforward_layernorm")
             if kind == "olmo2" else h)
  x = norm(x, "model.norm")
  return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


def logits_fn(config: dict):
  return gpt2_logits if config["model_type"] == "gpt2" else llama_logits


def check_prompts_fit(config: dict, weights: dict, records: list[dict],
                      directory: str):
  """UserError if a prompt's ids or length exceed the checkpoint's."""
  table = weights.get("wte.weight", weights.get("model.embed_tokens.weight"))
  if table is None:
    raise UserError(f"{directory}: no token embedding (wte / model.embed_tokens)")
  if max(max(r["tokens"]) for r in records) >= table.shape[0]:
    raise UserError(f"--prompts: token ids exceed the vocabulary "
                    f"({table.shape[0]}) of {directory}")
  limit = config.get("n_positions", math.inf)
  if max(len(r["tokens"]) for r in records) > limit:
    raise UserError(f"--prompts: prompts longer than the {limit} positions "
                    f"of {directory}")


# --- prompts and metrics -----------------------------------------------------------
def dictionary_prompts(n: int = 256, seed: int = 1,
                       spec: dictionary.CorpusSpec = dictionary.CorpusSpec()):
  """Prompt records of the dictionary stand-in: a normal and a misdirected set."""
  k_normal, k_misdirected = jax.random.split(jax.random.PRNGKey(seed))
  first = spec.query_label_position + 1
  records = []
  for name, key, misdirected in (("normal", k_normal, False),
                                 ("misdirected", k_misdirected, True)):
    p = jax.tree.map(np.asarray, dictionary.query_prompts(key, spec, n, misdirected))
    for i in range(n):
      records.append({"tokens": p["tokens"][i, :first + 2].tolist(),
                      "first": first, "set": name,
                      "first_target": int(p["label_first" if misdirected
                                            else "first"][i]),
                      "second_target": int(p["second"][i])})
  return records


def load_prompts(path: str) -> list[dict]:
  """The prompt records of a JSON file, checked; targets filled in."""
  try:
    with open(path) as f:
      records = json.load(f)["prompts"]
  except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise UserError(f"--prompts: {path} is not a prompt file ({e})") from e
  out = []
  for i, r in enumerate(records):
    try:
      tokens, first = [int(t) for t in r["tokens"]], int(r["first"])
    except (KeyError, TypeError, ValueError) as e:
      raise UserError(f"--prompts: prompt {i} of {path} needs integer "
                      f"'tokens' and 'first'") from e
    if not 1 <= first < len(tokens) - 1 or min(tokens) < 0:
      raise UserError(f"--prompts: prompt {i} of {path}: 'first' must be in "
                      f"[1, len(tokens) - 2] and ids >= 0")
    out.append({"tokens": tokens, "first": first, "set": str(r.get("set", "normal")),
                "first_target": int(r.get("first_target", tokens[first])),
                "second_target": int(r.get("second_target", tokens[first + 1]))})
  if not out:
    raise UserError(f"--prompts: {path} holds no prompts")
  return out


def prompt_metrics(logits, records: list[dict], batch_size: int = 16) -> dict:
  """{set: {first_acc, first_logprob, second_acc, second_logprob}} of a
  logits function (B, T) ids -> (B, T, vocab) over the prompt records."""
  scores = {}
  for start in range(0, len(records), batch_size):
    batch = records[start:start + batch_size]
    length = max(len(r["tokens"]) for r in batch)
    tokens = np.zeros((len(batch), length), np.int32)
    for row, r in enumerate(batch):  # right padding: causal, never read
      tokens[row, :len(r["tokens"])] = r["tokens"]
    log_probs = np.asarray(jax.nn.log_softmax(logits(jnp.asarray(tokens)), -1))
    for row, r in enumerate(batch):
      entry = scores.setdefault(r["set"], {k: [] for k in (
          "first_acc", "first_logprob", "second_acc", "second_logprob")})
      for which, position in (("first", r["first"] - 1), ("second", r["first"])):
        target, row_lp = r[f"{which}_target"], log_probs[row, position]
        entry[f"{which}_acc"].append(float(np.argmax(row_lp) == target))
        entry[f"{which}_logprob"].append(float(row_lp[target]))
  return {s: {k: float(np.mean(v)) for k, v in m.items()} for s, m in scores.items()}


def checkpoint_dirs(root: str) -> list[tuple[int, str]]:
  """(step, directory) of every checkpoint under root, by step; a root that
  is itself a checkpoint is step 0."""
  if not os.path.isdir(root):
    raise UserError(f"--checkpoints: {root} is not a directory")
  if os.path.exists(os.path.join(root, "config.json")):
    return [(0, root)]
  found = []
  for name in os.listdir(root):
    path = os.path.join(root, name)
    if os.path.exists(os.path.join(path, "config.json")):
      number = re.search(r"step[-_]?(\d+)", name) or re.search(r"(\d+)", name)
      found.append((int(number.group(1)) if number else 0, path))
  if not found:
    raise UserError(f"--checkpoints: no sub-directory of {root} has a config.json")
  return sorted(found)


def evaluate_checkpoints(root: str, records: list[dict],
                         batch_size: int = 16) -> list[dict]:
  """One row per checkpoint: name, step, model_type and prompt metrics."""
  rows = []
  for step, directory in checkpoint_dirs(root):
    config, weights = load_checkpoint(directory)
    check_prompts_fit(config, weights, records, directory)
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    forward = jax.jit(lambda tokens: logits_fn(config)(config, params, tokens))  # pylint: disable=cell-var-from-loop
    try:
      with jax.default_matmul_precision("float32"):
        metrics = prompt_metrics(forward, records, batch_size)
    except KeyError as e:
      raise UserError(f"{directory}: missing tensor {e}") from e
    rows.append({"name": os.path.basename(os.path.normpath(directory)),
                 "step": step, "model_type": config["model_type"],
                 "metrics": metrics})
  return rows


def format_rows(rows: list[dict]) -> str:
  sets = list(dict.fromkeys(s for r in rows for s in r["metrics"]))
  header = ["step", "checkpoint"] + [f"{s}:{w}" for s in sets
                                     for w in ("first_acc", "second_acc")]
  cells = [header] + [[str(r["step"]), r["name"]] + [
      f"{r['metrics'].get(s, {}).get(w, float('nan')):.3f}"
      for s in sets for w in ("first_acc", "second_acc")] for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
  return "\n".join("  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip()
                   for c in cells)


def run(checkpoints: str, prompts: str, out: str, n_prompts: int = 256,
        seed: int = 1, batch_size: int = 16) -> dict:
  """Evaluates every checkpoint, prints the table, writes out/hf_checkpoints.json."""
  records = load_prompts(prompts) if prompts else dictionary_prompts(n_prompts, seed)
  rows = evaluate_checkpoints(checkpoints, records, batch_size)
  steps = [r["step"] for r in rows]
  normal = [r["metrics"].get("normal") for r in rows]
  result = {"prompts": prompts or f"dictionary (n={n_prompts}, seed={seed})",
            "checkpoints": rows}
  if all(normal) and len(set(steps)) == len(steps):
    result["emergence"] = dictionary_report.emergence(
        steps, [m["first_acc"] for m in normal], [m["second_acc"] for m in normal])
  print(format_rows(rows))
  if "emergence" in result:
    print(dictionary_report.format_emergence(result["emergence"]))
  os.makedirs(out, exist_ok=True)
  metrics_table.atomic_write_text(os.path.join(out, "hf_checkpoints.json"),
                                  json.dumps(result, indent=2) + "\n")
  return result


def define_flags():
  """The command-line flags, defined only when run as a program."""
  flags.DEFINE_string("checkpoints", None, "Directory of checkpoints.", required=True)
  flags.DEFINE_string("prompts", "", "Prompt file (JSON); default: dictionary prompts.")
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_integer("n_prompts", 256, "Dictionary prompts per set.")
  flags.DEFINE_integer("seed", 1, "Seed of the dictionary prompts.")
  flags.DEFINE_integer("batch_size", 16, "Prompts per forward pass.")


@cli.exit_on_user_error
def main(argv):
  del argv
  cli.quiet_library_logs()
  f = flags.FLAGS
  run(f.checkpoints, f.prompts, f.out, f.n_prompts, f.seed, f.batch_size)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
