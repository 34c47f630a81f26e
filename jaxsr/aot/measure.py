"""Compile a lowered program and measure it: per-device memory (`memory_analysis()`), XLA's
FLOPs, compile time, the host's peak memory, CPU-only custom calls and the verdict; and the
programs `jaxsr.aot` lowers besides the training step (the evaluation predict, the unrolled CPU
step whose FLOPs are counted).

FLOPs: XLA's `cost_analysis()` counts a while loop's body once (a rolled `nn.scan` of T
iterations is undercounted T-fold) and the GPU compiler reports none, so `count_flops_cpu`
compiles the training program once more for one CPU device at the per-device batch with every
scan iteration unrolled.
"""
from __future__ import annotations

import re
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxsr import cpu, platform, sharding, train

try:
    import resource
except ImportError:  # not on POSIX
    resource = None

def custom_call_targets(text: str) -> list[str]:
    """Custom-call targets named in StableHLO (`stablehlo.custom_call @name`) or HLO text."""
    names = set(re.findall(r"custom_call\s*@([\w.$-]+)", text))
    names |= set(re.findall(r'custom_call_target="([^"]+)"', text))
    names |= set(re.findall(r'call_target_name\s*=\s*"([^"]+)"', text))
    return sorted(names)


def cpu_only_calls(names) -> list[str]:
    return [n for n in names if n.startswith(cpu.ONLY_CALL_PREFIXES)]


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
    if resource is None:  # not on POSIX
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_cache_hits: list[int] = []  # a counter, with its listener registered on first use


def _cache_hit_count() -> int:
    if not _cache_hits:
        _cache_hits.append(0)
        jax.monitoring.register_event_listener(
            lambda event, **_: _cache_hits.__setitem__(0, _cache_hits[0] + (event == CACHE_HIT_EVENT)))
    return _cache_hits[0]


def compile_program(lowered, budget: int, platform_name: str) -> dict:
    """Compile `lowered` as jaxsr compiles for the platform named `platform_name`
    (`jaxsr.platform.compile_lowered`: the GPU fallback included); memory, XLA FLOPs, compile
    seconds (`from_cache`: loaded from the persistent compilation cache instead, so the seconds
    are not a compile time), custom calls and the verdict."""
    result: dict[str, Any] = {"custom_calls": custom_call_targets(lowered.as_text())}
    hits = _cache_hit_count()
    t0 = time.perf_counter()
    try:
        compiled, fallback = platform.compile_lowered(lowered, platform_name)
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
    if fallback:
        result["compile_options"] = fallback
        result["note"] = (f"compiled with {fallback}: XLA:GPU could not tile a fused matmul; jaxsr.jit compiles "
                          "the training step the same way on a GPU")
    result["compile_s"] = time.perf_counter() - t0
    result["from_cache"] = _cache_hit_count() > hits
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


def count_flops_cpu(exp, num_devices: int, scan_unroll: int = 0) -> dict:
    """The step's FLOPs per device counted over every loop iteration: the training program
    (`jaxsr.train.build_program`) for one CPU device at the per-device batch with the model's
    scans fully unrolled (`scan_unroll=0`; 1 compiles the rolled loop instead, whose body XLA
    counts once), traced without the native kernels (XLA counts what they would compute)."""
    model = exp.model("cpu")
    if "scan_unroll" in type(model).__dataclass_fields__:
        model = model.clone(scan_unroll=scan_unroll)
    batch = exp.cfg.data.batch_size
    per_device = max(1, batch // sharding.data_parallelism(batch, num_devices))
    with cpu.native_suspended():
        program = train.build_program(exp, jax.devices("cpu")[:1], batch=per_device, model=model)
        lowered = program.lower()
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



def lower_predict(exp, params, devices, lr_hw: tuple[int, int], per_device: int = 1, model=None):
    """The evaluation's predict function (`ModelSpec.jit_predict`, as `jaxsr.predict` binds it)
    lowered for `per_device` LR images of size lr_hw per device, sharded on data."""
    mesh = sharding.make_mesh(None, devices)
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    n = per_device * len(devices)
    model = model if model is not None else exp.model(platform.platform_of(mesh))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), params)
    lr = jax.ShapeDtypeStruct((n, *lr_hw, 3), jnp.float32, sharding=batch_sh)
    kernel = sigma = None
    if exp.model_spec.non_blind:
        k = exp.degradation.kernel_size
        kernel = jax.ShapeDtypeStruct((n, k, k), jnp.float32, sharding=batch_sh)
        sigma = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=batch_sh)
    return exp.model_spec.jit_predict(model).lower(params, lr, kernel, sigma)
