#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: the same command runs on every worker; jax.distributed
# discovers the slice by itself. WORKDIR must be shared storage (e.g. a gs:// bucket, which
# Orbax writes directly).
#   launch/tpu_vm.sh my-tpu us-central2-b configs/dan.py:setting1_x4 gs://bucket/runs/dan_x4 \
#       "--config.data.train_dirs=('/mnt/data/DIV2K_train_HR','/mnt/data/Flickr2K_HR')"
set -euo pipefail
TPU_NAME=${1:?tpu name}; ZONE=${2:?zone}; CONFIG=${3:?config}; WORKDIR=${4:?workdir}; shift 4
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="
  cd ~/jaxsr && pip install -q -e . 'jax[tpu]' &&
  python -m jaxsr.main --config=${CONFIG} --workdir=${WORKDIR} $*"
