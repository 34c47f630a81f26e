"""Convolution formulations for XLA:CPU: the same sums as `lax.conv_general_dilated` and its
gradients, arranged so that XLA:CPU runs them at matmul speed.

XLA:CPU runs a convolution's kernel gradient (a small-output, long-contraction product), its
gradients to and from few channels (RGB heads and tails), and a plain bias-gradient reduction
at a fraction of its matmul speed. `conv2d` and `bias_gradient` are the CPU formulations the hook
(`jaxsr.cpu.hook`) selects in programs compiled for the CPU; `plan` says which one a conv gets,
from its shapes alone. Each formulation is tested against the plain convolution
(tests/cpu/test_conv.py).

Everything here is a function of its arguments: the operands' shapes and dtypes, the static
strides and padding, and `kernels` (`native.Kernels`: which native kernels to use), which the hook
reads once per convolution (`native.in_use()`) and passes down. No module state is read.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxsr.cpu import native

Array = jax.Array
Padding = tuple[tuple[int, int], ...]
Kernels = native.Kernels
_NHWC = ("NHWC", "HWIO", "NHWC")
# Fewer channels than this on a side: that side is "narrow" (RGB heads and tails).
NARROW_CHANNELS = 16
# Strided convs: per-tap matmuls beat XLA:CPU's backward-filter convolution up to about this many
# output pixels (N·Ho·Wo); above it the tap copies no longer fit the caches.
MATMUL_GRADIENT_MAX_ROWS = 12288
# Stride-1 convs without the native kernel: the row/column stacks of `matmul_kernel_gradient`
# hold 3x the input and 3x the cotangent (3x3); up to this many elements in input + cotangent
# (2x128x128 at 64 -> 64) they beat or match XLA's gradient (41 vs 41-64 ms there; 2x64x64,
# 64 -> 64: 7.9 vs 12 ms).
STACKED_GRADIENT_MAX_ELEMENTS = 1 << 22
# Stride-1 convolutions (and input gradients) to at least this many channels run as the native
# forward kernel where it is registered (`native.conv_forward`); to fewer, the kernel's 16-lane
# registers would be mostly empty.
NATIVE_FORWARD_MIN_CHANNELS = 16
# The stacked kernel gradient is used only where its padded rows add at most 1/8 to its matmul.
PADDED_ROWS_MAX_FRACTION_INV = 8
PLANS = ("narrow_output", "kernel_matmul", "canonical")


def plain_conv(x: Array, w: Array, strides: tuple[int, int], padding: Padding) -> Array:
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def _float32(*operands: Array) -> bool:
    return all(x.dtype == jnp.float32 for x in operands)


def native_forward_serves(x: Array, w: Array, padding: Padding, kernels: Kernels) -> bool:
    """Whether a stride-1 convolution of these operands runs as the native forward kernel:
    `kernels.forward`, float32, non-negative padding, at least NATIVE_FORWARD_MIN_CHANNELS outputs."""
    return (kernels.forward and w.shape[-1] >= NATIVE_FORWARD_MIN_CHANNELS and min(min(p) for p in padding) >= 0
            and _float32(x, w))


def native_kernel_gradient_serves(x: Array, g: Array, strides: tuple[int, int], kernels: Kernels) -> bool:
    """Whether a kernel gradient of these operands runs natively: `kernels.kernel_gradient`,
    stride 1, float32."""
    return kernels.kernel_gradient and tuple(strides) == (1, 1) and _float32(x, g)


def stride1_conv(x: Array, w: Array, padding: Padding, kernels: Kernels) -> Array:
    """A stride-1 convolution: the native forward kernel where it serves, else XLA's."""
    if native_forward_serves(x, w, padding, kernels):
        return native.conv_forward(x, w, padding)
    return plain_conv(x, w, (1, 1), padding)


def kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                    padding: Padding, kernels: Kernels) -> Array:
    """d<conv(x, w), g>/dw without XLA's backward-filter convolution (the same sums up to float
    rounding): the native kernel where it serves (no copies), otherwise `matmul_kernel_gradient`."""
    if native_kernel_gradient_serves(x, g, strides, kernels):
        return native.kernel_gradient(x, g, kernel_shape, padding)
    return matmul_kernel_gradient(x, g, kernel_shape, strides, padding)


