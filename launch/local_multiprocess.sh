#!/usr/bin/env bash
# Run N cooperating JAX processes on this machine (a multi-host job in miniature; on CPU each
# process gets DEVICES_PER_PROCESS fake devices). Usage:
#   launch/local_multiprocess.sh 2 --config=configs/dan.py:tiny --workdir=/tmp/jaxsr_mp
set -euo pipefail
NUM_PROCESSES=${1:?number of processes}; shift
PORT=${PORT:-12355}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
cd "$(dirname "$0")/.."
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  JAX_COORDINATOR_ADDRESS="localhost:${PORT}" JAX_NUM_PROCESSES="${NUM_PROCESSES}" JAX_PROCESS_ID="${i}" \
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}" JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" \
    python -m jaxsr.main "$@" > "/tmp/jaxsr_process_${i}.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
cat /tmp/jaxsr_process_0.log
exit $status
