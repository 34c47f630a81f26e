"""Deviceless ahead-of-time (AOT) compile checks: does a config train (and evaluate) on a TPU
slice or a GPU node, before any machine is rented?

    python -m jaxsr.aot --config=configs/dan.py:setting1_x4 --target=v5e-8 [--config.KEY=VALUE ...]

For TARGET it builds, without the hardware, the devices XLA would compile for
(`jax.experimental.topologies.get_topology_desc`: libtpu for TPUs, the CUDA plugin plus a shipped
device description for GPUs) and compiles

1. the real training step, `jaxsr.train.make_train_step`, built as `jaxsr.train.train_and_evaluate`
   builds it (`config_lib.prepare`, the degradation spec, the model for the target's platform,
   the optimizer, the TrainState taken abstractly with `jax.eval_shape`), jitted with the loop's
   shardings (state replicated, the uint8 HR batch split over the `data` mesh axis) and
   `donate_argnums=0`;
2. the evaluation predict function (`ModelSpec.predict`) for one LR per device of the largest
   evaluation image (see `eval_lr_size`), sharded on `data`.

It prints, per device, the argument / temporary / output (aliased) memory of
`compiled.memory_analysis()`, their total against the device's memory, the FLOPs per step, the
compile time, and `fits` / `does not fit`. When the step does not fit (or the compiler itself
refuses with RESOURCE_EXHAUSTED) it says what would help, compiles again with `model.remat=True`
to check that remedy, and exits with status 1. Status 2: the target cannot be compiled for here
(no libtpu / no CUDA plugin) or compilation failed for another reason.

FLOPs: XLA's `cost_analysis()` counts a while loop's body once (a rolled `nn.scan` of T
iterations is undercounted T-fold) and the GPU compiler reports none, so besides XLA's number
for the target (labelled as such) the step is compiled once more for one CPU device at the
per-device batch with every scan iteration unrolled (`scan_unroll=0`) and that program's
`cost_analysis()` FLOPs are reported as "XLA CPU count, loops unrolled, per device"
(`--count_flops=False` skips it).

Targets: TPU `v4-N`, `v5p-N` (N TensorCores: v4-8 / v5p-8 are 4 chips, one megacore device
each), `v5e-N`, `v6e-N` (N chips); GPU `h100-N`, `h200-N`, `a100-40g-N`, `a100-80g-N` (N GPUs of
one host). A multi-host slice (e.g. v5e-32) compiles as one program over all its chips, as each
of its hosts would run it.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import sys
import time
from typing import Any

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

TARGETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")
# Custom calls that only a CPU program can run: jaxsr's native kernels and jaxlib's CPU libraries.
CPU_ONLY_CALL_PREFIXES = ("jaxsr_", "lapack_", "ducc_", "cpu_")
DEFAULT_EVAL_HR = 512  # HR side of the fallback evaluation image (Set5's largest, baby, is 512x512)


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


def libtpu_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("libtpu") is not None


def cuda_plugin_installed() -> bool:
    """Whether JAX's CUDA plugin (jax[cuda12]) is installed; no GPU or driver is needed to compile."""
    import importlib.util
    for name in ("jax_cuda12_plugin", "jax_plugins.xla_cuda12"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ImportError:
            continue
    return False


def _tpu_attached() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def prepare_libtpu(target: Target) -> None:
    """Where no TPU chip is attached: libtpu would ask the GCE metadata server for the slice it
    runs on (and log errors about TPU_WORKER_HOSTNAMES / TPU_ACCELERATOR_TYPE), and refuse to
    start while another process holds /tmp/libtpu_lockfile (any JAX program that probed for a
    TPU). Describe the target slice instead and allow the compile-only load beside others. Only
    variables that are unset; must run before libtpu starts (the first topology in a process);
    a TPU host is left alone."""
    if target.platform != "tpu" or _tpu_attached():
        return
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.accelerator_type)


def target_devices(target: Target) -> list:
    """The compile-only devices of `target`; raises TargetUnavailable when its compiler is missing."""
    from jax.experimental import topologies
    if target.platform == "tpu":
        if not libtpu_installed():
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


# ----------------------------------------------------------------------------- building blocks

