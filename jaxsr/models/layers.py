"""Building blocks shared by the SR models (NHWC, PyTorch-compatible layouts).

Everything here mirrors a PyTorch layer closely enough that weights imported from an
official checkpoint (after OIHW -> HWIO) reproduce the PyTorch outputs: explicit symmetric
padding, PyTorch's default initialisation, and `pixel_shuffle` in PyTorch's channel order.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsr import cpu_kernels

Array = jax.Array


# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what torch.nn.Conv2d draws by default (kaiming_uniform,
# a=sqrt(5)); the official DAN code trains from that initialisation.
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# `dtype` of the models: the dtype activations are computed in. Parameters stay float32 (the
# convs cast them per call) and every model returns float32 outputs.
COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(name: str) -> jnp.dtype:
    """The model field `dtype` ("float32" or "bfloat16") as a NumPy dtype."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"model dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
    return jnp.dtype(name)


def torch_default_bias_init(fan_in: int) -> Callable:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ----------------------------------------------------------------------------- convolution
_NHWC = ("NHWC", "HWIO", "NHWC")
CONV_GRADIENTS = ("auto", "xla", "matmul")
# The gradient method `conv2d` traces with; "auto" picks per backend. Set it (before tracing)
# only to compare, as benchmarks/vs_torch.py --conv-gradient does.
CONV_GRADIENT = "auto"
# Fewer channels than this on a side: that side is "narrow" (RGB heads and tails).
NARROW_CHANNELS = 16
# Strided convs: per-tap matmuls beat XLA:CPU's backward-filter convolution up to about this many
# output pixels (N·Ho·Wo); above it the tap copies no longer fit the caches.
MATMUL_GRADIENT_MAX_ROWS = 12288
# Stride-1 convs without the native kernel (`jaxsr.cpu_kernels`, which needs no stacks): the
# row/column stacks of `matmul_kernel_gradient` hold 3x the input and 3x the
# cotangent (for 3x3); up to this many elements in input + cotangent (2x128x128 at 64 -> 64) they
# beat or match XLA's gradient (41 vs 41-64 ms there; 2x64x64, 64 -> 64: 7.9 vs 12 ms).
STACKED_GRADIENT_MAX_ELEMENTS = 1 << 22


def conv_gradient_method(method: str = "auto") -> str:
    """"xla" or "matmul": how `conv` differentiates. "auto" is "matmul" on the CPU and "xla"
    (XLA's own gradient convolutions) on GPU/TPU, resolved at trace time as
    `jaxsr.ops.degrade.blur` picks its method."""
    if method not in CONV_GRADIENTS:
        raise ValueError(f"conv gradient method must be one of {CONV_GRADIENTS}, got {method!r}")
    if method == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return method


def _plain_conv(x: Array, w: Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> Array:
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def conv_kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                         padding: tuple[tuple[int, int], ...]) -> Array:
    """d<conv(x, w), g>/dw without XLA's backward-filter convolution (the same sums up to float
    rounding; XLA:CPU runs that convolution at a fraction of its matmul speed).

    Stride 1, float32, where `jaxsr.cpu_kernels` is available: its native kernel (no copies).
    Otherwise `matmul_kernel_gradient`."""
    if tuple(strides) == (1, 1) and cpu_kernels.used_for(x, g):
        return cpu_kernels.kernel_gradient(x, g, kernel_shape, padding)
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul_gradient(x: Array, w: Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> Array:
    """`lax.conv_general_dilated` (NHWC, HWIO) whose kernel gradient is `conv_kernel_gradient`.

    The forward pass and the input gradient are XLA's, unchanged."""
    return _plain_conv(x, w, strides, padding)


def _conv_fwd(x, w, strides, padding):
    return _plain_conv(x, w, strides, padding), (x, w)


def _conv_bwd(strides, padding, residuals, g):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x_: _plain_conv(x_, w, strides, padding), x)
    return input_vjp(g)[0], conv_kernel_gradient(x, g, w.shape, strides, padding).astype(w.dtype)


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


