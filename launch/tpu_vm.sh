#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: the same command runs on every worker; jax.distributed
# discovers the slice by itself. WORKDIR must be shared storage (e.g. a gs:// bucket, which
# Orbax writes directly); the data store must be readable on every worker at the same path.
#   JAXSR_DATA=/mnt/data/benchmarks launch/tpu_vm.sh my-tpu us-central2-b configs/dan.py:setting1_x4 \
#       gs://bucket/runs/dan_x4 "--config.data.train_dirs=('/mnt/data/DIV2K_Flickr2K.store',)"
# A maintenance event sends SIGTERM: every worker saves the same step and exits 0; run the same
# command again to resume.
set -euo pipefail
TPU_NAME=${1:?tpu name}; ZONE=${2:?zone}; CONFIG=${3:?config}; WORKDIR=${4:?workdir}; shift 4
DATA=${JAXSR_DATA:-data}
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="
  cd ~/jaxsr && pip install -q -e '.[tpu]' &&
  JAXSR_DATA='${DATA}' python -m jaxsr.main --config=${CONFIG} --workdir=${WORKDIR} $*"