@dataclasses.dataclass
class Built:
    cfg: Any
    model_spec: Any
    model: Any
    tx: Any
    schedule: Any
    spec: Any            # DegradationSpec
    state: Any           # abstract TrainState (ShapeDtypeStructs, no sharding)


def build(cfg, platform: str, model_overrides: dict | None = None) -> Built:
    """What `train.train_and_evaluate` builds before jitting its step, for programs compiled for
    `platform`; `model_overrides` change cfg.model first (e.g. {"remat": True})."""
    import jax
    import ml_collections
    from jaxsr import config_lib, train
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    for key, value in (model_overrides or {}).items():
        cfg.model[key] = value
    cfg = config_lib.prepare(cfg)
    config_lib.ensure_pca(cfg)  # a DAN setting without a shipped PCA matrix fits one into the cache first
    spec = config_lib.degradation_spec(cfg)
    model_spec, model = train.build_model(cfg, platform)
    tx, schedule = train.make_optimizer(cfg)
    state = jax.eval_shape(lambda: train.create_train_state(cfg, model_spec, model, tx))
    return Built(cfg, model_spec, model, tx, schedule, spec, state)


def _sharded(tree, sharding):
    import jax
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def hr_batch_shape(cfg) -> tuple[int, int, int, int]:
    side = cfg.data.patch_size * cfg.scale
    return (cfg.data.batch_size, side, side, 3)


def lower_train_step(b: Built, devices, batch: int | None = None, model=None):
    """The jitted training step lowered for `devices` (global batch `batch`, default the config's)."""
    import jax
    import jax.numpy as jnp
    from jaxsr import sharding, train
    shape = hr_batch_shape(b.cfg)
    if batch is not None:
        shape = (batch,) + shape[1:]
    mesh = sharding.make_mesh(shape[0], devices)
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    step = train.make_train_step(b.cfg, b.model_spec, model or b.model, b.tx, b.schedule, b.spec)
    fn = jax.jit(step, in_shardings=(repl, batch_sh), out_shardings=(repl, repl), donate_argnums=0)
    hr = jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=batch_sh)
    return fn.lower(_sharded(b.state, repl), hr)


def lower_predict(b: Built, devices, lr_hw: tuple[int, int], per_device: int = 1):
    """`model_spec.predict` for `per_device` LR images of size lr_hw per device, sharded on data."""
    import jax
    import jax.numpy as jnp
    from jaxsr import sharding
    mesh = sharding.make_mesh(None, devices)
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    n = per_device * len(devices)
    lr = jax.ShapeDtypeStruct((n, *lr_hw, 3), jnp.float32, sharding=batch_sh)
    params = _sharded(b.state.params, repl)
    model_spec, model = b.model_spec, b.model
    if model_spec.non_blind:
        k = b.spec.kernel_size
        kernel = jax.ShapeDtypeStruct((n, k, k), jnp.float32, sharding=batch_sh)
        sigma = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=batch_sh)
        fn = jax.jit(lambda params, lr, kernel, sigma: model_spec.predict(
            model, {"params": params}, lr, kernel=kernel, noise_sigma=sigma))
        return fn.lower(params, lr, kernel, sigma)
    fn = jax.jit(lambda params, lr: model_spec.predict(model, {"params": params}, lr))
    return fn.lower(params, lr)


def custom_call_targets(text: str) -> list[str]:
    """Custom-call targets named in StableHLO (`stablehlo.custom_call @name`) or HLO text."""
    names = set(re.findall(r"custom_call\s*@([\w.$-]+)", text))
    names |= set(re.findall(r'custom_call_target="([^"]+)"', text))
    names |= set(re.findall(r'call_target_name\s*=\s*"([^"]+)"', text))
    return sorted(names)


def cpu_only_calls(names) -> list[str]:
    return [n for n in names if n.startswith(CPU_ONLY_CALL_PREFIXES)]


def _bytes(stats, name: str) -> int | None:
    value = getattr(stats, name, None)
    return None if value is None else int(value)


