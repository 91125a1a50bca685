#!/usr/bin/env bash
# Train, sweep-evaluate and clean up one experiment on a Cloud TPU VM or pod
# slice: create the VM, copy this checkout to every worker and pip-install it
# (".[tpu]" in a Python 3.11 venv: the TPU images ship Python 3.10), run the
# same main.py command on all workers (one JAX process per host, joined by
# jax.distributed.initialize()), run the checkpoint-sweep eval job on worker
# 0, then delete the VM, also after a failure, unless --keep.
#
#   launch/tpu_vm.sh configs/coopetition.py gs://BUCKET/runs/coop [--config.x=y ...]
#   launch/tpu_vm.sh --dry-run --accelerator-type=v4-32 configs/coopetition.py gs://B/coop
#
# The workdir must be a gs:// path: every worker writes its checkpoint shards
# there. The eval job runs on worker 0's CPU (--eval-platform=cpu): a JAX
# process on one host of a multi-host slice would wait for the other hosts'
# TPUs. Running the script again resumes training from the newest checkpoint.
# Paths (CONFIG) are relative to the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

name="icl-transience"
zone="us-central2-b"
accelerator_type="v4-8"
version="tpu-ubuntu2204-base"
python="python3.11"
eval_platform="cpu"
keep=0
dry_run=0

usage() {
  echo "usage: $0 [--dry-run] [--keep] [--name=TPU_NAME] [--zone=ZONE]" \
       "[--accelerator-type=TYPE] [--version=RUNTIME] [--python=PYTHON]" \
       "[--eval-platform=cpu|tpu] CONFIG gs://BUCKET/WORKDIR" \
       "[--config.field=value ...]" >&2
  exit 2
}

# shellcheck disable=SC1091  # defines quote()
source launch/quote.sh  # (cwd is the repository root)

while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --keep) keep=1 ;;
    --name=?*) name="${1#*=}" ;;
    --zone=?*) zone="${1#*=}" ;;
    --accelerator-type=?*) accelerator_type="${1#*=}" ;;
    --version=?*) version="${1#*=}" ;;
    --python=?*) python="${1#*=}" ;;
    --eval-platform=cpu|--eval-platform=tpu) eval_platform="${1#*=}" ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
  shift
done
if [[ $# -lt 2 ]]; then usage; fi
config="$1"; workdir="$2"; shift 2
if [[ "${workdir}" != gs://?* ]]; then
  echo "WORKDIR must be a gs:// path (every worker writes checkpoints there): ${workdir}" >&2
  usage
fi

overrides=""
for arg in "$@"; do overrides+=" $(quote "${arg}")"; done
archive="${TMPDIR:-/tmp}/${name}-code.tar.gz"
vm="$(quote "${name}") --zone=$(quote "${zone}")"
in_repo="cd icl_transience && . ../venv/bin/activate &&"
setup="mkdir -p icl_transience && tar -xzf code.tar.gz -C icl_transience"
setup+=" && sudo apt-get -q update && sudo apt-get -q install -y ${python}-venv"
setup+=" && ${python} -m venv venv && ${in_repo} pip install -q -e \".[tpu]\""
train="${in_repo} python main.py --config=$(quote "${config}")"
train+=" --workdir=$(quote "${workdir}") --multihost${overrides}"
platform_env=""
if [[ "${eval_platform}" == cpu ]]; then platform_env="JAX_PLATFORMS=cpu "; fi
sweep="${in_repo} ${platform_env}python -m icl_transience.evaluate --workdir=$(quote "${workdir}")"
ssh="gcloud compute tpus tpu-vm ssh ${vm}"
delete="gcloud compute tpus tpu-vm delete ${vm} --quiet"

run() {
  if (( dry_run )); then echo "$1"; else echo "+ $1" >&2; eval "$1"; fi
}

delete_vm() {
  if (( keep )); then
    echo "kept ${name}; delete it with: ${delete}" >&2
  else
    run "${delete}"
  fi
}

run "git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -czf $(quote "${archive}") -T -"
run "gcloud compute tpus tpu-vm create ${vm} --accelerator-type=$(quote "${accelerator_type}") --version=$(quote "${version}")"
if (( ! dry_run )); then trap delete_vm EXIT; fi
run "gcloud compute tpus tpu-vm scp $(quote "${archive}") $(quote "${name}"):code.tar.gz --zone=$(quote "${zone}") --worker=all"
run "${ssh} --worker=all --command=$(quote "${setup}")"
run "${ssh} --worker=all --command=$(quote "${train}")"
run "${ssh} --worker=0 --command=$(quote "${sweep}")"
if (( dry_run )); then delete_vm; fi
