"""The one place models and ops reach the CPU tuning: each function here computes one thing,
in XLA's plain formulation in programs compiled for a GPU or TPU and in `jaxsr.cpu`'s
formulation in programs compiled for the CPU.

Two ways to choose, both by the platform the program is compiled for, never by the host's
default backend:
  declared     `jaxsr.platform.jit` (the training step, evaluation, prediction, `jaxsr.aot`) knows
               that platform before it traces, and declares it (`tracing_for`): only that
               platform's branch is traced (a conv's gradient traces about 4x faster).
               `jaxsr.platform.eval_shape` declares "shapes": the shapes are the same on every
               platform, so the conv and bias add are XLA's plain ones, without custom VJPs.
  undeclared   anything else (a user's own `jax.jit`, `jax.grad` eagerly, `jax.export`): the choice
               is `jax.lax.platform_dependent`, made when the program is lowered, so a function
               traced on a CPU host for a TPU is still the program a TPU host would build. JAX
               traces every branch then, and the CPU branches' Python is kept pure and cheap:
  conv2d       `conv.plan` (integer arithmetic on the operands' shapes, dtypes, strides and
               padding) and one call of `native.in_use()` per traced CPU branch;
  add_bias     nothing beyond building its matmul;
  degradation  shape arithmetic and small NumPy matrices built from shapes and static arguments
               (`jaxsr.cpu.degrade`; the larger ones cached per shape).
None of it starts a backend, compiles, or reads a file or the environment. The one process-wide
value read is `native.in_use()` (which native kernels CPU programs use): `jaxsr.cpu.setup()` sets
it once at start-up and `native_suspended()` clears it inside a block (and JAX's trace caches on
the way in and out). JAX's jit cache does not see it otherwise, so a function traced before
`setup()` keeps its program without the kernels. The declared platform is a JAX config state in
JAX's jit and trace cache keys, so a function traced for one platform is never reused for another.
Both ways give the same CPU program, instruction for instruction (tests/cpu/test_conv.py), and TPU
programs of the same instructions and memory (docs/benchmarks.md).

The degradation's CPU formulations (`jaxsr.cpu.degrade`: FFT blur, blur+downsample at the kept
pixels, separable kernels, KXNet's FFT gradients) are named here too: their plain formulations live
in `jaxsr.ops`, which passes them to `on_cpu` as its `cpu` branch (`method="auto"`), or runs them
where a caller names them (`method="fft"`, `blur_method="fused"`) on any platform.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxsr.cpu import conv as _conv, native
from jaxsr.cpu.degrade import (  # noqa: F401 - the degradation's CPU formulations, for jaxsr.ops
    blur_downsample, correlate_fft, kernel_gradient_fft, separable_blur_downsample, separable_factors,
    sfold_blur_fft, transposed_blur_fft)

Array = jax.Array


def _declared_state():
    """The JAX config state that holds the declared platform, or None where this JAX lacks the
    (private) API to define one: then every choice stays `platform_dependent`."""
    try:
        from jax._src import config as jax_config
        existing = jax_config.config_states.get("jaxsr_trace_platform")
        if existing is not None:
            return existing
        return jax_config.optional_enum_state(
            "jaxsr_trace_platform", ["cpu", "gpu", "tpu", "shapes"], None,
            "The platform jaxsr is tracing a program for (set by jaxsr.platform.jit; None: undeclared).",
            include_in_jit_key=True, include_in_trace_context=True)
    except Exception:  # noqa: BLE001 - any failure only costs tracing time
        return None


_DECLARED = _declared_state()


@contextlib.contextmanager
def tracing_for(platform: str | None):
    """Within the block, programs traced are for `platform` ("cpu", "gpu", "tpu"; None:
    undeclared; "shapes": for their output shapes only, which no choice changes, so the cheapest
    branch, the plain one, is traced): each choice below traces only that platform's branch."""
    if _DECLARED is None or platform is None:
        yield
        return
    with _DECLARED(platform):
        yield


def declared_platform() -> str | None:
    """The platform declared by the innermost `tracing_for`, else None."""
    return None if _DECLARED is None else _DECLARED.value


def on_cpu(*args, cpu: Callable, default: Callable):
    """`cpu(*args)` in programs compiled for the CPU, `default(*args)` on every other platform."""
    declared = declared_platform()
    if declared is None:
        return jax.lax.platform_dependent(*args, cpu=cpu, default=default)
    return cpu(*args) if declared == "cpu" else default(*args)


def conv2d(x: Array, w: Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> Array:
    """`lax.conv_general_dilated(x, w, strides, padding)` for NHWC `x`, HWIO `w`, explicit
    padding. On the CPU: `jaxsr.cpu.conv.conv2d` (matmul-shaped gradients, see `plan`); elsewhere
    XLA's convolution and XLA's own gradients of it.

    A `custom_vjp` whose forward and backward each choose per platform, rather than a choice
    between two differentiable functions: JAX differentiates a platform choice as a `cond`, and
    that cond's residual handling made a DANv1 CPU gradient 5x slower. The price is that these
    convs support reverse-mode differentiation only (no `jax.jvp`)."""
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if declared_platform() == "shapes":  # no gradient will be taken: the cheapest trace
        return _conv.plain_conv(x, w, strides, padding)
    return _conv2d(x, w, strides, padding)


def _cpu_conv2d(x, w, strides, padding):
    return _conv.conv2d(x, w, strides, padding, native.in_use())


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, w, strides, padding):
    return on_cpu(x, w, cpu=lambda x, w: _cpu_conv2d(x, w, strides, padding),
                  default=lambda x, w: _conv.plain_conv(x, w, strides, padding))


def _conv2d_fwd(x, w, strides, padding):
    return _conv2d(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, residuals, g):
    x, w = residuals

    def backward(conv_fn):
        def run(x, w, g):
            return jax.vjp(lambda x_, w_: conv_fn(x_, w_, strides, padding), x, w)[1](g)
        return run

    return tuple(on_cpu(x, w, g, cpu=backward(_cpu_conv2d), default=backward(_conv.plain_conv)))


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def add_bias(y: Array, bias: Array) -> Array:
    """y + bias over the last axis. On the CPU its bias gradient is a matmul with ones
    (`jaxsr.cpu.conv.bias_gradient`); elsewhere XLA's reduction."""
    if declared_platform() == "shapes":
        return y + bias
    return _add_bias(y, bias)


@jax.custom_vjp
def _add_bias(y: Array, bias: Array) -> Array:
    return y + bias


def _add_bias_fwd(y, bias):
    return y + bias, None


def _add_bias_bwd(_, g):
    db = on_cpu(g, cpu=lambda g: _conv.bias_gradient(g).astype(g.dtype),
                default=lambda g: jnp.sum(g.reshape(-1, g.shape[-1]), axis=0, dtype=jnp.float32).astype(g.dtype))
    return g, db


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)
