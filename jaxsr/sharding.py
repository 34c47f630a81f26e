"""Device mesh and data placement: one code path for 1 CPU, 8 GPUs or a multi-host TPU pod.

The batch is split over a `data` mesh axis; parameters and optimizer state are replicated.
A global batch that does not split over all devices (KXNet's paper batch, 12, on 8 chips) is split
over the largest number of them it divides, each shard computed by a group of devices along a
second, `replica` axis: the paper recipe runs unchanged, at the cost of the repeated work.
Each host feeds only its own slice of the global batch, and
`jax.make_array_from_process_local_data` assembles the global array without copies across hosts.
"""
from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
REPLICA_AXIS = "replica"


def maybe_initialize_distributed() -> None:
    """Join a multi-host job when the launcher says so (JAX_COORDINATOR_ADDRESS or a TPU pod/SLURM
    environment that `jax.distributed.initialize()` detects); a no-op for single-process runs."""
    if jax.distributed.is_initialized() if hasattr(jax.distributed, "is_initialized") else False:
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif os.environ.get("SLURM_NTASKS", "1") != "1" or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        # a multi-host TPU slice lists several workers; one (e.g. "localhost", which `jaxsr.aot`
        # sets for libtpu on a machine without a TPU) is a single process
        jax.distributed.initialize()


def data_parallelism(global_batch: int, num_devices: int, devices_per_host: int | None = None) -> int:
    """How many ways the batch is split: all devices when the batch divides over them, else the
    largest count that divides both (the rest repeat those shards). Each host must hold whole
    replica groups, so that every host feeds distinct examples."""
    ways = math.gcd(int(global_batch), int(num_devices))
    replicas = num_devices // ways
    if replicas > 1 and devices_per_host is not None and devices_per_host % replicas:
        raise ValueError(f"config key data.batch_size ({global_batch}) must be divisible by the number of "
                         f"devices ({num_devices}): with {devices_per_host} devices per host it cannot be split "
                         f"over {ways} of them instead; use a batch size that is a multiple of {num_devices}")
    return ways


def devices_per_host(devices) -> int:
    """How many of `devices` belong to the first one's process."""
    first = getattr(devices[0], "process_index", 0)
    return sum(getattr(d, "process_index", 0) == first for d in devices)


def make_mesh(global_batch: int | None = None, devices=None) -> Mesh:
    """A ('data',) mesh over `devices` (default: all), or ('data', 'replica') when `global_batch`
    does not divide over them (see `data_parallelism`)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    ways = n if global_batch is None else data_parallelism(global_batch, n, devices_per_host(devices))
    if ways == n:
        return Mesh(np.asarray(devices), (DATA_AXIS,))
    return Mesh(np.asarray(devices).reshape(ways, n // ways), (DATA_AXIS, REPLICA_AXIS))


def data_shards(mesh: Mesh) -> int:
    """How many distinct pieces the batch is split into on `mesh`."""
    return int(mesh.shape[DATA_AXIS])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def local_batch_size(global_batch: int) -> int:
    if global_batch % jax.process_count():
        raise ValueError(f"config key data.batch_size ({global_batch}) must be divisible by the number of "
                         f"hosts ({jax.process_count()})")
    return global_batch // jax.process_count()


def host_to_global(tree, sharding: NamedSharding):
    """Assemble per-host NumPy batches into global arrays sharded along the batch axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
