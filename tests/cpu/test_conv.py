"""The CPU's convolution formulations (`jaxsr.cpu.conv`, `jaxsr.cpu.native`) and the hook that
selects them (`jaxsr.cpu.hook`): custom VJPs with matmul kernel gradients, cotangent patches for
narrow outputs, native forward and kernel-gradient kernels; forward and gradients must match the plain
`lax.conv_general_dilated` and its `jax.grad`, and a definition in float64. Tests that need the native
kernels ask for the `native_kernels` fixture (tests/cpu/conftest.py), which builds them on first use."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr.cpu import conv as cpu_conv, hook, native
from jaxsr.models import dan, layers

needs_native = pytest.mark.usefixtures("native_kernels")

# (kernel, stride, padding): the geometries the models use (3x3, 1x1, DANv1's 9x9/4 HR head,
# USRNet's 2x2/2 and DSSR's 4x4/4 down convs) and a few others
GEOMETRIES = [(3, 1, 1), (1, 1, 0), (9, 4, 4), (2, 2, 0), (4, 4, 0), (5, 1, 2), (3, 2, 1), (3, 1, 0)]


def plain(x, w, stride, pad):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


FORMULATIONS = {"kernel_matmul": cpu_conv.conv_matmul_gradient, "canonical": cpu_conv.conv_canonical_gradients}


def kernels_named(name, request) -> native.Kernels:
    """"xla": no native kernel; "native": both (built on first use, skipped where they cannot be)."""
    return request.getfixturevalue("native_kernels") if name == "native" else native.NO_KERNELS


@pytest.mark.parametrize("kernels", ["xla", "native"])
@pytest.mark.parametrize("formulation", sorted(FORMULATIONS))
@pytest.mark.parametrize("k,stride,pad", GEOMETRIES)
def test_cpu_gradients_match_jax_grad_of_the_plain_conv(k, stride, pad, formulation, kernels, request):
    kernels = kernels_named(kernels, request)
    custom = lambda x, w, stride, pad: FORMULATIONS[formulation](x, w, (stride, stride), ((pad, pad), (pad, pad)), kernels)
    rng = np.random.default_rng(k * 100 + stride * 10 + pad)
    x = jnp.asarray(rng.standard_normal((2, 13, 11, 5)), jnp.float32)  # odd, non-square
    w = jnp.asarray(rng.standard_normal((k, k, 5, 7)) / k, jnp.float32)
    out_shape = plain(x, w, stride, pad).shape
    probe = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)

    def loss(conv):  # nonlinear, so the cotangent is not a constant
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride, pad)) * probe)

    np.testing.assert_array_equal(custom(x, w, stride, pad), plain(x, w, stride, pad))  # forward untouched
    want = jax.grad(loss(plain), argnums=(0, 1))(x, w)
    got = jax.jit(jax.grad(loss(custom), argnums=(0, 1)))(x, w)
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize("k,pad_h,pad_w", [(3, (2, 0), (0, 1)), (4, (1, 2), (2, 1)), (2, (3, 3), (1, 0))])
def test_stacked_kernel_gradient_with_asymmetric_padding(k, pad_h, pad_w):
    """The stride-1 (stacked shifts) kernel gradient where top/bottom and left/right padding differ."""
    rng = np.random.default_rng(k * 100 + sum(pad_h) * 10 + sum(pad_w))
    x = jnp.asarray(rng.standard_normal((2, 13, 11, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 5, 7)) / k, jnp.float32)
    conv = lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), (pad_h, pad_w), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y, vjp = jax.vjp(conv, w)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    got = cpu_conv.matmul_kernel_gradient(x, g, w.shape, (1, 1), (pad_h, pad_w))
    want = vjp(g)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def kernel_gradient_from_definition(x, g, kernel_shape, padding):
    """dw[a, b] = sum over n, i, j of x_padded[n, i + a, j + b] (outer) g[n, i, j], in float64."""
    kh, kw, _, _ = kernel_shape
    (pt, pb), (pl, pr) = padding
    ho, wo = g.shape[1:3]
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    g = np.asarray(g, np.float64)
    return np.stack([np.stack([np.einsum("nijc,nijo->co", xp[:, a:a + ho, b:b + wo], g) for b in range(kw)])
                     for a in range(kh)])


@pytest.mark.parametrize("k,stride,padding", [(3, 1, ((1, 1), (1, 1))), (9, 2, ((4, 4), (4, 4))), (4, 3, ((2, 1), (0, 3))),
                                              (2, 2, ((0, 0), (0, 0))), (5, 1, ((0, 2), (1, 0)))])
def test_correlation_kernel_gradient_matches_the_definition(k, stride, padding):
    rng = np.random.default_rng(k * 10 + stride)
    x = rng.standard_normal((2, 13, 11, 3)).astype(np.float32)
    (pt, pb), (pl, pr) = padding
    ho, wo = (13 + pt + pb - k) // stride + 1, (11 + pl + pr - k) // stride + 1
    g = rng.standard_normal((2, ho, wo, 16)).astype(np.float32)
    got = jax.jit(lambda x, g: cpu_conv.correlation_kernel_gradient(x, g, (k, k, 3, 16), (stride, stride), padding))(x, g)
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    want = np.zeros((k, k, 3, 16))
    for a, b in np.ndindex(k, k):
        want[a, b] = np.einsum("nijc,nijo->co", xp[:, a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride],
                               g.astype(np.float64))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# (batch, height, width, in, out, kernel, padding): odd sizes, channel counts that are not
# multiples of the kernel's register blocks (6 rows, 16 lanes, 64-wide column blocks), several
# column blocks and row chunks, asymmetric and zero padding, padding wider than the kernel reach
@needs_native
@pytest.mark.parametrize("n,h,w,c,o,k,padding", [
    (2, 13, 11, 5, 7, 3, ((1, 1), (1, 1))),
    (1, 9, 17, 70, 37, 3, ((1, 1), (1, 1))),
    (3, 8, 6, 16, 130, 3, ((0, 0), (0, 0))),
    (2, 7, 9, 3, 64, 5, ((2, 1), (0, 3))),
    (1, 6, 5, 33, 200, 1, ((0, 0), (0, 0))),
    (2, 5, 5, 12, 16, 4, ((1, 2), (2, 1))),
    (1, 4, 4, 8, 24, 3, ((3, 3), (2, 0))),
    (2, 20, 24, 64, 64, 3, ((1, 1), (1, 1))),
])
def test_native_kernel_gradient_matches_the_definition(n, h, w, c, o, k, padding):
    rng = np.random.default_rng(n * 1000 + h * 10 + c + o + k)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    (pt, pb), (pl, pr) = padding
    g = rng.standard_normal((n, h + pt + pb - k + 1, w + pl + pr - k + 1, o)).astype(np.float32)
    got = jax.jit(lambda x, g: native.kernel_gradient(x, g, (k, k, c, o), padding))(x, g)
    want = kernel_gradient_from_definition(x, g, (k, k, c, o), padding)
    assert got.shape == (k, k, c, o) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_native_kernel_gradient_is_what_the_cpu_kernel_gradient_uses(native_kernels, monkeypatch):
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.standard_normal((2, 10, 12, 20)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 10, 12, 24)), jnp.float32)

    def traced(x, g, kernels):  # a new function each time: JAX caches traces per function
        return str(jax.make_jaxpr(lambda x, g: cpu_conv.kernel_gradient(x, g, (3, 3, 20, 24), (1, 1),
                                                                        ((1, 1), (1, 1)), kernels))(x, g))

    assert native_kernels == native.Kernels(forward=True, kernel_gradient=True) == native.in_use()
    assert "jaxsr_conv_kernel_grad" in traced(x, g, native_kernels)
    assert "jaxsr_conv_kernel_grad" not in traced(x.astype(jnp.bfloat16), g.astype(jnp.bfloat16), native_kernels)
    assert "jaxsr_conv_kernel_grad" not in traced(x, g, native.NO_KERNELS)
    with native.suspended():  # benchmarks/models.py counts FLOPs this way
        assert not native.registered() and native.in_use() == native.NO_KERNELS
    assert native.registered() and native.in_use() == native_kernels
    monkeypatch.setattr(native, "_state", {})  # as in a process that never called native.load()
    assert not native.registered() and native.in_use() == native.NO_KERNELS


@needs_native
def test_native_kernel_gradient_rejects_mismatched_shapes():
    x, g = jnp.zeros((2, 8, 8, 4)), jnp.zeros((2, 8, 8, 5))
    with pytest.raises(ValueError, match="stride-1 convolution"):
        native.kernel_gradient(x, g, (3, 3, 4, 5), ((0, 0), (0, 0)))  # 3x3 unpadded gives 6x6
    with pytest.raises(ValueError, match="float32"):
        native.kernel_gradient(x.astype(jnp.bfloat16), g, (3, 3, 4, 5), ((1, 1), (1, 1)))



def conv_from_definition(x, w, padding):
    """out[n, i, j] = sum over a, b of x_padded[n, i + a, j + b] @ w[a, b], in float64."""
    kh, kw, _, o = w.shape
    (pt, pb), (pl, pr) = padding
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    w = np.asarray(w, np.float64)
    return sum(np.einsum("nijc,co->nijo", xp[:, a:a + ho, b:b + wo], w[a, b]) for a in range(kh) for b in range(kw))


@needs_native
@pytest.mark.parametrize("n,h,w,c,o,k,padding", [
    (2, 20, 24, 64, 64, 3, ((1, 1), (1, 1))),  # tiles of 6 pixels span rows and images
    (3, 13, 11, 17, 130, 3, ((1, 1), (1, 1))),  # output blocks of 64, 64 and 2 channels
    (2, 7, 9, 3, 64, 5, ((2, 1), (0, 3))),  # asymmetric padding
    (1, 6, 5, 33, 200, 1, ((0, 0), (0, 0))),  # 1x1
    (2, 5, 5, 12, 16, 4, ((1, 2), (2, 1))),  # even kernel
    (1, 4, 4, 8, 24, 3, ((3, 3), (2, 0))),  # padding beyond the kernel's reach: rows of zeros
    (1, 3, 50, 5, 40, 7, ((3, 3), (3, 3))),  # a map shorter than the kernel
    (2, 16, 16, 512, 48, 3, ((1, 1), (1, 1))),  # many input channels, 3 registers of outputs
])
def test_native_forward_matches_the_definition(n, h, w, c, o, k, padding):
    rng = np.random.default_rng(n * 1000 + h * 10 + c + o + k)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, c, o)) / np.sqrt(k * k * c)).astype(np.float32)
    got = jax.jit(lambda x, w: native.conv_forward(x, w, padding))(x, kernel)
    want = conv_from_definition(x, kernel, padding)
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_native
@pytest.mark.parametrize("k,padding", [(3, ((1, 1), (1, 1))), (5, ((2, 1), (0, 2))), (1, ((0, 0), (0, 0)))])
def test_native_forward_and_input_gradient_match_jax_grad_of_the_plain_conv(k, padding, native_kernels):
    """conv_matmul_gradient with the native kernels in all three places: the forward, the input
    gradient (the native forward of the cotangent with the flipped kernel) and the kernel gradient."""
    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.standard_normal((2, 13, 11, 20)), jnp.float32)  # odd, non-square
    w = jnp.asarray(rng.standard_normal((k, k, 20, 24)) / (k * np.sqrt(20)), jnp.float32)
    plain_conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    native_conv = lambda x, w: cpu_conv.conv_matmul_gradient(x, w, (1, 1), padding, native_kernels)
    probe = jnp.asarray(rng.standard_normal(plain_conv(x, w).shape), jnp.float32)
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)) * probe)
    program = jax.jit(jax.grad(loss(native_conv), argnums=(0, 1))).lower(x, w).as_text()
    assert program.count("jaxsr_conv_forward") == 2 and program.count("jaxsr_conv_kernel_grad") == 1
    np.testing.assert_allclose(jax.jit(native_conv)(x, w), plain_conv(x, w), rtol=1e-5, atol=1e-5)
    want = jax.grad(loss(plain_conv), argnums=(0, 1))(x, w)
    got = jax.jit(jax.grad(loss(native_conv), argnums=(0, 1)))(x, w)
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))))


def test_native_forward_is_what_cpu_stride1_convs_use(native_kernels):
    x = jnp.zeros((2, 10, 12, 20), jnp.float32)

    def traced(x, o, kernels=native_kernels):
        w = jnp.ones((3, 3, x.shape[-1], o), x.dtype)
        return str(jax.make_jaxpr(lambda x: cpu_conv.stride1_conv(x, w, ((1, 1), (1, 1)), kernels))(x))

    assert "jaxsr_conv_forward" in traced(x, 24)
    assert "jaxsr_conv_forward" not in traced(x, 8)  # fewer outputs than NATIVE_FORWARD_MIN_CHANNELS
    assert "jaxsr_conv_forward" not in traced(x.astype(jnp.bfloat16), 24)
    assert "jaxsr_conv_forward" not in traced(x, 24, native.NO_KERNELS)
    with native.forward_suspended():  # benchmarks/native_conv.py's A/B
        assert native.in_use() == native.Kernels(forward=False, kernel_gradient=True)
        assert "jaxsr_conv_forward" not in traced(x, 24, native.in_use())
    assert native.in_use() == native_kernels


@needs_native
def test_native_forward_rejects_mismatched_operands():
    x, w = jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 5, 16))
    with pytest.raises(ValueError, match="stride-1 convolution"):
        native.conv_forward(x, w, ((1, 1), (1, 1)))  # 4 input channels, kernel for 5
    with pytest.raises(ValueError, match="float32"):
        native.conv_forward(x.astype(jnp.bfloat16), jnp.zeros((3, 3, 4, 16)), ((1, 1), (1, 1)))


def test_packed_kernel_layout():
    w = jnp.arange(2 * 3 * 5 * 70, dtype=jnp.float32).reshape(2, 3, 5, 70)
    packed = np.asarray(native.pack_kernel(w))
    assert packed.shape == (2, 2, 3, 5, 64)
    np.testing.assert_array_equal(packed[1, :, :, :, :6], np.asarray(w)[..., 64:])
    np.testing.assert_array_equal(packed[0], np.asarray(w)[..., :64])
    assert not packed[1, ..., 6:].any()

# (kernel, padding top/bottom, left/right) of stride-1 convs, asymmetric ones included
NARROW_GEOMETRIES = [(3, (1, 1), (1, 1)), (1, (0, 0), (0, 0)), (5, (2, 2), (2, 2)), (3, (0, 0), (0, 0)),
                     (3, (2, 0), (0, 1)), (4, (1, 2), (2, 1)), (2, (3, 3), (1, 0))]


@pytest.mark.parametrize("k,pad_h,pad_w", NARROW_GEOMETRIES)
@pytest.mark.parametrize("channels", [(16, 3), (5, 2)])
def test_narrow_output_gradients_match_jax_grad_of_the_plain_conv(k, pad_h, pad_w, channels):
    c, o = channels
    rng = np.random.default_rng(k * 100 + sum(pad_h) * 10 + sum(pad_w) + c)
    x = jnp.asarray(rng.standard_normal((2, 13, 11, c)), jnp.float32)  # odd, non-square
    w = jnp.asarray(rng.standard_normal((k, k, c, o)) / k, jnp.float32)
    padding = (pad_h, pad_w)
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    narrow = lambda x, w: cpu_conv.conv_narrow_output(x, w, padding)
    probe = jnp.asarray(rng.standard_normal(conv(x, w).shape), jnp.float32)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)) * probe)

    # forward: one matmul to every tap's outputs, then their shifted sum; same sums, other order
    np.testing.assert_allclose(narrow(x, w), conv(x, w), rtol=1e-5, atol=1e-5)
    want = jax.grad(loss(conv), argnums=(0, 1))(x, w)
    got = jax.jit(jax.grad(loss(narrow), argnums=(0, 1)))(x, w)
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))))


def test_cotangent_patches_from_the_definition():
    """Patch (p, a, b) is the cotangent at the output pixel reading input p through tap (a, b)."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal((2, 6, 5, 2)).astype(np.float32)  # output of a 3x3 conv, padding (1, 0) x (0, 2)
    (pt, pb), (pl, pr), k = (1, 0), (0, 2), 3
    h, w = 6 - pt - pb + k - 1, 5 - pl - pr + k - 1
    got = np.asarray(cpu_conv.cotangent_patches(jnp.asarray(g), (k, k, 4, 2), (h, w), ((pt, pb), (pl, pr))))
    want = np.zeros((2, h, w, k, k, 2), np.float32)
    for n, i, j, a, b in np.ndindex(2, h, w, k, k):
        oi, oj = i + pt - a, j + pl - b
        if 0 <= oi < g.shape[1] and 0 <= oj < g.shape[2]:
            want[n, i, j, a, b] = g[n, oi, oj]
    np.testing.assert_array_equal(got, want.reshape(2 * h * w, k * k * 2))


