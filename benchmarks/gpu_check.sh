#!/usr/bin/env bash
# The first check on a GPU (or TPU) host, under 9 minutes: the throughput
# benchmark, then the coopetition run, a seed population and the transience
# run sized from it (see benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh OUT_DIR [--budget_s=540]
#
# Installs nothing: the repository goes on PYTHONPATH; jax (with its CUDA or
# TPU plugin), flax, optax, orbax-checkpoint, ml_collections, absl-py, etils,
# tqdm and matplotlib must already be importable.
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [--budget_s=540]}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
python3 -c "import jax, flax, optax, orbax.checkpoint, ml_collections, absl, tqdm, matplotlib" \
  || { echo "gpu_check: a package is missing (pip install -e . installs them)"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi -L
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The runs reuse the programs the sizing step compiled.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/icl_transience_jax_cache}"
# a hard stop 60 s after the budget (--budget_s=N, default 540)
budget=540
for arg in "${@:2}"; do
  case "$arg" in --budget_s=*) budget=${arg#--budget_s=} ;; esac
done
timeout "$(( ${budget%.*} + 60 ))" python3 benchmarks/gpu_check.py "$OUT" "${@:2}" 2>&1 \
  | tee "$OUT/gpu_check.log"
