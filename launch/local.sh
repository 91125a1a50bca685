#!/usr/bin/env bash
# Train, sweep-evaluate and plot one experiment on this machine (all local
# devices: one CPU, or every GPU of the host, data parallel).
#
#   launch/local.sh configs/coopetition.py runs/coop [--config.x=y ...]
#   launch/local.sh --dry-run configs/coopetition.py runs/coop
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
if [[ $# -lt 2 ]]; then
  echo "usage: $0 [--dry-run] CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi

# shellcheck disable=SC1091  # defines quote()
source "$(dirname "$0")/quote.sh"

config="$(quote "$1")"; workdir="$(quote "$2")"; shift 2
overrides=""
for arg in "$@"; do overrides+=" $(quote "${arg}")"; done
commands=(
  "python main.py --config=${config} --workdir=${workdir}${overrides}"
  "python -m icl_transience.evaluate --workdir=${workdir}"
  "python -m icl_transience.plot --workdir=${workdir}"
)
for cmd in "${commands[@]}"; do
  if (( dry_run )); then echo "${cmd}"; else echo "+ ${cmd}" >&2; eval "${cmd}"; fi
done
