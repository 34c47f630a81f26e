"""XLA:CPU compile options.

On the CPU, XLA (JAX >= 0.10) hands convolutions and matmuls to YNNPACK by default. For the
convolutions of these models XLA's own (Eigen) kernels are faster on x86: 1.2-1.9x for a whole
model's forward pass on the 2-core machine of `benchmarks/vs_torch.py` (docs/benchmarks.md),
with outputs equal within float rounding. So jaxsr compiles CPU programs with YNN fusions off.

The options go to each compiled function (`jaxsr.platform.jit` passes them to `jax.jit`), never
through XLA_FLAGS, so a program that imports jaxsr keeps its own settings. An XLA that does not
know an option runs without it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Empty list = no YNNPACK fusions: convolutions and dots go to XLA's Eigen kernels.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _supported() -> tuple[tuple[str, str], ...]:
    """The CPU_OPTIONS this XLA accepts (an unknown name fails at compile time)."""
    kept = []
    cpu = jax.devices("cpu")[0]
    for name, value in CPU_OPTIONS.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(
                jax.device_put(jnp.zeros((), jnp.float32), cpu)).compile()
        except Exception:  # noqa: BLE001 - any refusal means "not supported by this XLA"
            continue
        kept.append((name, value))
    return tuple(kept)


def compiler_options() -> dict[str, str]:
    """The options jaxsr compiles CPU programs with: CPU_OPTIONS, those this XLA knows."""
    return dict(_supported())
