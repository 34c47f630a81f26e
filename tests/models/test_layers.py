"""`layers.conv2d`'s convolution: on CPU its kernel gradient is one matmul per tap (a custom VJP);
forward and gradients must match the plain `lax.conv_general_dilated` and its `jax.grad`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr.models import dan, layers

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


def test_conv2d_uses_the_matmul_gradient_on_cpu_only(monkeypatch):
    x = jnp.ones((1, 6, 6, 16))
    module = layers.Upsampler(scale=2, out_channels=3)  # a 16 -> 64 conv, then a 16 -> 3 one
    variables = module.init(jax.random.key(0), x)
    traced = lambda: str(jax.make_jaxpr(lambda v: module.apply(v, x))(variables))
    assert jax.default_backend() == "cpu" and layers.conv_gradient_method() == "matmul"
    # the 3-channel tail is too skinny for per-tap matmuls and keeps XLA's gradient
    assert traced().count("custom_vjp_call") == 1
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layers.conv_gradient_method() == "xla" and "custom_vjp" not in traced()
    monkeypatch.undo()
    monkeypatch.setattr(layers, "CONV_GRADIENT", "xla")
    assert "custom_vjp" not in traced()
    with pytest.raises(ValueError, match="conv gradient method"):
        layers.conv_gradient_method("fast")


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
