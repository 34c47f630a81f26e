"""The targets `jaxsr.aot` compiles for, and their compile-only devices.

TPU `v4-N`, `v5p-N` (N TensorCores: v4-8 / v5p-8 are 4 chips, one megacore device each), `v5e-N`,
`v6e-N` (N chips); GPU `h100-N`, `h200-N`, `a100-40g-N`, `a100-80g-N` (N GPUs of one host). The
devices come from `jax.experimental.topologies`: libtpu for TPUs, the CUDA plugin plus a shipped
device description (jaxsr/targets/) for GPUs; no hardware is needed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

from jax.experimental import topologies

from jaxsr import platform

GIB = 1 << 30

# HBM per device (a TPU chip; v4 / v5p: one megacore device = one chip). Topology devices have no
# memory_stats(), so the figures come from this table.
TPU_FAMILIES = {
    # family: (topology prefix, counts "cores" or "chips", topology dims, accelerator-type prefix,
    #          HBM bytes per chip, where the figure comes from)
    "v4": ("v4", "cores", 3, "v4", 32 * GIB,
           "32 GiB HBM2 per v4 chip (cloud.google.com/tpu/docs/v4)"),
    "v5e": ("v5e", "chips", 2, "v5litepod", int(15.75 * GIB),
            "15.75 GiB usable of the 16 GiB HBM2 per v5e chip (cloud.google.com/tpu/docs/v5e; "
            "XLA:TPU's compile-time HBM limit)"),
    "v5p": ("v5p", "cores", 3, "v5p", 95 * GIB,
            "95 GiB HBM2e per v5p chip (cloud.google.com/tpu/docs/v5p)"),
    "v6e": ("v6e", "chips", 2, "v6e", 32 * GIB,
            "32 GiB HBM per v6e chip (cloud.google.com/tpu/docs/v6e)"),
}

# GPU device descriptions (XLA GpuTargetConfigProto text files, shipped in jaxsr/targets/ with
# their source and license): the memory size comes from the file's device_memory_size.
GPU_FAMILIES = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb", "a100-40g": "a100_sxm_40.txtpb",
                "a100-80g": "a100_sxm_80.txtpb"}
# JAX's GPU client preallocates (and its allocator then uses) this fraction of the device memory
# unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise.
GPU_DEFAULT_MEM_FRACTION = 0.75
# Fields that newer XLA releases added to the shipped descriptions; an older CUDA plugin that
# cannot parse a file gets it again without them.
GPU_NEWER_FIELDS = ("collective_memory_granularity",)

TARGETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "targets")


class TargetUnavailable(RuntimeError):
    """The target's compiler is not installed here (libtpu / the CUDA plugin)."""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str               # as given, e.g. "v5e-8"
    platform: str           # "tpu" | "gpu" (what jaxsr.models.create takes)
    family: str             # "v5e", "h100", ...
    num_devices: int
    memory_bytes: int       # per device
    memory_source: str
    topology: str = ""      # TPU: "v5e:2x4"; GPU: "1x1xN"
    topology_kwargs: tuple = ()
    accelerator_type: str = ""  # TPU_ACCELERATOR_TYPE of such a slice
    spec_file: str = ""     # GPU: path of the device description


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _tpu_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape of `chips` chips: 2D (v5e/v6e: 2x4, 4x8, ...) or 3D (v4/v5p: 2x2x1,
    2x2x2, 2x2x4, 2x4x4, ...), as Cloud TPU names its slices."""
    if dims == 2:
        a = 1 << (int(math.log2(chips)) // 2)
        return (a, chips // a)
    if chips < 4:
        return (1, chips, 1)
    shape = [2, 2, 1]
    while math.prod(shape) < chips:  # double the last of the smallest sides: 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8
        smallest = min(shape)
        axis = max(i for i, side in enumerate(shape) if side == smallest)
        shape[axis] *= 2
    return tuple(shape)


def parse_target(name: str, memory_gib: float | None = None) -> Target:
    """`v5e-8`, `v4-8`, `h100-8`, ... as a Target; `memory_gib` overrides the per-device memory."""
    match = re.fullmatch(r"(v4|v5e|v5p|v6e|h100|h200|a100-40g|a100-80g)-(\d+)", name.strip().lower())
    if not match:
        raise ValueError(f"unknown target {name!r}: use one of v4-N, v5e-N, v5p-N, v6e-N (TPU) or h100-N, "
                         f"h200-N, a100-40g-N, a100-80g-N (GPU), e.g. v5e-8")
    family, count = match.group(1), int(match.group(2))
    override = None if memory_gib is None else int(memory_gib * GIB)
    note = f"--memory_gib={memory_gib:g}" if memory_gib is not None else ""
    if family in TPU_FAMILIES:
        prefix, counts, dims, accel, hbm, source = TPU_FAMILIES[family]
        chips = count // 2 if counts == "cores" else count
        if counts == "cores" and (count % 2 or count < 2):
            raise ValueError(f"{name}: {family}-N counts TensorCores, 2 per chip (e.g. {family}-8 = 4 chips)")
        if not _power_of_two(chips):
            raise ValueError(f"{name}: the number of chips ({chips}) must be a power of two")
        shape = _tpu_shape(chips, dims)
        shape3 = tuple(shape) + (1,) * (3 - len(shape))
        kwargs = {}
        if family in ("v4", "v5p"):
            kwargs["chip_config_name"] = "megacore"  # one device per chip, as users of v4-8 see it
        if any(s < d for s, d in zip(shape3, (2, 2, 1))):  # smaller than one host's default 2x2x1
            kwargs["chips_per_host_bounds"] = tuple(min(s, d) for s, d in zip(shape3, (2, 2, 1)))
        return Target(name=name, platform="tpu", family=family, num_devices=chips,
                      memory_bytes=override or hbm, memory_source=note or source,
                      topology=f"{prefix}:{'x'.join(map(str, shape))}",
                      topology_kwargs=tuple(sorted(kwargs.items())), accelerator_type=f"{accel}-{count}")
    spec_file = os.path.join(TARGETS_DIR, GPU_FAMILIES[family])
    size = gpu_memory_size(spec_file)
    fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_DEFAULT_MEM_FRACTION))
    source = (f"{fraction:g} (XLA_PYTHON_CLIENT_MEM_FRACTION{'' if 'XLA_PYTHON_CLIENT_MEM_FRACTION' in os.environ else ', JAX default'}) "
              f"of the {size / GIB:.2f} GiB of {os.path.basename(spec_file)}")
    return Target(name=name, platform="gpu", family=family, num_devices=count,
                  memory_bytes=override or int(size * fraction), memory_source=note or source,
                  topology=f"1x1x{count}", spec_file=spec_file)


def gpu_memory_size(spec_file: str) -> int:
    with open(spec_file) as f:
        match = re.search(r"^\s*device_memory_size:\s*(\d+)", f.read(), re.M)
    if not match:
        raise ValueError(f"{spec_file} has no device_memory_size")
    return int(match.group(1))


def prepare_libtpu(target: Target) -> None:
    """Where no TPU chip is attached: libtpu would ask the GCE metadata server for the slice it
    runs on (and log errors about TPU_WORKER_HOSTNAMES / TPU_ACCELERATOR_TYPE), and refuse to
    start while another process holds /tmp/libtpu_lockfile (any JAX program that probed for a
    TPU). Describe the target slice instead and allow the compile-only load beside others. Only
    variables that are unset; must run before libtpu starts (the first topology in a process);
    a TPU host is left alone."""
    if target.platform != "tpu" or platform.tpu_attached():
        return
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.accelerator_type)


def target_devices(target: Target) -> list:
    """The compile-only devices of `target`; raises TargetUnavailable when its compiler is missing."""
    if target.platform == "tpu":
        if not platform.libtpu_installed():
            raise TargetUnavailable(f"{target.name}: libtpu is not installed; pip install -e '.[tpu]' "
                                    f"(jax[tpu]) compiles for TPUs on any machine") from None
        prepare_libtpu(target)
        desc = topologies.get_topology_desc(platform="tpu", topology_name=target.topology,
                                            **dict(target.topology_kwargs))
    else:
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no CUDA driver needed to compile
        with open(target.spec_file) as f:
            text = f.read()
        desc = None
        for attempt in (text, _without_fields(text, GPU_NEWER_FIELDS)):
            try:
                desc = topologies.get_topology_desc(platform="cuda", target_config=attempt,
                                                    topology=target.topology)
                break
            except NotImplementedError as e:  # no "cuda" topology factory: the plugin is missing
                raise TargetUnavailable(f"{target.name}: the CUDA plugin is not installed (pip install "
                                        f"'jax[cuda12]'; no GPU or driver needed): {e}") from None
            except Exception as e:  # noqa: BLE001 - an older plugin may not parse newer fields
                if "Failed to parse" not in str(e) or attempt is not text:
                    raise
        assert desc is not None
    devices = list(desc.devices)
    if len(devices) != target.num_devices:
        raise RuntimeError(f"{target.name}: expected {target.num_devices} devices, the topology "
                           f"{target.topology} has {len(devices)}")
    return devices


def _without_fields(text: str, fields) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not any(re.match(rf"\s*{f}\s*:", line) for f in fields))
