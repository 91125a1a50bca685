#!/usr/bin/env bash
# Rehearses the accelerator check on a CPU, as a bare offline GPU host would
# run it: a fresh virtual environment holding only the host's packages
# (benchmarks/bare_gpu_host.freeze, jax's CPU build in place of its CUDA
# plugin), the wheelhouse of benchmarks/wheelhouse.sh, and
# benchmarks/gpu_check.sh --wheelhouse=... --rehearse (under 3 minutes).
#
#   bash benchmarks/rehearse_bare_host.sh OUT_DIR [--python=python3.12]
#
# Setting up the environment needs a network (the check itself does not).
set -euo pipefail
usage="usage: bash benchmarks/rehearse_bare_host.sh OUT_DIR [--python=python3.12]"
OUT=${1:?$usage}
python=python3.12
for arg in "${@:2}"; do
  case "$arg" in
    --python=*) python=${arg#--python=} ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/icl_transience_rehearsal.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --requirement benchmarks/bare_gpu_host.freeze
"$work/venv/bin/python" -m pip freeze >"$work/host.freeze"
version=$("$work/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
bash benchmarks/wheelhouse.sh "$work/wheelhouse" --have="$work/host.freeze" --python="$version"
start=$(date +%s)
PATH="$work/venv/bin:$PATH" bash benchmarks/gpu_check.sh "$OUT" \
  --wheelhouse="$work/wheelhouse" --rehearse
echo "rehearsal: $(( $(date +%s) - start )) s for the check (Python $version, bare host + wheelhouse)"