def memory_figures(compiled) -> dict:
    """Per-device bytes from `compiled.memory_analysis()`; total = arguments + temporaries +
    outputs not aliased to (donated) arguments + generated code."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {"error": "memory_analysis() returned nothing on this backend"}
    fig = {k: _bytes(stats, f"{k}_size_in_bytes") for k in ("argument", "output", "alias", "temp", "generated_code")}
    fig = {k: (v or 0) for k, v in fig.items()}
    fig["total"] = fig["argument"] + fig["temp"] + max(fig["output"] - fig["alias"], 0) + fig["generated_code"]
    peak = _bytes(stats, "peak_memory_in_bytes")
    if peak:
        fig["peak"] = peak
        fig["total"] = max(fig["total"], peak)  # XLA's own peak, where the backend reports one
    return fig


def xla_flops(compiled) -> tuple[float | None, str]:
    """(flops, note) from `compiled.cost_analysis()`; None with the reason when unavailable."""
    try:
        cost = compiled.cost_analysis()
    except Exception as e:  # noqa: BLE001 - some backends raise instead of returning nothing
        return None, f"cost_analysis() failed: {type(e).__name__}"
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or cost.get("flops") is None:
        return None, "this backend's compiler reports no cost analysis"
    if float(cost["flops"]) <= 0:
        return None, "the compiler reported 0"
    return float(cost["flops"]), ""


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "exceeds available HBM", "Ran out of memory",
                                   "out of memory", "Exceeded hbm capacity"))


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit.upper()[:1]])


def oom_figures(text: str) -> dict:
    """What a refusing compiler says it needed, e.g. XLA:TPU's "the total memory required for HLO
    temporaries (28.99G) exceeds available HBM (15.75G)" or "Used 25.1G of 15.75G hbm"."""
    match = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT]?)i?B?\) exceeds available HBM "
                      r"\(([\d.]+)([KMGT]?)i?B?\)", text)
    if match:
        return {"temp": _size(match.group(1), match.group(2)), "available": _size(match.group(3), match.group(4))}
    match = re.search(r"Used\s+([\d.]+)([KMGT]?)\s+of\s+([\d.]+)([KMGT]?)\s+hbm", text)
    if match:
        return {"total": _size(match.group(1), match.group(2)), "available": _size(match.group(3), match.group(4))}
    return {}


