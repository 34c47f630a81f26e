"""`layers.conv2d`'s convolution: on CPU it differentiates through custom VJPs (matmul kernel
gradients; cotangent patches for narrow outputs); forward and gradients must match the plain
`lax.conv_general_dilated` and its `jax.grad`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import cpu_kernels
from jaxsr.models import dan, layers

needs_native = pytest.mark.skipif(not cpu_kernels.available(),
                                  reason="jaxsr.cpu_kernels not built here (no C++ compiler, AVX-512 or x86-64)")

# (kernel, stride, padding): the geometries the models use (3x3, 1x1, DANv1's 9x9/4 HR head,
# USRNet's 2x2/2 and DSSR's 4x4/4 down convs) and a few others
GEOMETRIES = [(3, 1, 1), (1, 1, 0), (9, 4, 4), (2, 2, 0), (4, 4, 0), (5, 1, 2), (3, 2, 1), (3, 1, 0)]


def plain(x, w, stride, pad):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def custom(x, w, stride, pad):
    return layers.conv_matmul_gradient(x, w, (stride, stride), ((pad, pad), (pad, pad)))


@pytest.mark.parametrize("k,stride,pad", GEOMETRIES)
def test_matmul_kernel_gradient_matches_jax_grad_of_the_plain_conv(k, stride, pad):
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
    got = layers.matmul_kernel_gradient(x, g, w.shape, (1, 1), (pad_h, pad_w))
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
    got = jax.jit(lambda x, g: cpu_kernels.kernel_gradient(x, g, (k, k, c, o), padding))(x, g)
    want = kernel_gradient_from_definition(x, g, (k, k, c, o), padding)
    assert got.shape == (k, k, c, o) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_native
def test_native_kernel_gradient_is_what_conv_kernel_gradient_uses(monkeypatch):
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.standard_normal((2, 10, 12, 20)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 10, 12, 24)), jnp.float32)

    def traced(x, g):  # a new function each time: JAX caches traces per function
        return str(jax.make_jaxpr(lambda x, g: layers.conv_kernel_gradient(x, g, (3, 3, 20, 24), (1, 1),
                                                                          ((1, 1), (1, 1))))(x, g))

    assert "jaxsr_conv_kernel_grad" in traced(x, g)
    assert "jaxsr_conv_kernel_grad" not in traced(x.astype(jnp.bfloat16), g.astype(jnp.bfloat16))
    monkeypatch.setattr(cpu_kernels, "ENABLED", False)
    assert not cpu_kernels.available() and "jaxsr_conv_kernel_grad" not in traced(x, g)


@needs_native
def test_native_kernel_gradient_rejects_mismatched_shapes():
    x, g = jnp.zeros((2, 8, 8, 4)), jnp.zeros((2, 8, 8, 5))
    with pytest.raises(ValueError, match="stride-1 convolution"):
        cpu_kernels.kernel_gradient(x, g, (3, 3, 4, 5), ((0, 0), (0, 0)))  # 3x3 unpadded gives 6x6
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.kernel_gradient(x.astype(jnp.bfloat16), g, (3, 3, 4, 5), ((1, 1), (1, 1)))


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
    narrow = lambda x, w: layers.conv_narrow_output(x, w, padding)
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
    got = np.asarray(layers.cotangent_patches(jnp.asarray(g), (k, k, 4, 2), (h, w), ((pt, pb), (pl, pr))))
    want = np.zeros((2, h, w, k, k, 2), np.float32)
    for n, i, j, a, b in np.ndindex(2, h, w, k, k):
        oi, oj = i + pt - a, j + pl - b
        if 0 <= oi < g.shape[1] and 0 <= oj < g.shape[2]:
            want[n, i, j, a, b] = g[n, oi, oj]
    np.testing.assert_array_equal(got, want.reshape(2 * h * w, k * k * 2))


@pytest.mark.parametrize("x_shape,kernel_shape,strides,padding,plan", [
    ((2, 32, 32, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),      # LR body
    ((2, 128, 128, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),    # USRNet HR level
    ((2, 128, 128, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), "xla"),         # DSSR HR body
    ((4, 128, 128, 64), (3, 3, 64, 64), (2, 2), ((1, 1), (1, 1)), "xla"),            # strided, HR
    ((2, 128, 128, 64), (2, 2, 64, 128), (2, 2), ((0, 0), (0, 0)), "kernel_matmul"),   # USRNet down conv
    ((2, 128, 128, 128), (4, 4, 128, 128), (4, 4), ((0, 0), (0, 0)), "kernel_matmul"),  # DSSR down conv
    ((2, 128, 128, 128), (3, 3, 128, 3), (1, 1), ((1, 1), (1, 1)), "narrow_output"),  # RGB tail
    ((2, 16, 16, 64), (1, 1, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),      # padded 1x1: a conv
    ((2, 128, 128, 3), (3, 3, 3, 128), (1, 1), ((1, 1), (1, 1)), "xla"),             # RGB head
    ((2, 128, 128, 64), (9, 9, 64, 3), (4, 4), ((4, 4), (4, 4)), "xla"),             # strided narrow
])
def test_gradient_plan_per_geometry(x_shape, kernel_shape, strides, padding, plan):
    """Without the native kernel (no C++ compiler, or bfloat16 operands)."""
    assert layers.conv_gradient_plan(x_shape, kernel_shape, strides, padding, native=False) == plan
    assert layers.conv_gradient_plan(x_shape, kernel_shape, strides, padding, "xla", native=False) == "xla"


@pytest.mark.parametrize("x_shape,kernel_shape,strides,padding,plan", [
    ((2, 128, 128, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),  # DSSR HR body
    ((1, 256, 256, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),    # no size limit
    ((2, 128, 128, 3), (3, 3, 3, 128), (1, 1), ((1, 1), (1, 1)), "kernel_matmul"),     # RGB head
    ((2, 128, 128, 128), (3, 3, 128, 3), (1, 1), ((1, 1), (1, 1)), "narrow_output"),  # RGB tail
    ((4, 128, 128, 64), (3, 3, 64, 64), (2, 2), ((1, 1), (1, 1)), "xla"),            # strided, HR
    ((2, 128, 128, 64), (2, 2, 64, 128), (2, 2), ((0, 0), (0, 0)), "kernel_matmul"),   # USRNet down conv
])
def test_gradient_plan_with_the_native_kernel(x_shape, kernel_shape, strides, padding, plan):
    assert layers.conv_gradient_plan(x_shape, kernel_shape, strides, padding, native=True) == plan
    assert layers.conv_gradient_plan(x_shape, kernel_shape, strides, padding, "xla", native=True) == "xla"


def test_conv2d_uses_the_custom_gradients_on_cpu_only(monkeypatch):
    x = jnp.ones((1, 6, 6, 16))
    module = layers.Upsampler(scale=2, out_channels=3)  # a 16 -> 64 conv, then a 16 -> 3 one
    variables = module.init(jax.random.key(0), x)
    traced = lambda: str(jax.make_jaxpr(lambda v: module.apply(v, x))(variables))
    assert jax.default_backend() == "cpu" and layers.conv_gradient_method() == "matmul"
    # matmul kernel gradient for the 16 -> 64 conv, cotangent patches for the 3-channel tail,
    # and both bias additions
    assert traced().count("custom_vjp_call") == 4
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layers.conv_gradient_method() == "xla" and "custom_vjp" not in traced()
    monkeypatch.undo()
    monkeypatch.setattr(layers, "CONV_GRADIENT", "xla")
    assert "custom_vjp" not in traced()
    with pytest.raises(ValueError, match="conv gradient method"):
        layers.conv_gradient_method("fast")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_bias_gradient_matches_jax_grad(dtype):
    rng = np.random.default_rng(5)
    y = jnp.asarray(rng.standard_normal((2, 7, 9, 6)), dtype)
    bias = jnp.asarray(rng.standard_normal(6), dtype)
    probe = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    loss = lambda f: lambda y, b: jnp.sum(jnp.sin(f(y, b).astype(jnp.float32)) * probe)
    np.testing.assert_array_equal(layers.add_bias(y, bias), y + bias)
    want = jax.grad(loss(lambda y, b: y + b), argnums=(0, 1))(y, bias)
    got = jax.jit(jax.grad(loss(layers.add_bias), argnums=(0, 1)))(y, bias)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=tol,
                                   atol=tol * float(jnp.max(jnp.abs(r.astype(jnp.float32)))))


def test_conv_module_matches_torch_conv2d_definition():
    """`Conv` (kernel, bias, stride, padding) against a NumPy cross-correlation from the definition."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    module = layers.Conv(5, 3, stride=2, padding=1)
    variables = module.init(jax.random.key(0), jnp.asarray(x))
    w, b = (np.asarray(variables["params"][k]) for k in ("kernel", "bias"))
    assert w.shape == (3, 3, 3, 5) and b.shape == (5,) and w.dtype == np.float32
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((2, 5, 4, 5), np.float32)
    for i, j in np.ndindex(5, 4):
        want[:, i, j] = np.einsum("nabc,abco->no", xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w) + b
    np.testing.assert_allclose(module.apply(variables, jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)


def test_model_gradients_equal_with_either_kernel_gradient(monkeypatch):
    """A whole model (convs with biases, strided heads, scan): the same loss gradient both ways."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((49, 10)))
    model = dan.DANv1(scale=2, kernel_size=7, pca_matrix=q.astype(np.float32), restorer_features=16,
                      restorer_blocks=2, estimator_features=16, estimator_blocks=1, num_iters=2)
    lr = jnp.asarray(np.random.default_rng(1).random((2, 9, 10, 3)), jnp.float32)
    params = model.init(jax.random.key(0), lr)["params"]

    def grads():
        loss = lambda p: sum(jnp.mean(jnp.abs(v)) for v in jax.tree.leaves(model.apply({"params": p}, lr)))
        return jax.jit(jax.grad(loss))(params)

    monkeypatch.setattr(layers, "CONV_GRADIENT", "matmul")
    matmul = grads()
    monkeypatch.setattr(layers, "CONV_GRADIENT", "xla")
    xla = grads()
    for a, b in zip(jax.tree.leaves(matmul), jax.tree.leaves(xla)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(float(jnp.max(jnp.abs(b))), 1e-3))
