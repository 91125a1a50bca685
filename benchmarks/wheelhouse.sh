#!/usr/bin/env bash
# Downloads, on a machine with a network, the wheels that a bare offline JAX
# host lacks to run this suite, into DIR (a "wheelhouse" to copy there).
#
#   bash benchmarks/wheelhouse.sh DIR [--have=FREEZE] [--python=3.12]
#
# What it fetches: ml_collections and tensorboardX with everything they need
# (binary wheels for CPython --python on manylinux x86_64, or pure Python),
# less every package the host already has. FREEZE is `pip freeze` run on the
# host; the default, benchmarks/bare_gpu_host.freeze, is a JAX GPU image
# without a network (jax with the CUDA plugin, flax, optax, orbax-checkpoint,
# chex, absl-py, numpy, h5py, matplotlib, tqdm, safetensors, tensorboard,
# etils, tensorstore, pytest, and what they bring).
#
# On the host: bash benchmarks/gpu_check.sh OUT --wheelhouse=DIR, or for
# main.py (nothing on the host changes; the folder can be deleted after):
#   pip install --no-index --no-deps --target=/tmp/icl_site DIR/*.whl
#   PYTHONPATH=/tmp/icl_site:$PWD python main.py --config=... --workdir=...
set -euo pipefail
usage="usage: bash benchmarks/wheelhouse.sh DIR [--have=FREEZE] [--python=3.12]"
DIR=${1:?$usage}
here=$(cd "$(dirname "$0")" && pwd)
have="$here/bare_gpu_host.freeze"
python=3.12
for arg in "${@:2}"; do
  case "$arg" in
    --have=*) have=${arg#--have=} ;;
    --python=*) python=${arg#--python=} ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
[[ -r "$have" ]] || { echo "wheelhouse: cannot read the host's package list $have" >&2; exit 2; }
NEED=(ml-collections tensorboardX)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
mkdir -p "$DIR"
fetched=$(mktemp -d)
trap 'rm -rf "$fetched"' EXIT
python3 -m pip download --quiet --only-binary=:all: --implementation cp \
  --python-version "$python" "${platforms[@]}" -d "$fetched" "${NEED[@]}"
# a wheel's name and a freeze line's name, both normalised (PEP 503)
normal() { tr 'A-Z_.' 'a-z--'; }
held=$(sed -e 's/[ =<>!~;@[].*//' "$have" | normal | sort -u)
for wheel in "$fetched"/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | normal)
  if grep -qx "$name" <<<"$held"; then
    echo "  on the host already: $(basename "$wheel")"
  else
    cp "$wheel" "$DIR/"
    echo "  kept: $(basename "$wheel")"
  fi
done
du -sh "$DIR"