def host_peak_rss() -> int | None:
    """This process's peak resident memory so far, bytes (Linux reports KiB): what compiling took
    on the host. A TPU compile of a large step can need more RAM than the step needs HBM."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def compile_program(lowered, budget: int) -> dict:
    """Compile `lowered`; memory, XLA FLOPs, compile seconds, custom calls and the verdict."""
    result: dict[str, Any] = {"custom_calls": custom_call_targets(lowered.as_text())}
    t0 = time.perf_counter()
    try:
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - the GPU tiling failure: again as jaxsr.jit would
            from jaxsr.cpu import compile as platform_compile
            fallback = platform_compile.gpu_fallback_options(e)
            if fallback is None:
                raise
            result["compile_options"] = fallback
            result["note"] = (f"compiled with {fallback}: XLA:GPU could not tile a fused matmul ('{str(e)[:80]}...'); "
                              "jaxsr.jit compiles the training step the same way on a GPU")
            compiled = lowered.compile(compiler_options=fallback)
    except Exception as e:  # noqa: BLE001 - reported, with the verdict it implies
        result["compile_s"] = time.perf_counter() - t0
        message = str(e).strip()
        result["error"] = message.splitlines()[0][:500] if message else type(e).__name__
        if is_out_of_memory(e):
            result["fits"] = False
            result["oom"] = True
            figures = oom_figures(message)
            if figures:
                result["memory"] = {"total": figures.get("total", figures.get("temp")), "from_error": True, **figures}
        return result
    result["compile_s"] = time.perf_counter() - t0
    result["host_peak_rss"] = host_peak_rss()
    result["memory"] = memory_figures(compiled)
    flops, why = xla_flops(compiled)
    result["xla_flops"], result["xla_flops_note"] = flops, why
    try:
        result["custom_calls"] = sorted(set(result["custom_calls"]) | set(custom_call_targets(compiled.as_text())))
    except Exception:  # noqa: BLE001 - compile-only executables may not print; StableHLO names suffice
        pass
    total = result["memory"].get("total")
    result["fits"] = None if total is None else total <= budget
    return result


def count_flops_cpu(cfg, num_devices: int, model_overrides: dict | None = None, scan_unroll: int = 0) -> dict:
    """The step's FLOPs per device counted over every loop iteration: compiled for one CPU device
    at the per-device batch with the model's scans fully unrolled (`scan_unroll=0`; 1 compiles
    the rolled loop instead, whose body XLA counts once)."""
    import jax
    b = build(cfg, "cpu", model_overrides)
    model = b.model
    if "scan_unroll" in type(model).__dataclass_fields__:
        model = model.clone(scan_unroll=scan_unroll)
    from jaxsr import sharding
    per_device = max(1, b.cfg.data.batch_size // sharding.data_parallelism(b.cfg.data.batch_size, num_devices))
    from jaxsr.cpu import native as cpu_native
    with cpu_native.suspended():  # XLA counts what the native kernels would compute
        lowered = lower_train_step(b, jax.devices("cpu")[:1], batch=per_device, model=model)
    native = [n for n in custom_call_targets(lowered.as_text()) if n.startswith("jaxsr_")]
    t0 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001
        return {"flops": None, "note": f"CPU compile failed: {str(e).splitlines()[0][:200]}"}
    flops, why = xla_flops(compiled)
    note = why
    if flops is not None and native:
        note = f"excludes jaxsr's native CPU kernels ({', '.join(native)}): XLA does not count custom calls"
    return {"flops": flops, "note": note, "compile_s": time.perf_counter() - t0, "per_device_batch": per_device}


# ----------------------------------------------------------------------------- evaluation image size

def _image_sizes(folder: str) -> list[tuple[int, int, str]]:
    from PIL import Image
    from jaxsr.data import datasets
    sizes = []
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        if os.path.splitext(path)[1].lower() not in datasets.IMAGE_SUFFIXES:
            continue
        try:
            with Image.open(path) as im:
                w, h = im.size
        except OSError:
            continue
        sizes.append((h, w, path))
    return sizes


def eval_lr_size(cfg) -> tuple[tuple[int, int], str]:
    """((h, w), why): the largest LR image the config's evaluation feeds the model, padded to a
    multiple of cfg.eval.bucket as `jaxsr.evaluate` pads it.

    The evaluation images are read from cfg.eval.dirs when they are on this machine (HR // scale
    for the degrading protocols; the lr_x<scale>/ files of a DIV2KRK-style root or eval.lr_dir
    for "paired"); otherwise an HR image of 512x512 (Set5's largest) is assumed, i.e. an LR of
    ceil(512 / scale) on each side."""
    from jaxsr.data import datasets
    scale = int(cfg.scale)
    bucket = int(cfg.eval.get("bucket", 16) or 1)
    protocol = cfg.eval.get("protocol", "gaussian8")
    candidates: list[tuple[int, int, str]] = []
    try:
        if protocol == "paired":
            folders = [cfg.eval.lr_dir] if cfg.eval.get("lr_dir") else [
                os.path.join(datasets.resolve_benchmark(d, "eval.dirs"), f"lr_x{scale}") for d in cfg.eval.dirs]
            for folder in folders:
                candidates += _image_sizes(folder)
        else:
            for d in cfg.eval.dirs:
                candidates += [(h // scale, w // scale, p) for h, w, p in _image_sizes(datasets.resolve_benchmark(d, "eval.dirs"))]
    except (ValueError, OSError):
        candidates = []
    pad = lambda n: n + -n % bucket
    if candidates:
        h, w, path = max(candidates, key=lambda c: (pad(c[0]) * pad(c[1]), c[0], c[1]))
        return (pad(h), pad(w)), (f"largest evaluation LR: {os.path.basename(path)} ({h}x{w}, padded to a multiple "
                                  f"of eval.bucket={bucket})")
    side = math.ceil(DEFAULT_EVAL_HR / scale)
    return (pad(side), pad(side)), (f"evaluation images not found here: LR ceil({DEFAULT_EVAL_HR}/{scale})={side} "
                                    f"(a {DEFAULT_EVAL_HR}x{DEFAULT_EVAL_HR} HR image, Set5's largest), padded to "
                                    f"a multiple of eval.bucket={bucket}")


# ----------------------------------------------------------------------------- the check

def advice(cfg, target: Target) -> list[str]:
    """What would make the step smaller per device, for this config."""
    m = cfg.model
    tips = []
    if "remat" in m and not m.remat:
        tips.append("--config.model.remat=True (recompute each block's activations in the backward pass)")
    if "dtype" in m and m.dtype == "float32":
        tips.append('--config.model.dtype=bfloat16 (half the activation memory; GPU/TPU only)')
    n = target.num_devices
    bigger = re.sub(r"-(\d+)$", lambda g: f"-{int(g.group(1)) * 2}", target.name)
    tips.append(f"more devices, e.g. --target={bigger} (the per-device batch halves)")
    from jaxsr import sharding
    per_device = cfg.data.batch_size // sharding.data_parallelism(cfg.data.batch_size, max(n, 1))
    if per_device > 1:
        tips.append(f"a smaller per-device batch: --config.data.batch_size={cfg.data.batch_size // 2} "
                    f"({per_device // 2} per device instead of {per_device})")
    return tips


def check(cfg, target: Target | str, *, predict: bool = True, count_flops: bool = True,
          check_remat: bool = True, eval_lr: tuple[int, int] | None = None, eval_per_device: int = 1,
          devices=None, log=None) -> dict:
    """Compile cfg's training step (and predict) for `target`; the report as a dict (see `format_report`)."""
    from jaxsr import train
    log = log or (lambda *_: None)
    target = parse_target(target) if isinstance(target, str) else target
    devices = devices if devices is not None else target_devices(target)
    from jaxsr import sharding
    train.check_config(cfg, num_devices=len(devices), devices_per_host=sharding.devices_per_host(devices))
    shards = sharding.data_parallelism(cfg.data.batch_size, len(devices))
    report: dict[str, Any] = {"target": target.name, "platform": target.platform, "num_devices": len(devices),
                              "device_kind": getattr(devices[0], "device_kind", "?"),
                              "memory_bytes": target.memory_bytes, "memory_source": target.memory_source,
                              "model": cfg.model.name, "programs": {}}
    b = build(cfg, target.platform)
    report["settings"] = {k: b.cfg.model.get(k) for k in ("remat", "dtype") if k in b.cfg.model}
    report["settings"]["scan_unroll"] = getattr(b.model, "scan_unroll", None)
    report["batch"] = {"global": int(b.cfg.data.batch_size), "per_device": int(b.cfg.data.batch_size) // shards,
                       "data_shards": shards,
                       "hr_shape": list(hr_batch_shape(b.cfg))}
    log(f"compiling the train step for {target.name} ...")
    step = compile_program(lower_train_step(b, devices), target.memory_bytes)
    report["programs"]["train_step"] = step
    if count_flops:
        log("counting FLOPs on the CPU with every loop unrolled ...")
        step["cpu_flops"] = count_flops_cpu(cfg, len(devices))
    if predict:
        if eval_lr is None:
            eval_lr, why = eval_lr_size(b.cfg)
        else:
            why = "given by --eval_lr"
        log(f"compiling predict at LR {eval_lr[0]}x{eval_lr[1]} ...")
        pred = compile_program(lower_predict(b, devices, eval_lr, eval_per_device), target.memory_bytes)
        pred["lr_shape"] = [eval_per_device * len(devices), *eval_lr, 3]
        pred["lr_choice"] = why
        pred["eval_max_batch"] = int(b.cfg.eval.get("max_batch", 8))
        report["programs"]["predict"] = pred
    if step.get("fits") is False:
        report["advice"] = advice(b.cfg, target)
        if check_remat and "remat" in b.cfg.model and not b.cfg.model.remat:
            log("the step does not fit: compiling again with model.remat=True ...")
            rb = build(cfg, target.platform, {"remat": True})
            report["programs"]["train_step_remat"] = compile_program(lower_train_step(rb, devices), target.memory_bytes)
    report["fits"] = all(p.get("fits") is not False for p in report["programs"].values()
                         if p is not report["programs"].get("train_step_remat"))
    report["failed"] = [name for name, p in report["programs"].items() if p.get("error") and not p.get("oom")]
    return report


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / GIB:.3f} GiB"