@pytest.mark.parametrize("x_shape,kernel_shape,strides,padding,plan", [
    ((2, 32, 32, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),      # LR body
    ((2, 16, 16, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),      # padded rows: 1/8
    ((2, 8, 8, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "canonical"),            # padded rows: 1/4
    ((2, 128, 128, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),    # USRNet HR level
    ((2, 128, 128, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), "canonical"),         # DSSR HR body
    ((4, 128, 128, 64), (3, 3, 64, 64), (2, 2), ((1, 1), (1, 1)), "canonical"),            # strided, HR
    ((2, 128, 128, 64), (2, 2, 64, 128), (2, 2), ((0, 0), (0, 0)), "kernel_matmul"),   # USRNet down conv
    ((2, 128, 128, 128), (4, 4, 128, 128), (4, 4), ((0, 0), (0, 0)), "kernel_matmul"),  # DSSR down conv
    ((2, 128, 128, 128), (3, 3, 128, 3), (1, 1), ((1, 1), (1, 1)), "narrow_output"),  # RGB tail
    ((2, 16, 16, 64), (1, 1, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),      # padded 1x1: a conv
    ((2, 128, 128, 3), (3, 3, 3, 128), (1, 1), ((1, 1), (1, 1)), "canonical"),             # RGB head
    ((2, 128, 128, 64), (9, 9, 64, 3), (4, 4), ((4, 4), (4, 4)), "canonical"),             # strided narrow
])
def test_gradient_plan_per_geometry(x_shape, kernel_shape, strides, padding, plan):
    """Without the native kernel (no C++ compiler, or bfloat16 operands)."""
    assert cpu_conv.plan(x_shape, kernel_shape, strides, padding, native_kernel=False) == plan


@pytest.mark.parametrize("x_shape,kernel_shape,strides,padding,plan", [
    ((2, 128, 128, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),  # DSSR HR body
    ((1, 256, 256, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),    # no size limit
    ((2, 128, 128, 3), (3, 3, 3, 128), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),     # RGB head
    ((2, 128, 128, 128), (3, 3, 128, 3), (1, 1), ((1, 1), (1, 1)), "narrow_output"),  # RGB tail
    ((4, 128, 128, 64), (3, 3, 64, 64), (2, 2), ((1, 1), (1, 1)), "canonical"),            # strided, HR
    ((2, 128, 128, 64), (2, 2, 64, 128), (2, 2), ((0, 0), (0, 0)), "kernel_matmul"),   # USRNet down conv
])
def test_gradient_plan_with_the_native_kernel(x_shape, kernel_shape, strides, padding, plan):
    assert cpu_conv.plan(x_shape, kernel_shape, strides, padding, native_kernel=True) == plan


def _hlo_ops(lowered) -> str:
    return lowered.compile().as_text()


def test_the_hook_emits_the_cpu_formulation_only_in_cpu_programs(monkeypatch):
    """A CPU program of a narrow-output conv's gradient holds the cotangent-patch matmuls and no
    gradient convolution; forced to the other platforms' branch it holds XLA's convolutions."""
    x = jnp.ones((1, 6, 6, 16))
    module = layers.Upsampler(scale=1, out_channels=3, shuffle_at_x1=False)  # one 16 -> 3 conv
    variables = module.init(jax.random.key(0), x)
    loss = lambda v, x: jnp.sum(module.apply(v, x) ** 2)
    grad = lambda: jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables, x)  # traced afresh each call
    on_cpu = _hlo_ops(grad())
    assert " convolution(" not in on_cpu and " dot(" in on_cpu
    monkeypatch.setattr(hook, "on_cpu", lambda *args, cpu, default: default(*args))  # the GPU/TPU choice
    elsewhere = _hlo_ops(grad())
    assert elsewhere.count(" convolution(") >= 3  # forward, input gradient, kernel gradient


def test_the_hook_reads_the_native_kernels_once_per_cpu_branch_and_lowers_none_for_a_tpu(native_kernels, monkeypatch):
    """Both branches of a platform choice are traced for every platform; the CPU branch of a conv
    reads the one process-wide value (`native.in_use()`) once, and a program lowered for a TPU
    keeps none of it, though the kernels are loaded."""
    reads = []
    monkeypatch.setattr(native, "in_use", lambda: reads.append(1) or native_kernels)
    x, w = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 24))
    loss = lambda x, w: jnp.sum(hook.conv2d(x, w, (1, 1), ((1, 1), (1, 1))) ** 2)
    grad = lambda: jax.jit(jax.grad(loss, argnums=(0, 1))).trace(x, w)  # traced afresh each call
    tpu = grad().lower(lowering_platforms=("tpu",)).as_text()
    assert len(reads) == 2  # the forward's CPU branch and the backward's
    assert "jaxsr_" not in tpu and "convolution" in tpu
    assert "jaxsr_conv_forward" in grad().lower(lowering_platforms=("cpu",)).as_text()
    assert len(reads) == 4


# the optimized HLO without what differs between two traces of one program: names' numbers, debug data
HLO_NAME_SUFFIX = re.compile(r"(?<=[A-Za-z])(?:[._]\d+)+(?:\.clone)?(?:[._]\d+)*|, metadata=\{[^}]*\}")
STACK_FRAME_TABLE_ROW = re.compile(r"^\s*\d+ \{")


def _crb_gradient_text(monkeypatch, declared: bool) -> str:
    """The optimized CPU HLO of a DANv1 block's and a degradation's gradient, compiled by
    `jaxsr.platform.jit` with the platform declared or (as JAX's other entry points trace) not."""
    from jaxsr import platform
    from jaxsr.ops import degrade
    monkeypatch.setattr(hook, "_DECLARED", hook._declared_state() if declared else None)
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.standard_normal((2, 12, 12, 8)), jnp.float32)
    cond = jnp.asarray(rng.standard_normal((2, 12, 12, 4)), jnp.float32)
    kernel = jnp.asarray(rng.random((2, 7, 7)), jnp.float32)
    block = layers.CRB(4)
    variables = block.init(jax.random.key(0), x, cond)

    def loss(v, x):
        y = block.apply(v, x, cond)
        return jnp.sum(y ** 2) + jnp.sum(degrade.blur(y[..., :3], kernel / jnp.sum(kernel, (1, 2), keepdims=True)) ** 2)

    grad = platform.jit(jax.grad(loss, argnums=(0, 1)))  # a fresh function: traced afresh
    text = grad.lower(variables, x).compile().as_text()
    return HLO_NAME_SUFFIX.sub("", "\n".join(line for line in text.splitlines()
                                            if not STACK_FRAME_TABLE_ROW.match(line)))


def test_a_declared_platform_traces_one_branch_and_compiles_the_same_program(monkeypatch):
    """`jaxsr.platform.jit` declares the platform it compiles for, so only that platform's branch
    of each choice is traced; the compiled program is the one `platform_dependent` gives, instruction
    for instruction (names and debug locations aside)."""
    traced = {"cpu": 0, "default": 0}
    real_on_cpu = hook.on_cpu

    def counting_on_cpu(*args, cpu, default):
        def count(name, f):
            return lambda *a: traced.__setitem__(name, traced[name] + 1) or f(*a)
        return real_on_cpu(*args, cpu=count("cpu", cpu), default=count("default", default))

    monkeypatch.setattr(hook, "on_cpu", counting_on_cpu)
    declared = _crb_gradient_text(monkeypatch, True)
    assert traced["cpu"] > 0 and traced["default"] == 0, traced
    traced.update(cpu=0, default=0)
    undeclared = _crb_gradient_text(monkeypatch, False)
    assert traced["cpu"] > 0 and traced["default"] > 0, traced  # platform_dependent traces both
    assert " dot(" in declared and declared.count("\n") > 200
    assert declared == undeclared


def test_a_declared_platform_is_part_of_jaxs_trace_cache_key():
    """One jitted function traced for the CPU, then for a TPU (as `jaxsr.aot` does in one
    process): the TPU program holds XLA's convolutions and no CPU formulation, so no trace made
    for one platform is reused for another."""
    if hook._DECLARED is None:
        pytest.skip("this JAX has no config state API: every choice is platform_dependent")
    x, w = jnp.ones((1, 6, 6, 16)), jnp.ones((3, 3, 16, 3))  # a narrow output: CPU gradient = matmuls
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(hook.conv2d(x, w, (1, 1), ((1, 1), (1, 1))) ** 2), argnums=(0, 1)))
    with hook.tracing_for("cpu"):
        cpu_text = grad.trace(x, w).lower(lowering_platforms=("cpu",)).as_text()
    with hook.tracing_for("tpu"):
        tpu_text = grad.trace(x, w).lower(lowering_platforms=("tpu",)).as_text()
    assert cpu_text.count("stablehlo.convolution") <= 1  # at most the forward; the gradients are matmuls
    assert tpu_text.count("stablehlo.convolution") == 3  # forward, input and kernel gradients
    assert "jaxsr_" not in tpu_text
    assert hook.declared_platform() is None  # only inside the blocks


def test_the_hooked_conv_has_the_plain_convs_values_and_gradients():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 20)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 20, 24)) / 9, jnp.float32)
    probe = jnp.asarray(rng.standard_normal((2, 9, 8, 24)), jnp.float32)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)) * probe)
    hooked = lambda x, w: hook.conv2d(x, w, (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_allclose(hooked(x, w), plain(x, w, 1, 1), rtol=1e-5, atol=1e-5)
    want = jax.grad(loss(lambda x, w: plain(x, w, 1, 1)), argnums=(0, 1))(x, w)
    got = jax.jit(jax.grad(loss(hooked), argnums=(0, 1)))(x, w)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_bias_gradient_matches_jax_grad(dtype):
    rng = np.random.default_rng(5)
    y = jnp.asarray(rng.standard_normal((2, 7, 9, 6)), dtype)
    bias = jnp.asarray(rng.standard_normal(6), dtype)
    probe = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    loss = lambda f: lambda y, b: jnp.sum(jnp.sin(f(y, b).astype(jnp.float32)) * probe)
    np.testing.assert_array_equal(hook.add_bias(y, bias), y + bias)
    want = jax.grad(loss(lambda y, b: y + b), argnums=(0, 1))(y, bias)
    got = jax.jit(jax.grad(loss(hook.add_bias), argnums=(0, 1)))(y, bias)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=tol,
                                   atol=tol * float(jnp.max(jnp.abs(r.astype(jnp.float32)))))


def test_model_gradients_equal_with_either_formulation(monkeypatch):
    """A whole model (convs with biases, strided heads, scan): the same loss gradient in the CPU's
    formulation and in the one GPU/TPU programs get."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((49, 10)))
    model = dan.DANv1(scale=2, kernel_size=7, pca_matrix=q.astype(np.float32), restorer_features=16,
                      restorer_blocks=2, estimator_features=16, estimator_blocks=1, num_iters=2)
    lr = jnp.asarray(np.random.default_rng(1).random((2, 9, 10, 3)), jnp.float32)
    params = model.init(jax.random.key(0), lr)["params"]

    def grads():
        loss = lambda p: sum(jnp.mean(jnp.abs(v)) for v in jax.tree.leaves(model.apply({"params": p}, lr)))
        return jax.jit(jax.grad(loss))(params)

    matmul = grads()
    monkeypatch.setattr(hook, "on_cpu", lambda *args, cpu, default: default(*args))
    xla = grads()
    for a, b in zip(jax.tree.leaves(matmul), jax.tree.leaves(xla)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(float(jnp.max(jnp.abs(b))), 1e-3))