def conv_gradient_plan(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], strides: tuple[int, int],
                       padding: tuple[tuple[int, int], ...], method: str = "auto", native: bool | None = None) -> str:
    """How `conv_general_dilated` differentiates a plain NHWC convolution:
    "narrow_output" (`conv_narrow_output`), "kernel_matmul" (`conv_matmul_gradient`) or "xla".

    With `method` "matmul" (the CPU): stride-1 convs to fewer than NARROW_CHANNELS outputs take
    the cotangent patches. With `native` (default: `jaxsr.cpu_kernels.available()`; callers pass
    False for operands other than float32) every other stride-1 conv takes `conv_kernel_gradient`,
    whose native kernel needs no stacks. Otherwise convs with both sides wide take it when stride 1
    and input + cotangent hold at most STACKED_GRADIENT_MAX_ELEMENTS, when the taps do not
    overlap (stride = kernel size, USRNet's and DSSR's down convs), or when strided with at most
    MATMUL_GRADIENT_MAX_ROWS output pixels; everything else keeps XLA's gradients."""
    if conv_gradient_method(method) != "matmul" or min(min(p) for p in padding) < 0:
        return "xla"
    kh, kw, c, o = kernel_shape
    if tuple(strides) == (1, 1) and o < NARROW_CHANNELS:
        return "narrow_output"
    if native is None:
        native = cpu_kernels.available()
    if native and tuple(strides) == (1, 1):
        return "kernel_matmul"  # the native kernel: no stacks, so no size limit
    if min(c, o) < NARROW_CHANNELS:
        return "xla"
    n, h, w = x_shape[:3]
    rows = n * ((h + sum(padding[0]) - kh) // strides[0] + 1) * ((w + sum(padding[1]) - kw) // strides[1] + 1)
    if tuple(strides) == (1, 1):
        return "kernel_matmul" if n * h * w * c + rows * o <= STACKED_GRADIENT_MAX_ELEMENTS else "xla"
    if tuple(strides) == (kh, kw) or rows <= MATMUL_GRADIENT_MAX_ROWS:
        return "kernel_matmul"
    return "xla"


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for `lax.conv_general_dilated` inside `nn.Conv` (its `conv_general_dilated` field).

    Plain 2-D NHWC/HWIO convolutions with explicit padding differentiate as `conv_gradient_plan`
    says (custom VJPs on the CPU); anything else goes to lax unchanged. Forward outputs are XLA's
    convolution, except for narrow-output convs on the CPU (`narrow_output_forward`: the same sums,
    up to float rounding)."""
    plain = (lhs.ndim == 4 and not isinstance(padding, str) and feature_group_count == 1 and precision is None
             and not kwargs and all(d in (None, 1) or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
             and dimension_numbers is not None
             and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    if plain:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        strides = tuple(int(s) for s in window_strides)
        plan = conv_gradient_plan(lhs.shape, rhs.shape, strides, pads, CONV_GRADIENT,
                                  native=cpu_kernels.used_for(lhs, rhs))
        if plan == "narrow_output":
            return conv_narrow_output(lhs, rhs, pads)
        if plan == "kernel_matmul":
            return conv_matmul_gradient(lhs, rhs, strides, pads)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision, **kwargs)


@jax.custom_vjp
def add_bias(y: Array, bias: Array) -> Array:
    """y + bias (over the last axis), whose bias gradient is a matmul of the cotangent with ones:
    XLA:CPU splits the plain reduction into a slow windowed one (the bias gradient of a 128-channel
    map on 2x128x128: 11.2 vs 1.7 ms)."""
    return y + bias


def _add_bias_fwd(y, bias):
    return y + bias, None


def _add_bias_bwd(_, g):
    rows = g.size // g.shape[-1]
    db = jax.lax.dot_general(jnp.ones((rows,), g.dtype), g.reshape(rows, g.shape[-1]), (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
    return g, db.astype(g.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv(nn.Module):
    """`torch.nn.Conv2d(in, features, kernel_size, stride, padding, bias=use_bias)` on NHWC input,
    with `nn.Conv`'s parameters (`kernel` (k, k, in, out), `bias` (out,), float32) and PyTorch's
    initialisation. It computes in `dtype` (default: the input's) through `conv_general_dilated`,
    so on the CPU it differentiates with the custom gradients above."""
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        kernel = self.param("kernel", TORCH_KERNEL_INIT, (k, k, x.shape[-1], self.features), jnp.float32)
        dtype = x.dtype if self.dtype is None else self.dtype
        y = conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (s, s), ((p, p), (p, p)),
                                 dimension_numbers=_NHWC)
        if not self.use_bias:
            return y
        bias = self.param("bias", torch_default_bias_init(x.shape[-1] * k * k), (self.features,), jnp.float32)
        bias = bias.astype(dtype)
        return add_bias(y, bias) if conv_gradient_method(CONV_GRADIENT) == "matmul" else y + bias


def conv2d(x: Array, features: int, kernel_size: int = 3, *, stride: int = 1,
           padding: int | None = None, name: str | None = None, dtype: Any = None,
           use_bias: bool = True) -> Array:
    """`torch.nn.Conv2d(in, features, kernel_size, stride, padding, bias=use_bias)` on NHWC `x`.

    Call it inside a compact method: it creates a `Conv` submodule called `name` with
    parameters `kernel` (kh, kw, in, out) and `bias` (out,). Padding defaults to
    kernel_size // 2 (zeros, symmetric, like PyTorch), so odd kernels at stride 1 keep the size.
    It computes in `dtype`, by default the dtype of `x` (float32 parameters are cast to it).
    """
    pad = kernel_size // 2 if padding is None else padding
    return Conv(features, kernel_size, stride, pad, use_bias, dtype, name=name)(x)


def scan_unroll(setting: int, length: int) -> int:
    """The `unroll` for an iteration `nn.scan`: `setting` if > 0, else automatic.

    Automatic means fully unrolled on CPU and a rolled loop on GPU/TPU. XLA:CPU runs the body of
    a while loop far slower than the same ops unrolled (measured here for the DANv1 `cpu`
    config: 14.5 s vs 0.35 s per gradient on 2 cores); the program still holds one traced body.
    """
    if setting > 0:
        return min(int(setting), max(length, 1))
    return max(length, 1) if jax.default_backend() == "cpu" else 1


def remat_cell(cell, unroll: int):
    """`nn.remat` for an iteration cell. Inside a rolled scan XLA cannot CSE the recomputation
    away, so no barrier is needed; unrolled, it would, undoing the memory saving."""
    return nn.remat(cell, prevent_cse=unroll > 1)


def leaky_relu(x: Array) -> Array:
    return nn.leaky_relu(x, negative_slope=0.2)


def pixel_shuffle(x: Array, factor: int) -> Array:
    """NHWC depth-to-space with PyTorch's channel order.

    PyTorch reads input channel `c * r * r + i * r + j` into output channel `c` at
    sub-pixel (i, j); matching it keeps imported upsampler weights valid.
    """
    if factor == 1:
        return x
    n, h, w, c = x.shape
    if c % (factor * factor):
        raise ValueError(f"pixel_shuffle needs channels divisible by {factor}^2, got {c}")
    out_c = c // (factor * factor)
    x = x.reshape(n, h, w, out_c, factor, factor)
    x = x.transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(n, h * factor, w * factor, out_c)


def space_to_depth(x: Array, factor: int) -> Array:
    """(N, H, W, C) -> (N, H/r, W/r, C·r²), the exact inverse of `pixel_shuffle`."""
    n, h, w, c = x.shape
    if h % factor or w % factor:
        raise ValueError(f"space_to_depth needs a size divisible by {factor}, got {h}x{w}")
    x = x.reshape(n, h // factor, factor, w // factor, factor, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(n, h // factor, w // factor, c * factor * factor)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: GAP -> 1x1 conv (C/r) -> LReLU(0.2) -> 1x1 conv (C) -> sigmoid, x * gate."""
    reduction: int = 16

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        gate = jnp.mean(x, axis=(1, 2), keepdims=True)
        gate = leaky_relu(conv2d(gate, max(channels // self.reduction, 1), 1, name="squeeze"))
        gate = nn.sigmoid(conv2d(gate, channels, 1, name="excite"))
        return x * gate


class CRB(nn.Module):
    """DANv1 conditional residual block: basic + CA(conv(LReLU(conv(concat(basic, cond))))).

    The first conv keeps the concatenated width; the second maps back to the basic width.
    `cond` is passed through unchanged by the caller (it is the same for every block).
    """
    reduction: int = 16

    @nn.compact
    def __call__(self, basic: Array, cond: Array) -> Array:
        feats = jnp.concatenate([basic, cond], axis=-1)
        y = leaky_relu(conv2d(feats, feats.shape[-1], 3, name="conv1"))
        y = conv2d(y, basic.shape[-1], 3, name="conv2")
        return basic + ChannelAttention(self.reduction, name="ca")(y)


class DPCB(nn.Module):
    """DANv2 dual-path conditional block.

    Main path: f1 + body1(f1) * body2(f2); conditional path: f2 + body2(f2). body1 is
    conv-LReLU-conv at `main_kernel` on the basic features; body2 the same at `cond_kernel`
    on the conditional features (which may be 1x1 spatially and broadcast, as in the Restorer).
    """
    main_kernel: int = 3
    cond_kernel: int = 1

    @nn.compact
    def __call__(self, f1: Array, f2: Array) -> tuple[Array, Array]:
        width = f1.shape[-1]
        a = conv2d(f1, width, self.main_kernel, name="main_conv1")
        a = conv2d(leaky_relu(a), width, self.main_kernel, name="main_conv2")
        b = conv2d(f2, width, self.cond_kernel, name="cond_conv1")
        b = conv2d(leaky_relu(b), width, self.cond_kernel, name="cond_conv2")
        return f1 + a * b, f2 + b


class DPCG(nn.Module):
    """A group of DPCBs with a group-level skip.

    `skip='official'` reproduces the released DANv2 code, whose group "residual" adds the
    blocks' output to itself (its blocks update the input list in place, so the saved input
    is already the output): the group returns 2 * blocks(x). `skip='input'` is the textbook
    x + blocks(x). Imported official weights need 'official'.
    """
    num_blocks: int
    main_kernel: int = 3
    cond_kernel: int = 1
    skip: str = "official"

    @nn.compact
    def __call__(self, f1: Array, f2: Array) -> tuple[Array, Array]:
        if self.skip not in ("official", "input"):
            raise ValueError(f"skip must be 'official' or 'input', got {self.skip!r}")
        y1, y2 = f1, f2
        for i in range(self.num_blocks):
            y1, y2 = DPCB(self.main_kernel, self.cond_kernel, name=f"block_{i}")(y1, y2)
        if self.skip == "official":
            return y1 + y1, y2 + y2
        return f1 + y1, f2 + y2


class Upsampler(nn.Module):
    """conv -> PixelShuffle stages then a conv to `out_channels` (x4 = two x2 stages).

    With `scale=1` and `shuffle_at_x1=False` it is just the output conv (DANv2's deblurring
    head); DANv1 keeps a conv + PixelShuffle(1) stage there.
    """
    scale: int
    out_channels: int = 3
    shuffle_at_x1: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        if self.scale == 4:
            factors: Sequence[int] = (2, 2)
        elif self.scale == 1 and not self.shuffle_at_x1:
            factors = ()
        else:
            factors = (self.scale,)
        for i, r in enumerate(factors):
            x = pixel_shuffle(conv2d(x, width * r * r, 3, name=f"up_{i}"), r)
        return conv2d(x, self.out_channels, 3, name="tail")