def _flops(n) -> str:
    return f"{n:.4g}"


def format_report(report: dict, title: str = "") -> str:
    lines = []
    budget = report["memory_bytes"]
    lines.append(f"jaxsr AOT check{': ' + title if title else ''} ({report['model']}) for {report['target']}: "
                 f"{report['num_devices']} x {report['device_kind']}, {_gib(budget)} per device "
                 f"({report['memory_source']})")
    settings = ", ".join(f"model.{k}={v}" for k, v in report["settings"].items())
    b = report["batch"]
    shards = b.get("data_shards", report["num_devices"])
    split = "" if shards == report["num_devices"] else (
        f", split {shards} ways: each shard computed on {report['num_devices'] // shards} devices")
    names = {"train_step": f"train step: global batch {b['global']} ({b['per_device']} per device{split}), HR "
                           f"{'x'.join(map(str, b['hr_shape'][1:3]))} uint8; {settings}",
             "predict": "predict", "train_step_remat": "train step again with model.remat=True"}
    n = report["num_devices"]
    for key, p in report["programs"].items():
        header = names[key]
        if key == "predict":
            per_device = p["lr_shape"][0] // n
            header = (f"predict: LR {'x'.join(map(str, p['lr_shape']))} ({per_device} per device); "
                      f"{p['lr_choice']}")
            if per_device < p.get("eval_max_batch", 0):
                header += (f"\n  (jaxsr.evaluate runs batches of up to eval.max_batch={p['eval_max_batch']} on one "
                           f"device: --eval_per_device={p['eval_max_batch']} checks that)")
        lines.append(header)
        lines.append(f"  compile time        {p.get('compile_s', 0):.1f} s")
        if p.get("host_peak_rss"):
            lines.append(f"  host memory         {_gib(p['host_peak_rss'])} (this process's peak RSS after the compile)")
        mem = p.get("memory") or {}
        if p.get("error"):
            lines.append(f"  compile error       {p['error']}")
        if mem and not mem.get("from_error") and "error" not in mem:
            lines.append(f"  arguments           {_gib(mem['argument'])}")
            lines.append(f"  temporaries         {_gib(mem['temp'])}")
            lines.append(f"  outputs             {_gib(mem['output'])} ({_gib(mem['alias'])} aliased to donated arguments)")
            lines.append(f"  generated code      {_gib(mem['generated_code'])}")
            if mem.get("peak"):
                lines.append(f"  XLA peak            {_gib(mem['peak'])}")
        if mem.get("total") is not None:
            src = (" (the temporaries alone, from the compiler's error)" if mem.get("from_error") and "temp" in mem
                   else " (from the compiler's error)" if mem.get("from_error") else "")
            lines.append(f"  total per device    {_gib(mem['total'])} of {_gib(budget)} "
                         f"({100 * mem['total'] / budget:.0f}%){src}")
        elif mem.get("error"):
            lines.append(f"  memory              n/a ({mem['error']})")
        if "xla_flops" in p:
            if p["xla_flops"] is None:
                lines.append(f"  FLOPs (XLA {report['platform'].upper()} cost analysis)   n/a ({p['xla_flops_note']})")
            else:
                lines.append(f"  FLOPs (XLA {report['platform'].upper()} cost analysis, a rolled loop's body counted once, "
                             f"per device)   {_flops(p['xla_flops'])}")
        cpu = p.get("cpu_flops")
        if cpu is not None:
            if cpu.get("flops") is None:
                lines.append(f"  FLOPs per step (XLA CPU count, loops unrolled, per device)   n/a ({cpu['note']})")
            else:
                extra = f"; {cpu['note']}" if cpu.get("note") else ""
                lines.append(f"  FLOPs per step (XLA CPU count, loops unrolled, per device)   {_flops(cpu['flops'])} "
                             f"(x{shards} shards = {_flops(cpu['flops'] * shards)} per step; counted in "
                             f"{cpu['compile_s']:.0f} s{extra})")
        if p.get("note"):
            lines.append(f"  note                {p['note']}")
        bad = cpu_only_calls(p.get("custom_calls", []))
        if bad:
            lines.append(f"  CPU-only custom calls in the program: {', '.join(bad)} (this program cannot run on "
                         f"{report['target']})")
        verdict = {True: "fits", False: "does not fit", None: "unknown (no memory figures)"}[p.get("fits")]
        if p.get("error") and not p.get("oom"):
            verdict = "compile failed"
        lines.append(f"  -> {verdict}")
    if report.get("advice"):
        lines.append("The train step does not fit. What would help:")
        lines += [f"  - {tip}" for tip in report["advice"]]
        remat = report["programs"].get("train_step_remat")
        if remat is not None:
            total = (remat.get("memory") or {}).get("total")
            state = {True: "fits", False: "does not fit", None: "unknown"}[remat.get("fits")]
            lines.append(f"  checked: with model.remat=True the step {state}"
                         + (f" ({_gib(total)} of {_gib(budget)})" if total is not None else ""))
    verdict = "fits" if report["fits"] else "does not fit"
    if report["failed"]:
        verdict = f"could not be checked ({', '.join(report['failed'])} failed to compile)"
    lines.append(f"verdict: {verdict} on {report['target']}")
    return "\n".join(lines)


