"""The Hugging Face checkpoint reader: safetensors files read in their own
dtype and malformed ones refused, GPT-2 and Llama-family forward passes
(bf16 weights too) against numpy re-computations, and the per-checkpoint
first / second-token table."""
import json
import math
import os
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from icl_transience.proj.lds_recall import hf_checkpoints as hf
from icl_transience.errors import UserError

D, LAYERS, HEADS, VOCAB, POSITIONS = 16, 2, 2, 50, 12


def gpt2_checkpoint(directory, seed=0, dtype=np.float32):
  """A random GPT-2 checkpoint stored in `dtype`; its weights (as float32)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)
  w = {"wte.weight": normal(VOCAB, D), "wpe.weight": normal(POSITIONS, D),
       "ln_f.weight": 1 + normal(D), "ln_f.bias": normal(D)}
  for i in range(LAYERS):
    for name, shape in (("ln_1.weight", (D,)), ("ln_1.bias", (D,)),
                        ("attn.c_attn.weight", (D, 3 * D)), ("attn.c_attn.bias", (3 * D,)),
                        ("attn.c_proj.weight", (D, D)), ("attn.c_proj.bias", (D,)),
                        ("ln_2.weight", (D,)), ("ln_2.bias", (D,)),
                        ("mlp.c_fc.weight", (D, 4 * D)), ("mlp.c_fc.bias", (4 * D,)),
                        ("mlp.c_proj.weight", (4 * D, D)), ("mlp.c_proj.bias", (D,))):
      is_scale = name.startswith("ln_") and name.endswith("weight")
      w[f"h.{i}.{name}"] = normal(*shape) + (1.0 if is_scale else 0.0)
  w = {k: v.astype(dtype).astype(np.float32) for k, v in w.items()}  # as stored
  config = {"model_type": "gpt2", "n_embd": D, "n_layer": LAYERS, "n_head": HEADS,
            "n_positions": POSITIONS, "vocab_size": VOCAB,
            "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  safetensors.numpy.save_file({f"transformer.{k}": v.astype(dtype) for k, v in w.items()},
                              os.path.join(directory, "model.safetensors"))
  return config, {k.removesuffix(".weight") if k in ("wte.weight", "wpe.weight")
                  else k: v for k, v in w.items()}


def numpy_layer_norm(x, w=None, b=None, eps=1e-5):
  y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
  return y * (1 if w is None else w) + (0 if b is None else b)


def numpy_attention(q, k, v):
  """Causal softmax attention of (T, H, hd) arrays, one position at a time."""
  out = np.zeros_like(q)
  for t in range(q.shape[0]):
    for h in range(q.shape[1]):
      scores = k[:t + 1, h] @ q[t, h] / math.sqrt(q.shape[-1])
      p = np.exp(scores - scores.max())
      out[t, h] = (p / p.sum()) @ v[:t + 1, h]
  return out.reshape(q.shape[0], -1)


def numpy_gpt2(w, tokens):
  gelu = lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
  x = w["wte"][tokens] + w["wpe"][:len(tokens)]
  for i in range(LAYERS):
    p = lambda n: w[f"h.{i}.{n}"]  # pylint: disable=cell-var-from-loop
    h = numpy_layer_norm(x, p("ln_1.weight"), p("ln_1.bias"))
    qkv = h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
    q, k, v = (qkv[:, j * D:(j + 1) * D].reshape(len(tokens), HEADS, -1) for j in range(3))
    x = x + numpy_attention(q, k, v) @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
    h = numpy_layer_norm(x, p("ln_2.weight"), p("ln_2.bias"))
    x = x + gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")) @ p(
        "mlp.c_proj.weight") + p("mlp.c_proj.bias")
  return numpy_layer_norm(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["wte"].T


def test_safetensors_are_read_in_their_own_dtype(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a": rng.normal(size=(3, 4)).astype(np.float32),
             "b": rng.normal(size=(5,)).astype(np.float16),
             "c": rng.normal(size=(2, 3)).astype(ml_dtypes.bfloat16)}
  path = str(tmp_path / "x.safetensors")
  safetensors.numpy.save_file(tensors, path)
  loaded = hf.read_safetensors(path)
  for name, array in tensors.items():
    assert loaded[name].dtype == array.dtype
    np.testing.assert_array_equal(loaded[name], array)


def with_length(header: bytes) -> bytes:
  return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize("content, message", [
    (b"\x01\x02", "not a readable safetensors file"),
    (struct.pack("<Q", 1000) + b"{}", "not a readable safetensors file"),
    (struct.pack("<Q", 4) + b"{{{{", "not a readable safetensors file"),
    (with_length(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}')
     + b"\0" * 4, "not a readable safetensors file"),
    (with_length(b'{"w": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}}')
     + b"\0", "tensor 'w' has dtype int8"),
])
def test_bad_safetensors_are_user_errors(tmp_path, content, message):
  path = tmp_path / "bad.safetensors"
  path.write_bytes(content)
  with pytest.raises(UserError, match=message):
    hf.read_safetensors(str(path))


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_gpt2_logits_match_numpy(tmp_path, dtype):
  _, w = gpt2_checkpoint(str(tmp_path / "step10"), dtype=dtype)
  config, weights = hf.load_checkpoint(str(tmp_path / "step10"))
  assert {v.dtype for v in weights.values()} == {np.dtype(dtype)}  # kept as stored
  tokens = np.array([3, 17, 42, 0, 9, 9, 31])
  ours = hf.gpt2_logits(config, {k: jnp.asarray(v) for k, v in weights.items()},
                        jnp.asarray(tokens[None]))[0]
  np.testing.assert_allclose(np.asarray(ours), numpy_gpt2(w, tokens),
                             rtol=1e-4, atol=1e-4)


def numpy_llama(config, w, tokens):
  """Llama-family reference: rotate-half rotary, grouped heads, SwiGLU."""
  kind, n = config["model_type"], len(tokens)
  hd = config["hidden_size"] // config["num_attention_heads"]
  rms = lambda x, name: x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w[f"{name}.weight"]
  norm = (lambda x, name: numpy_layer_norm(x)) if kind == "olmo" else rms
  freq = 10000.0 ** (-np.arange(0, hd, 2) / hd)
  angle = np.arange(n)[:, None] * freq

  def rotate(x):  # (T, H, hd): pairs (i, i + hd/2)
    a, b = x[..., :hd // 2], x[..., hd // 2:]
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.concatenate([a * c - b * s, b * c + a * s], -1)

  silu = lambda x: x / (1 + np.exp(-x))
  x = w["model.embed_tokens.weight"][tokens]
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}"
    lin = lambda h, name: h @ w[f"{p}.{name}.weight"].T  # pylint: disable=cell-var-from-loop
    h = x if kind == "olmo2" else norm(x, f"{p}.input_layernorm")
    q, k, v = (lin(h, f"self_attn.{c}_proj") for c in "qkv")
    if kind == "olmo2":
      q, k = rms(q, f"{p}.self_attn.q_norm"), rms(k, f"{p}.self_attn.k_norm")
    q, k, v = (a.reshape(n, -1, hd) for a in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(rotate(k), group, 1), np.repeat(v, group, 1)
    h = lin(numpy_attention(rotate(q), k, v), "self_attn.o_proj")
    x = x + (rms(h, f"{p}.post_attention_layernorm") if kind == "olmo2" else h)
    h = x if kind == "olmo2" else norm(x, f"{p}.post_attention_layernorm")
    h = lin(silu(lin(h, "mlp.gate_proj")) * lin(h, "mlp.up_proj"), "mlp.down_proj")
    x = x + (rms(h, f"{p}.post_feedforward_layernorm") if kind == "olmo2" else h)
  return norm(x, "model.norm") @ w["lm_head.weight"].T


@pytest.mark.parametrize("kind", ["llama", "olmo", "olmo2"])
def test_llama_family_logits_match_numpy(tmp_path, kind):
  rng = np.random.default_rng(1)
  heads, kv_heads, hidden = 4, 2, 24
  config = {"model_type": kind, "hidden_size": D, "num_hidden_layers": LAYERS,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}
  hd = D // heads
  w = {"model.embed_tokens.weight": (VOCAB, D), "lm_head.weight": (VOCAB, D),
       "model.norm.weight": (D,)}
  for i in range(LAYERS):
    p = f"model.layers.{i}"
    w.update({f"{p}.self_attn.q_proj.weight": (D, D),
              f"{p}.self_attn.k_proj.weight": (kv_heads * hd, D),
              f"{p}.self_attn.v_proj.weight": (kv_heads * hd, D),
              f"{p}.self_attn.o_proj.weight": (D, D),
              f"{p}.mlp.gate_proj.weight": (hidden, D),
              f"{p}.mlp.up_proj.weight": (hidden, D),
              f"{p}.mlp.down_proj.weight": (D, hidden),
              f"{p}.input_layernorm.weight": (D,),
              f"{p}.post_attention_layernorm.weight": (D,),
              f"{p}.post_feedforward_layernorm.weight": (D,),
              f"{p}.self_attn.q_norm.weight": (D,),
              f"{p}.self_attn.k_norm.weight": (kv_heads * hd,)})
  w = {k: (1.0 if k.endswith("norm.weight") and len(s) == 1 else 0.0)
       + rng.normal(0, 0.3, s).astype(np.float32) for k, s in w.items()}
  tokens = np.array([5, 1, 49, 20, 20, 7])
  ours = hf.llama_logits(config, {k: jnp.asarray(v) for k, v in w.items()},
                         jnp.asarray(tokens[None]))[0]
  np.testing.assert_allclose(np.asarray(ours), numpy_llama(config, w, tokens),
                             rtol=1e-4, atol=1e-4)


def test_unsupported_model_type_is_user_error(tmp_path):
  gpt2_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(UserError, match="unsupported model_type 'bert'"):
    hf.load_checkpoint(str(tmp_path))


def test_checkpoint_table_and_prompt_file(tmp_path):
  root = tmp_path / "ckpts"
  weights = {step: gpt2_checkpoint(str(root / f"step{step}"), seed=step)[1]
             for step in (200, 1000)}
  rng = np.random.default_rng(0)
  prompts = [{"tokens": rng.integers(0, VOCAB, 8).tolist(), "first": 5,
              "set": s} for s in ("normal", "normal", "misdirected")]

  def log_probs(tokens):
    scores = numpy_gpt2(weights[1000], np.array(tokens))
    return scores - np.log(np.exp(scores).sum(-1, keepdims=True))
  # first tokens the step-1000 model predicts (prompts 0, 2) and one it does
  # not (prompt 1); a later token does not change the logits before it
  for i, prompt in enumerate(prompts):
    ranked = np.argsort(log_probs(prompt["tokens"])[4])
    prompt["tokens"][5] = int(ranked[-1] if i != 1 else ranked[0])
  (tmp_path / "prompts.json").write_text(json.dumps({"prompts": prompts}))
  result = hf.run(str(root), str(tmp_path / "prompts.json"), str(tmp_path / "out"))
  assert [r["step"] for r in result["checkpoints"]] == [200, 1000]
  saved = json.loads((tmp_path / "out" / "hf_checkpoints.json").read_text())
  assert saved["checkpoints"][1]["name"] == "step1000"
  # the table's numbers are the logits' own
  metrics = saved["checkpoints"][1]["metrics"]
  assert metrics["misdirected"]["first_acc"] == 1.0
  assert metrics["normal"]["first_acc"] == 0.5
  np.testing.assert_allclose(metrics["misdirected"]["second_logprob"],
                             log_probs(prompts[2]["tokens"])[5, prompts[2]["tokens"][6]],
                             rtol=1e-4)
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"prompts": [{"tokens": [1, 2], "first": 1}]}))
  with pytest.raises(UserError, match="'first' must be in"):
    hf.run(str(root), str(bad), str(tmp_path / "out"))
  big = tmp_path / "big.json"
  big.write_text(json.dumps({"prompts": [{"tokens": [1, 2, VOCAB], "first": 1}]}))
  with pytest.raises(UserError, match="exceed the vocabulary"):
    hf.run(str(root), str(big), str(tmp_path / "out"))