def matmul_kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                           padding: tuple[tuple[int, int], ...]) -> Array:
    """d<conv(x, w), g>/dw as matmuls in XLA.

    Stride 1: one matmul, R^T @ S, of the padded input's kw column shifts stacked on channels,
    R[n, r, j, (b, c)] = xp[n, r, j + b, c], and the cotangent's kh row shifts stacked on channels,
    S[n, r, j, (a, o)] = g[n, r - a, j, o]: summed over (n, r, j) that is sum_i xp[i + a, j + b] g[i, j].
    Other strides: one matmul per tap, dw[a, b] = X_ab^T @ G, X_ab the strided input window."""
    kh, kw, c, o = kernel_shape
    n, ho, wo, _ = g.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    if (sh, sw) == (1, 1):
        rows = ho + kh - 1  # = the padded input's height
        gp = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (0, 0), (0, 0)))
        # stacked on a new axis next to the channels, then merged: one copy each (a concatenate on
        # the channel axis costs a copy per slice and one more; ResUNet fwd+bwd 1335 -> 1277 ms)
        r = jnp.stack([xp[:, :, b:b + wo, :] for b in range(kw)], axis=-2).reshape(n, rows, wo, kw * c)
        s = jnp.stack([gp[:, kh - 1 - a:kh - 1 - a + rows] for a in range(kh)], axis=-2).reshape(n, rows, wo, kh * o)
        m = n * rows * wo
        dw = jax.lax.dot_general(r.reshape(m, kw * c), s.reshape(m, kh * o), (((0,), (0,)), ((), ())))
        return dw.reshape(kw, c, kh, o).transpose(2, 0, 1, 3).astype(g.dtype)
    g2 = g.reshape(n * ho * wo, o)
    taps = []
    for a in range(kh):
        for b in range(kw):
            xs = jax.lax.slice(xp, (0, a, b, 0), (n, a + sh * (ho - 1) + 1, b + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
            taps.append(jax.lax.dot_general(xs.reshape(n * ho * wo, c), g2, (((0,), (0,)), ((), ()))))
    return jnp.stack(taps).reshape(kernel_shape).astype(g.dtype)



@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_matmul_gradient(x: Array, w: Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...],
                         kernels: Kernels) -> Array:
    """`lax.conv_general_dilated` (NHWC, HWIO) whose kernel gradient is `kernel_gradient`; stride 1
    runs through `stride1_conv` (the native forward kernel where `kernels` has it)."""
    return _conv_forward(x, w, strides, padding, kernels)


def _conv_forward(x, w, strides, padding, kernels):
    if tuple(strides) == (1, 1):
        return stride1_conv(x, w, padding, kernels)
    return plain_conv(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding, kernels):
    return _conv_forward(x, w, strides, padding, kernels), (x, w)


def input_gradient(x: Array, w: Array, g: Array, strides: tuple[int, int], padding: Padding,
                   kernels: Kernels) -> Array:
    """d<conv(x, w), g>/dx. Stride 1 (padding within the kernel's reach): the convolution of `g`
    with the flipped, transposed kernel: by the native forward kernel where it serves (the flip
    and its packing one copy), else materialised in HWIO behind an optimisation barrier for XLA.
    JAX's own transpose hands XLA the reversed kernel with swapped dimension labels, which
    XLA:CPU's layout assignment sometimes leaves to a generic convolution loop: 50-130 ms instead
    of ~6 ms for a 42-channel 3x3 conv on 8x24x24 in a DANv1 step."""
    kh, kw = w.shape[:2]
    (pt, pb), (pl, pr) = padding
    if tuple(strides) == (1, 1) and all(0 <= p < k for p, k in ((pt, kh), (pb, kh), (pl, kw), (pr, kw))):
        flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
        pads = ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
        if native_forward_serves(g, flipped, pads, kernels):  # flip and pack: one copy of the kernel
            return native.conv_forward(g, flipped, pads).astype(x.dtype)
        return plain_conv(g, jax.lax.optimization_barrier(flipped), (1, 1), pads).astype(x.dtype)
    _, input_vjp = jax.vjp(lambda x_: plain_conv(x_, w, strides, padding), x)
    return input_vjp(g)[0]


def correlation_kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                                padding: Padding) -> Array:
    """d<conv(x, w), g>/dw as one canonical (NHWC, HWIO) convolution: the padded input with batch
    and channels swapped, correlated with the cotangent (batch as input channels) dilated by the
    stride. It is the sum XLA's backward-filter convolution computes, in a layout XLA:CPU's fast
    convolution kernels take; the operands sit behind an optimisation barrier so that XLA cannot
    fold the transposes back into dimension labels (whose generic loop ran a 9x9/2 3->16 kernel
    gradient in 52 ms instead of a few in a DANv1 step)."""
    kh, kw, _, _ = kernel_shape
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    lhs, rhs = jax.lax.optimization_barrier((xp.transpose(3, 1, 2, 0), g.astype(x.dtype).transpose(1, 2, 0, 3)))
    dw = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), ((0, 0), (0, 0)), rhs_dilation=tuple(strides),
                                      dimension_numbers=_NHWC)  # (C, >= kh, >= kw, O)
    return dw[:, :kh, :kw].transpose(1, 2, 0, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_canonical_gradients(x: Array, w: Array, strides: tuple[int, int], padding: Padding,
                             kernels: Kernels) -> Array:
    """`lax.conv_general_dilated` (NHWC, HWIO) whose gradients are `input_gradient` and
    `correlation_kernel_gradient`: XLA's own sums, in the layouts XLA:CPU runs fast."""
    return plain_conv(x, w, strides, padding)


def _canonical_fwd(x, w, strides, padding, kernels):
    return plain_conv(x, w, strides, padding), (x, w)


def _canonical_bwd(strides, padding, kernels, residuals, g):
    x, w = residuals
    dw = correlation_kernel_gradient(x, g, w.shape, strides, padding)
    return input_gradient(x, w, g, strides, padding, kernels), dw.astype(w.dtype)


conv_canonical_gradients.defvjp(_canonical_fwd, _canonical_bwd)


def _conv_bwd(strides, padding, kernels, residuals, g):
    x, w = residuals
    return (input_gradient(x, w, g, strides, padding, kernels),
            kernel_gradient(x, g, w.shape, strides, padding, kernels).astype(w.dtype))


conv_matmul_gradient.defvjp(_conv_fwd, _conv_bwd)



def cotangent_patches(g: Array, kernel_shape: tuple[int, ...], input_hw: tuple[int, int],
                      padding: tuple[tuple[int, int], ...]) -> Array:
    """(N·H·W, kh·kw·O): for every input pixel p and tap (a, b), the output cotangent at the
    output pixel that reads p through that tap (zero where none does). Stride 1 only."""
    kh, kw, _, o = kernel_shape
    n = g.shape[0]
    h, w = input_hw
    (pt, _), (pl, _) = padding
    # input row i meets tap a at output row i + pt - a; padding g by kh - 1 keeps every start >= 0
    gp = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    cols = [jax.lax.slice(gp, (0, pt - a + kh - 1, pl - b + kw - 1, 0), (n, pt - a + kh - 1 + h, pl - b + kw - 1 + w, o))
            for a in range(kh) for b in range(kw)]
    return jnp.stack(cols, axis=-2).reshape(n * h * w, kh * kw * o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_narrow_output(x: Array, w: Array, padding: tuple[tuple[int, int], ...]) -> Array:
    """A stride-1 `lax.conv_general_dilated` (NHWC, HWIO) with few output channels (an RGB
    tail), whose gradients both come from the cotangent's patches P (`cotangent_patches`):
    dw = X^T @ P and dx = P @ W, two matmuls. The patches are only kh·kw·O wide, where XLA:CPU's
    gradient convolutions run slowly (128 -> 3 on 2x128x128: kernel gradient 49 vs 6 ms).

    The forward pass is `narrow_output_forward` (one matmul to every tap's outputs, then their
    shifted sum), for the same reason: XLA:CPU's convolution to 3 channels is slow too."""
    return narrow_output_forward(x, w, padding)


def narrow_output_forward(x: Array, w: Array, padding: tuple[tuple[int, int], ...]) -> Array:
    """A stride-1 conv as Z = X @ W (every tap's outputs at every input pixel, N·H·W x kh·kw·O),
    then y[i, j] = sum over taps (a, b) of Z at input pixel (i + a - pt, j + b - pl), zero outside:
    the same sums as the convolution in another order. Cheap only when kh·kw·O is small."""
    kh, kw, c, o = w.shape
    n, h, wd, _ = x.shape
    (pt, pb), (pl, pr) = padding
    ho, wo = h + pt + pb - kh + 1, wd + pl + pr - kw + 1
    z = jax.lax.dot_general(x.reshape(n * h * wd, c), w.transpose(2, 0, 1, 3).reshape(c, kh * kw * o),
                            (((1,), (0,)), ((), ())))
    z = jnp.pad(z.reshape(n, h, wd, kh, kw, o), ((0, 0), (pt, pb), (pl, pr), (0, 0), (0, 0), (0, 0)))
    # z's row r is input row r - pt, so output row i meets tap a at z row i + a
    taps = [z[:, a:a + ho, b:b + wo, a, b, :] for a in range(kh) for b in range(kw)]
    return functools.reduce(jnp.add, taps)


def _narrow_fwd(x, w, padding):
    return narrow_output_forward(x, w, padding), (x, w)


def _narrow_bwd(padding, residuals, g):
    x, w = residuals
    kh, kw, c, o = w.shape
    n, h, wd, _ = x.shape
    patches = cotangent_patches(g, w.shape, (h, wd), padding)
    dw = jax.lax.dot_general(x.reshape(n * h * wd, c), patches, (((0,), (0,)), ((), ())))  # (C, kh·kw·O)
    dw = dw.reshape(c, kh, kw, o).transpose(1, 2, 0, 3)
    dx = patches @ w.transpose(0, 1, 3, 2).reshape(kh * kw * o, c).astype(patches.dtype)
    return dx.reshape(x.shape).astype(x.dtype), dw.astype(w.dtype)


conv_narrow_output.defvjp(_narrow_fwd, _narrow_bwd)



def bias_gradient(g: Array) -> Array:
    """The gradient of `y + bias` w.r.t. bias: the cotangent summed over all but the last axis,
    as a matmul with ones. XLA:CPU splits the plain reduction into a slow windowed one (a
    128-channel map on 2x128x128: 11.2 vs 1.7 ms)."""
    rows = g.size // g.shape[-1]
    return jax.lax.dot_general(jnp.ones((rows,), g.dtype), g.reshape(rows, g.shape[-1]), (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)


def plan(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], strides: tuple[int, int], padding: Padding,
         native_kernel: bool = False) -> str:
    """How a CPU program computes a plain NHWC convolution and its gradients: "narrow_output"
    (`conv_narrow_output`), "kernel_matmul" (`conv_matmul_gradient`) or "canonical"
    (`conv_canonical_gradients`: XLA's convolutions, in layouts XLA:CPU runs fast).

    Stride-1 convs to fewer than NARROW_CHANNELS outputs take the cotangent patches. With
    `native_kernel` (the native kernel gradient serves these operands) every other stride-1 conv
    takes `conv_matmul_gradient`, whose kernel gradient then needs no stacks. Otherwise convs with
    both sides wide take it when stride 1, input + cotangent hold at most
    STACKED_GRADIENT_MAX_ELEMENTS and the map is tall enough that padded rows add at most 1/8 to
    the product, when the taps do not overlap (stride = kernel size, USRNet's and
    DSSR's down convs), or when strided with at most MATMUL_GRADIENT_MAX_ROWS output pixels;
    everything else gets XLA's gradient convolutions in canonical layouts."""
    if min(min(p) for p in padding) < 0:
        return "canonical"
    kh, kw, c, o = kernel_shape
    if tuple(strides) == (1, 1) and o < NARROW_CHANNELS:
        return "narrow_output"
    if native_kernel and tuple(strides) == (1, 1):
        return "kernel_matmul"
    if min(c, o) < NARROW_CHANNELS:
        return "canonical"
    n, h, w = x_shape[:3]
    rows = n * ((h + sum(padding[0]) - kh) // strides[0] + 1) * ((w + sum(padding[1]) - kw) // strides[1] + 1)
    if tuple(strides) == (1, 1):
        # The stacked product also multiplies kh - 1 padded rows per image: on small maps that is
        # real extra work (a 3x3 conv on 8x8: 25%), which XLA's own gradient conv skips.
        out_h = h + sum(padding[0]) - kh + 1
        if (kh - 1) * PADDED_ROWS_MAX_FRACTION_INV > out_h:
            return "canonical"
        return "kernel_matmul" if n * h * w * c + rows * o <= STACKED_GRADIENT_MAX_ELEMENTS else "canonical"
    if tuple(strides) == (kh, kw) or rows <= MATMUL_GRADIENT_MAX_ROWS:
        return "kernel_matmul"
    return "canonical"


def conv2d(x: Array, w: Array, strides: tuple[int, int], padding: Padding, kernels: Kernels) -> Array:
    """A plain NHWC/HWIO convolution with explicit padding, in the formulation `plan` picks, using
    the native kernels in `kernels` where they serve."""
    chosen = plan(x.shape, w.shape, strides, padding, native_kernel=kernels.kernel_gradient and _float32(x, w))
    if chosen == "narrow_output":
        return conv_narrow_output(x, w, padding)
    if chosen == "kernel_matmul":
        return conv_matmul_gradient(x, w, strides, padding, kernels)
    return conv_canonical_gradients(x, w, strides, padding, kernels)
