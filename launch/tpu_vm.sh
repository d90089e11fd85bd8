#!/usr/bin/env bash
# Run the same command on every worker of a Cloud TPU VM slice (one JAX process per TPU host).
# jax.distributed is initialised on each worker from the TPU metadata server by JAX's own cluster
# detection; all workers must run the same command at the same time.
#
#   launch/tpu_vm.sh my-tpu us-central2-b -- python -m experiments.classify \
#       --flagfile=experiments/configs/classify_shapes.flags --workdir=gs://my-bucket/runs/wrn
#
# Environment:
#   TPU_PROJECT  gcloud project (default: the gcloud default project)
#   REMOTE_DIR   checkout of this repository on every worker, relative to the home directory or
#                absolute (default: research); copy it first, e.g. with SYNC=1
#   SYNC=1       first copy the current directory to REMOTE_DIR on all workers (gcloud scp)
#   PYTHON_ENV   file sourced on each worker before the command (default: REMOTE_DIR/.venv/bin/activate
#                when it exists)
set -euo pipefail

usage() {
  echo "usage: $0 TPU_NAME ZONE -- COMMAND [ARGS...]" >&2
  exit 2
}

[[ $# -ge 4 ]] || usage
tpu_name=$1
zone=$2
shift 2
[[ $1 == "--" ]] || usage
shift

remote_dir=${REMOTE_DIR:-research}
project_args=()
if [[ -n ${TPU_PROJECT:-} ]]; then
  project_args=(--project "${TPU_PROJECT}")
fi

if [[ ${SYNC:-0} == 1 ]]; then
  gcloud compute tpus tpu-vm scp --recurse . "${tpu_name}:${remote_dir}" --zone "${zone}" --worker=all \
    "${project_args[@]}"
fi

# Quote every argument for the remote shell.
printf -v quoted_cmd '%q ' "$@"
printf -v quoted_dir '%q' "${remote_dir}"
activate=${PYTHON_ENV:-}
remote_script="set -eo pipefail; cd ${quoted_dir}; export PYTHONUNBUFFERED=1;"
if [[ -n ${activate} ]]; then
  printf -v quoted_env '%q' "${activate}"
  remote_script+=" source ${quoted_env};"
else
  remote_script+=" if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi;"
fi
remote_script+=" exec ${quoted_cmd}"

echo "running on all workers of ${tpu_name} (${zone}): ${quoted_cmd}"
# --worker=all runs the command on every worker in parallel and fails if any worker fails.
exec gcloud compute tpus tpu-vm ssh "${tpu_name}" --zone "${zone}" --worker=all "${project_args[@]}" \
  --command "${remote_script}"
