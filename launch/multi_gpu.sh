#!/usr/bin/env bash
# Train, sweep-evaluate and plot one experiment on every GPU of this host:
# one process, the batch sharded over all local devices
# (--config.num_devices=0; set CUDA_VISIBLE_DEVICES to use fewer). --install
# first installs the project with its CUDA extra (pip install -e ".[cuda]").
# Run from the repository root.
#
#   launch/multi_gpu.sh configs/coopetition.py runs/coop [--config.x=y ...]
#   launch/multi_gpu.sh --dry-run --install configs/coopetition.py runs/coop
set -euo pipefail
dry_run=0
install=0

usage() {
  echo "usage: $0 [--dry-run] [--install] CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
}

# shellcheck disable=SC1091  # defines quote()
source "$(dirname "$0")/quote.sh"

while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --install) install=1 ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
  shift
done
if [[ $# -lt 2 ]]; then usage; fi
config="$(quote "$1")"; workdir="$(quote "$2")"; shift 2
overrides=""
for arg in "$@"; do overrides+=" $(quote "${arg}")"; done

commands=()
if (( install )); then commands+=("pip install -e \".[cuda]\""); fi
commands+=(
  "python main.py --config=${config} --workdir=${workdir} --config.num_devices=0${overrides}"
  "python -m icl_transience.evaluate --workdir=${workdir}"
  "python -m icl_transience.plot --workdir=${workdir}"
)
for cmd in "${commands[@]}"; do
  if (( dry_run )); then echo "${cmd}"; else echo "+ ${cmd}" >&2; eval "${cmd}"; fi
done
