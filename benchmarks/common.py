"""Timing helpers shared by the benchmark scripts: machine report, warm-up, medians, profiles."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time

import jax


def machine() -> dict:
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
    }


def print_machine() -> dict:
    m = machine()
    print(f"# {m['platform']} | {m['cpu_count']} CPUs | JAX {m['jax']} backend={m['backend']} devices={m['devices']}")
    return m


def block(x):
    return jax.block_until_ready(x)


def time_compile(jitted, *args) -> tuple[float, object]:
    """Seconds to lower + compile `jitted` for `args`, and the compiled executable."""
    t = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return time.perf_counter() - t, compiled


def median_seconds(fn, *, warmup: int = 2, repeats: int = 10) -> float:
    """Median wall time of fn() (which must block on its result) after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@contextlib.contextmanager
def maybe_profile(directory: str | None):
    """An XLA/TensorBoard trace of the block when `directory` is given (view with TensorBoard or Perfetto)."""
    if not directory:
        yield
        return
    with jax.profiler.trace(directory):
        yield
    print(f"# XLA profile written to {directory}")


def write_json(path: str | None, payload: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"# results written to {path}")