def exit_code(report: dict) -> int:
    if report["failed"]:
        return 2
    return 0 if report["fits"] else 1


# ----------------------------------------------------------------------------- command line

def _define_flags():
    from absl import flags
    from ml_collections import config_flags
    f = {}
    f["config"] = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dan.py:setting1_x4.",
                                                  lock_config=False)
    f["target"] = flags.DEFINE_string("target", None, "v4-N, v5e-N, v5p-N, v6e-N, h100-N, h200-N, a100-40g-N or "
                                                      "a100-80g-N, e.g. v5e-8.")
    f["memory_gib"] = flags.DEFINE_float("memory_gib", None, "Per-device memory budget in GiB instead of the "
                                                             "target's (e.g. a share of the device).")
    f["predict"] = flags.DEFINE_bool("predict", True, "Also compile the evaluation predict function.")
    f["count_flops"] = flags.DEFINE_bool("count_flops", True, "Also compile the step for one CPU device with every "
                                                              "loop unrolled, to count the FLOPs of every iteration.")
    f["check_remat"] = flags.DEFINE_bool("check_remat", True, "When the step does not fit, compile it again with "
                                                              "model.remat=True and report.")
    f["eval_lr"] = flags.DEFINE_string("eval_lr", None, "LR size HxW for the predict check (default: the largest "
                                                        "evaluation image found, else ceil(512/scale)).")
    f["eval_per_device"] = flags.DEFINE_integer("eval_per_device", 1, "LR images per device in the predict check.")
    f["json"] = flags.DEFINE_string("json", None, "Also write the report as JSON to this path.")
    flags.mark_flags_as_required(["config", "target"])
    return f


