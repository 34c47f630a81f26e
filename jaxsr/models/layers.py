"""Building blocks shared by the SR models (NHWC, PyTorch-compatible layouts).

Everything here mirrors a PyTorch layer closely enough that weights imported from an
official checkpoint (after OIHW -> HWIO) reproduce the PyTorch outputs: explicit symmetric
padding, PyTorch's default initialisation, and `pixel_shuffle` in PyTorch's channel order.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsr import cpu

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


def param(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...], *init_args) -> Array:
    """`module.param(name, init, shape, *init_args)` for a parameter of a known shape. Once the
    parameter exists (every apply), Flax's `param` traces `init` again (a `jax.eval_shape`) only
    to compare shapes, about a sixth of a model's trace; this compares them directly, with Flax's
    error."""
    if module.is_initializing() or not module.has_variable("params", name):
        return module.param(name, init, shape, *init_args)
    value = module.get_variable("params", name)
    if tuple(value.shape) != tuple(shape):
        raise flax.errors.ScopeParamShapeError(name, module.scope.path_text, tuple(value.shape), tuple(shape))
    return value


# ----------------------------------------------------------------------------- convolution
class Conv(nn.Module):
    """`torch.nn.Conv2d(in, features, kernel_size, stride, padding, bias=use_bias)` on NHWC input,
    with `nn.Conv`'s parameters (`kernel` (k, k, in, out), `bias` (out,), float32) and PyTorch's
    initialisation. It computes in `dtype` (default: the input's) through `jaxsr.cpu` (`conv2d`, `add_bias`), so
    programs compiled for the CPU get its matmul-shaped gradients, all others XLA's own."""
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        kernel = param(self, "kernel", TORCH_KERNEL_INIT, (k, k, x.shape[-1], self.features), jnp.float32)
        dtype = x.dtype if self.dtype is None else self.dtype
        y = cpu.conv2d(x.astype(dtype), kernel.astype(dtype), (s, s), ((p, p), (p, p)))
        if not self.use_bias:
            return y
        bias = param(self, "bias", torch_default_bias_init(x.shape[-1] * k * k), (self.features,), jnp.float32)
        bias = bias.astype(dtype)
        return cpu.add_bias(y, bias)


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
    """The `unroll` of an iteration `nn.scan` of `length` steps: `setting` iterations per loop
    trip, 0 for all of them. Which suits a platform is the caller's choice (`models.create`)."""
    return max(length, 1) if setting == 0 else min(int(setting), max(length, 1))


def remat_cell(cell, unroll: int):
    """`nn.remat` for an iteration cell. Inside a rolled scan XLA cannot CSE the recomputation
    away, so no barrier is needed; unrolled, it would, undoing the memory saving."""
    return nn.remat(cell, prevent_cse=unroll > 1)


def run_blocks(module: nn.Module, make_block: Callable[..., nn.Module], names: Sequence[str], carry,
               *consts, scan: bool = False):
    """`carry = block(*carry, *consts)` for `module`'s submodules `names` in order, each built by
    `make_block(name=...)` (a tuple `carry` is spread; an array is passed as one argument).

    With `scan` (GPU/TPU programs) their parameters are read from `module`, stacked along a new
    leading axis and applied by one unbound `make_block()` inside a `lax.scan`, so the compiler
    sees one block body instead of one copy per block; the parameter tree is the same either way
    and each block's gradient flows back through the stack. Initialisation always unrolls: it
    is what creates the blocks' parameters."""
    def call(block, c, params=None):
        args = (*c, *consts) if isinstance(c, tuple) else (c, *consts)
        return block(*args) if params is None else block.apply({"params": params}, *args)

    if not scan or module.is_initializing():
        for name in names:
            carry = call(make_block(name=name), carry)
        return carry
    params = module.variables["params"]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(params[name] for name in names))
    template = make_block(parent=None)  # unbound: applied to one block's parameters per trip
    return jax.lax.scan(lambda c, p: (call(template, c, p), None), carry, stacked)[0]


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
    scan_blocks: bool = False  # the blocks as one `lax.scan` body (`run_blocks`)

    @nn.compact
    def __call__(self, f1: Array, f2: Array) -> tuple[Array, Array]:
        if self.skip not in ("official", "input"):
            raise ValueError(f"skip must be 'official' or 'input', got {self.skip!r}")
        make = functools.partial(DPCB, self.main_kernel, self.cond_kernel)
        names = [f"block_{i}" for i in range(self.num_blocks)]
        y1, y2 = run_blocks(self, make, names, (f1, f2), scan=self.scan_blocks)
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
