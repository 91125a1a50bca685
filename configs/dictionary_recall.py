"""The OLMo stand-in of Daniels et al. (after their OLMo analysis).

  python main.py --config=configs/dictionary_recall.py --workdir=runs/dict
  python main.py --config=configs/dictionary_recall.py:cpu --workdir=runs/dict_cpu
  python -m icl_transience.report --workdir=runs/dict_cpu

Variants: "" (Daniels et al. 2025's OLMo analysis: 6 layers, d 256, 8 heads, vocab 600, 40
log-spaced checkpoints; run `python -m icl_transience.evaluate
--workdir=runs/dict` to evaluate them all before the report), "cpu" (a
3-layer model on a reduced corpus that shows the first- vs second-token
ordering on a 2-core CPU in ~15 minutes), "smoke" (seconds; tests).
"""

from icl_transience import config


# CPU: a 3-layer d-64 model on a reduced corpus (20 words per language, 3
# label ids, 10% plain documents). Our runs: the second token is at 100% by
# 1k steps; the first token guesses among the three tasks (~33%), then learns
# translate-vs-not (~66%, 2-3k steps), then copy-vs-reverse (~88% at 7k).
# 12k steps; evaluated every 125 steps.
CPU = {
    "dictionary.n_words": 20, "dictionary.n_labels": 3,
    "dictionary.plain_fraction": 0.1, "dictionary.vocab_size": 48,
    "dictionary.eval_prompts": 512,
    "model.depth": 3, "model.d_model": 64, "model.n_heads": 4,
    "optim.lr": 1e-3, "optim.warmup_steps": 200,
    "batch_size": 32, "steps_per_call": 125,
    "total_sequences": 384_000, "eval_every": 4_000, "ckpt.log_spaced": 20,
}

SMOKE = {
    "dictionary.n_words": 20, "dictionary.n_labels": 6,
    "dictionary.n_blocks": 4, "dictionary.vocab_size": 48,
    "dictionary.eval_prompts": 64, "dictionary.eval_batch_size": 32,
    "model.depth": 2, "model.d_model": 32, "model.n_heads": 2,
    "model.max_len": 32, "optim.lr": 1e-3, "optim.warmup_steps": 0,
    "batch_size": 16, "steps_per_call": 20,
    "total_sequences": 3_200, "eval_every": 1_600,   # 200 steps
    "ckpt.log_spaced": 0, "ckpt.every": 1_600,
}
VARIANTS = {"cpu": CPU, "smoke": SMOKE}


def get_config(variant: str = ""):
  c = config.for_task("dictionary")
  c.num_devices = 0          # every device: the batch is large enough to split
  c.model.depth = 6
  c.model.d_model = 256
  c.model.n_heads = 8
  c.model.mlp_ratio = 4
  c.model.max_len = 64       # = 1 + n_blocks * (2 * phrase_len + 2) - 1
  c.optim.lr = 5e-4
  c.optim.warmup_steps = 500
  c.optim.clip_norm = 1.0
  c.batch_size = 64
  c.steps_per_call = 100
  c.total_sequences = 12_800_000   # 200k steps
  c.eval_every = 64_000            # 1000 steps; the sweep adds the ckpts
  c.ckpt.every = 0
  c.ckpt.log_spaced = 40           # from step 100 (steps_per_call) on
  return config.with_variants(c, variant, VARIANTS)