def main(argv) -> int:
    """`python -m jaxsr.aot ...`; returns 0 (fits), 1 (does not fit), 2 (could not check)."""
    from absl import app
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _FLAGS["config"].value
    try:
        target = parse_target(_FLAGS["target"].value, _FLAGS["memory_gib"].value)
        eval_lr = None
        if _FLAGS["eval_lr"].value:
            h, _, w = _FLAGS["eval_lr"].value.lower().partition("x")
            eval_lr = (int(h), int(w or h))
        report = check(cfg, target, predict=_FLAGS["predict"].value, count_flops=_FLAGS["count_flops"].value,
                       check_remat=_FLAGS["check_remat"].value, eval_lr=eval_lr,
                       eval_per_device=_FLAGS["eval_per_device"].value,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    except TargetUnavailable as e:
        print(f"cannot compile for this target here: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report, title=_config_name()), flush=True)
    if _FLAGS["json"].value:
        with open(_FLAGS["json"].value, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return exit_code(report)


def _config_name() -> str:
    for arg in sys.argv[1:]:
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return ""


_FLAGS: dict = {}


def run(argv=None) -> None:
    """Parse flags and exit with main's status."""
    from absl import app
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only devices need no backend; never grab a chip
    if not _FLAGS:
        _FLAGS.update(_define_flags())
    app.run(lambda a: sys.exit(main(a)), argv=argv)


if __name__ == "__main__":
    run()
