#!/usr/bin/env bash
# The first check on a GPU (or TPU) host: within 8 minutes (a hard stop at
# 9), the phases of benchmarks/gpu_check.py and one verdict line per target.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [--wheelhouse=DIR] [--budget_s=480]
#   bash benchmarks/gpu_check.sh OUT_DIR --rehearse [--wheelhouse=DIR]
#
# Installs nothing on the host: the repository goes on PYTHONPATH, and with
# --wheelhouse=DIR (made by benchmarks/wheelhouse.sh on a machine with a
# network) the wheels the host lacks are unpacked into a temporary folder
# with pip --no-index --no-deps, also on PYTHONPATH. jax (with its CUDA or
# TPU plugin), flax, optax, orbax-checkpoint, chex, absl-py, etils, numpy,
# tqdm and matplotlib must already be importable; ml_collections too (from
# the wheelhouse on a bare host). --rehearse: every phase at tiny horizons,
# in under 3 minutes on a CPU.
set -euo pipefail
usage="usage: bash benchmarks/gpu_check.sh OUT_DIR [--wheelhouse=DIR] [--budget_s=N] [--rehearse]"
OUT=${1:?$usage}
cd "$(dirname "$0")/.."
budget=480
stop=540
wheelhouse=""
passed=()
for arg in "${@:2}"; do
  case "$arg" in
    --wheelhouse=*) wheelhouse=${arg#--wheelhouse=} ;;
    --budget_s=*) budget=${arg#--budget_s=}; stop=$(( ${budget%.*} + 60 )); passed+=("$arg") ;;
    --rehearse) budget=165; stop=178; passed+=("$arg" "--budget_s=$budget") ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
if [[ -n "$wheelhouse" ]]; then
  compgen -G "$wheelhouse/*.whl" >/dev/null \
    || { echo "gpu_check: no wheels in $wheelhouse (make them with benchmarks/wheelhouse.sh)"; exit 2; }
  site=$(mktemp -d "${TMPDIR:-/tmp}/icl_transience_site.XXXXXX")
  trap 'rm -rf "$site"' EXIT
  python3 -m pip install --quiet --no-index --no-deps --no-compile --target="$site" \
    "$wheelhouse"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
missing=$(python3 - <<'EOF'
import importlib.util
need = ("jax", "flax", "optax", "orbax.checkpoint", "chex", "ml_collections", "absl",
        "etils", "numpy", "tqdm", "matplotlib")
print(" ".join(n for n in need if importlib.util.find_spec(n.split(".")[0]) is None))
EOF
)
if [[ -n "$missing" ]]; then
  echo "gpu_check: missing $missing; on a host without a network, make a wheelhouse" \
    "where there is one (bash benchmarks/wheelhouse.sh DIR) and pass --wheelhouse=DIR"
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi -L
# Each phase runs in a process of its own; none preallocates GPU memory, so
# a process never finds the GPU held by another.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1
if [[ " ${passed[*]:-} " == *" --rehearse "* ]]; then
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
# The runs reuse the programs their sizing step compiled.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/icl_transience_jax_cache}"
timeout --kill-after=5 "$stop" python3 benchmarks/gpu_check.py "$OUT" "${passed[@]}" 2>&1 \
  | tee "$OUT/gpu_check.log"
