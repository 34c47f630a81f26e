"""benchmarks/models.py's work column: the training step's FLOPs against what the loss needs.

Tiny DANv1 (T = 2, the loss weights only the last iteration): the step jaxsr trains differentiates
one iteration and costs about what the loss needs; the same step differentiating both iterations
(train_from = 0, DAN's old training forward) costs clearly more, so the ratio can fail.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("jaxsr_bench_models", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_dan_step_does_no_wasted_work(bench):
    from jaxsr.cpu import native
    native.load(build_missing=True)  # as after any earlier test that loaded it: the count must not change
    rec = bench.work_count("danv1", tiny=True, size=16, batch=2)
    assert rec["iterations"] == 2 and rec["differentiated_iterations"] == 1
    assert rec["custom_calls"] == []  # XLA's count sees every FLOP
    assert rec["needed_flops"] == pytest.approx(2.0 * rec["forward_flops"])  # F + 2F * 1/2
    assert rec["forward_flops"] < rec["step_flops"]
    assert rec["step_over_needed"] <= 1.1, bench.work_summary(rec)
    # the full backward through both iterations: F + 2F, 1.5x needed in the convention
    assert rec["full_step_over_needed"] >= 1.3, bench.work_summary(rec)
    assert rec["full_step_flops"] > 1.3 * rec["step_flops"]
    assert "step/needed" in bench.work_summary(rec)
    table = bench.work_table([rec])
    assert "| danv1 | 2 (1) |" in table


def test_native_calls_are_counted_as_the_convolutions_they_replace(bench):
    """XLA's cost analysis skips custom calls; benchmarks/common.py adds the native kernels' FLOPs.
    A conv's value and gradient counted with the native kernels equal XLA's count of its own
    (which skips the taps that read padding)."""
    import jax
    import jax.numpy as jnp

    from jaxsr.cpu import conv as cpu_conv, native
    if not native.load(build_missing=True):
        pytest.skip("jaxsr.cpu.native cannot be built here")
    common = sys.modules.get("common") or importlib.import_module("common")
    x, w = jnp.ones((2, 12, 10, 32)), jnp.ones((3, 3, 32, 48))
    padding = ((1, 1), (1, 1))

    def loss(conv):
        return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))

    native_step = loss(lambda x, w: cpu_conv.conv_matmul_gradient(x, w, (1, 1), padding, native.in_use())).lower(x, w).compile()
    assert "jaxsr_conv_forward" in native_step.as_text() and "jaxsr_conv_kernel_grad" in native_step.as_text()
    plain = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    xla_step = loss(plain).lower(x, w).compile()
    taps = (12 * 3 - 2) * (10 * 3 - 2)  # (output pixel, tap) pairs that read inside the 12x10 image
    assert common.native_conv_flops(native_step.as_text()) == pytest.approx(3 * 2.0 * 2 * 32 * 48 * taps)
    assert common.compiled_flops(native_step)[0] == pytest.approx(common.compiled_flops(xla_step)[0], rel=0.01)
