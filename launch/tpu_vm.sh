#!/usr/bin/env bash
# Create a Cloud TPU VM and run the SparseNAS CIFAR-10 search on all workers.
# Usage: launch/tpu_vm.sh NAME ZONE ACCELERATOR_TYPE REPO_URL WORKDIR [extra --config flags]
set -euo pipefail
name=$1 zone=$2 accel=$3 repo=$4 workdir=$5; shift 5
gcloud compute tpus tpu-vm create "$name" --zone="$zone" \
  --accelerator-type="$accel" --version=tpu-ubuntu2204-base
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e
  git clone $repo sparsenas_jax || (cd sparsenas_jax && git pull)
  cd sparsenas_jax && pip install -e '.[tpu,tfds]'
  python -m sparsenas_jax.main --config=configs/cnn_search.py \
    --workdir=$workdir --config.multi_host=True $*"
