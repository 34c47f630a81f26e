"""The degradation's CPU formulations (`jaxsr.cpu.degrade`) and the choice of them: FFT blur,
blur + downsample at the kept pixels (2-D and separable), KXNet's FFT gradients. Each must equal the
plain formulation in `jaxsr.ops` (or a SciPy/NumPy definition) up to float32 rounding, and
`method="auto"` must pick them in CPU programs only."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import jaxsr.ops.degrade as D
from jaxsr.cpu import degrade as cpu_degrade
from jaxsr.ops import unfolding

MATRIX = D.downsampler_matrix  # the downsamplers as matrices, as jaxsr.ops passes them


def _rng(seed=0):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- FFT blur

def test_blur_fft_equals_conv_on_large_kernels():
    rng = _rng(11)
    x = jnp.asarray(rng.random((2, 40, 33, 3)), jnp.float32)
    k = D.sample_kernels(jax.random.key(0), 2, D.setting2(4))
    np.testing.assert_allclose(D.blur(x, k, method="fft"), D.blur(x, k, method="conv"), atol=2e-6)


# --------------------------------------------------------------------------- blur + downsample at the kept pixels

@pytest.mark.parametrize("downsampler", ["bicubic", "sfold"])
@pytest.mark.parametrize("scale, size, hw", [(2, 11, (26, 40)), (3, 15, (39, 27)), (4, 21, (68, 52)), (4, 7, (24, 36))])
def test_fused_equals_blur_then_downsample(downsampler, scale, size, hw):
    # Random (asymmetric) kernels and non-square images whose borders take the explicit rows of
    # the composition (reflect padding of the blur, then MATLAB's mirroring of the blurred image).
    rng = _rng(20 + scale)
    x = jnp.asarray(rng.random((2, *hw, 3)), jnp.float32)
    k = rng.random((2, size, size)).astype(np.float32)
    k = jnp.asarray(k / k.sum(axis=(1, 2), keepdims=True))
    got = jax.jit(cpu_degrade.blur_downsample, static_argnums=(2, 3, 4))(x, k, scale, downsampler, MATRIX)
    want = jax.jit(lambda x, k: D.downsample(D.blur(x, k, method="conv"), scale, downsampler))(x, k)
    assert got.shape == want.shape == (2, hw[0] // scale, hw[1] // scale, 3)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_fused_groups_of_images_match_one_group(monkeypatch):
    # Large batches run as a loop over groups (temporaries bounded); 5 images in groups of 2 also
    # exercises the zero-padded last group.
    rng = _rng(23)
    x = jnp.asarray(rng.random((5, 24, 20, 3)), jnp.float32)
    k = jnp.asarray(rng.random((5, 5, 5)), jnp.float32)
    whole = jax.jit(lambda x, k: cpu_degrade.blur_downsample(x, k, 2, "bicubic", MATRIX))(x, k)
    per_image = 2.5 * (24 + 4 + 10) * (20 + 4 + 10) * 3 * 4
    monkeypatch.setattr(cpu_degrade, "_TEMP_BUDGET", 2 * per_image)
    grouped = jax.jit(lambda x, k: cpu_degrade.blur_downsample(x, k, 2, "bicubic", MATRIX))(x, k)
    np.testing.assert_allclose(grouped, whole, rtol=1e-6, atol=1e-6)  # other group sizes may reorder float sums
    assert grouped.shape == (5, 12, 10, 3)


def test_fused_axis_plan_splits_regular_and_border_outputs():
    # x4 bicubic on 256: outputs 0, 1 and 62, 63 read mirrored blurred pixels; the rest share one
    # 16-tap pattern shifted by 4. s-fold has no border outputs.
    plan = cpu_degrade._axis_plan(256, 4, 21, "bicubic", MATRIX)
    assert plan.out == 64 and plan.regular == (2, 62) and len(plan.taps) == 16
    assert [b for b, _ in plan.explicit] == [0, 0, 242, 246]  # where each border pattern starts
    assert all(abs(sum(m) - 1) < 1e-12 for _, m in plan.explicit)
    sfold = cpu_degrade._axis_plan(256, 4, 21, "sfold", MATRIX)
    assert sfold.regular == (0, 64) and sfold.taps == (1.0,) and sfold.explicit == ()


def test_fused_gradients_match_two_step():
    rng = _rng(21)
    x = jnp.asarray(rng.random((2, 28, 24, 3)), jnp.float32)
    k = jnp.asarray(rng.random((2, 9, 9)), jnp.float32)
    y = jnp.asarray(rng.random((2, 7, 6, 3)), jnp.float32)

    def loss(fn):
        return lambda x, k: jnp.sum(fn(x, k) * y)

    fused = jax.jit(jax.grad(loss(lambda x, k: cpu_degrade.blur_downsample(x, k, 4, "bicubic", MATRIX)),
                             argnums=(0, 1)))(x, k)
    two_step = jax.jit(jax.grad(loss(lambda x, k: D.downsample_bicubic(D.blur(x, k, "conv"), 4)), argnums=(0, 1)))(x, k)
    for a, b in zip(fused, two_step):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


# --------------------------------------------------------------------------- separable kernels

@pytest.mark.parametrize("downsampler", ["bicubic", "sfold"])
@pytest.mark.parametrize("scale, size, hw", [(2, 11, (26, 40)), (3, 15, (39, 27)), (4, 21, (68, 52)), (4, 7, (24, 36))])
def test_separable_equals_scipy_blur_then_downsample(downsampler, scale, size, hw):
    # Random positive (asymmetric) factors, so a wrong flip or axis swap shows; the reference is
    # SciPy's correlation with mirrored borders (= reflect padding), then the downsampler.
    from jaxsr.ops.imresize import imresize
    rng = _rng(40 + scale)
    x = rng.random((2, *hw, 3)).astype(np.float32)
    u, v = rng.random((2, size)) + 0.1, rng.random((2, size)) + 0.1
    u, v = u / u.sum(axis=1, keepdims=True), v / v.sum(axis=1, keepdims=True)
    got = jax.jit(cpu_degrade.separable_blur_downsample, static_argnums=(3, 4, 5))(
        jnp.asarray(x), jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32), scale, downsampler, MATRIX)
    blurred = np.stack([np.stack([ndimage.correlate(x[i, :, :, c].astype(np.float64), np.outer(u[i], v[i]), mode="mirror")
                                  for c in range(3)], axis=-1) for i in range(2)])
    want = blurred[:, ::scale, ::scale] if downsampler == "sfold" else np.asarray(imresize(jnp.asarray(blurred, jnp.float32), 1 / scale))
    assert got.shape == want.shape == (2, hw[0] // scale, hw[1] // scale, 3)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_separable_factors_of_isotropic_gaussians():
    k = D.gaussian_kernels(21, jnp.asarray([0.2, 1.3, 4.0]))
    u, v = cpu_degrade.separable_factors(k)
    np.testing.assert_allclose(u[:, :, None] * v[:, None, :], k, atol=1e-7)


@pytest.mark.parametrize("spec", [D.setting1(4), D.kxnet_setting(3, setting=1),
                                  D.DegradationSpec(scale=2, kernel_size=9, noise_range=(0, 10), quantize=True)])
def test_degrade_isotropic_takes_the_separable_path_with_the_same_result(spec, monkeypatch):
    # degrade's isotropic kernels go through separable_blur_downsample on the fused method (the
    # CPU default), never the 2-D path's groups; the result is the plain path's up to float
    # rounding, noise included.
    hr = jnp.asarray(_rng(31).random((3, 48, 36, 3)), jnp.float32)
    key = jax.random.key(2)
    fused_spec = D.DegradationSpec(**{**spec.__dict__, "blur_method": "fused"})
    conv = D.degrade(key, hr, D.DegradationSpec(**{**spec.__dict__, "blur_method": "conv"}))

    def no_2d_path(*args, **kwargs):
        raise AssertionError("isotropic kernels took the 2-D fused path")
    monkeypatch.setattr(cpu_degrade, "_blur_downsample", no_2d_path)
    fused = jax.jit(D._degrade.__wrapped__, static_argnames=("spec",))(key, hr, spec=fused_spec)
    np.testing.assert_array_equal(fused.kernel, conv.kernel)
    np.testing.assert_array_equal(fused.noise_sigma, conv.noise_sigma)
    if spec.quantize:  # a value within rounding of a level boundary may land on the next level
        assert float(jnp.mean(jnp.abs(fused.lr - conv.lr) > 1e-6)) < 1e-3
        np.testing.assert_allclose(fused.lr, conv.lr, atol=1 / 255 + 1e-6)
    else:
        np.testing.assert_allclose(fused.lr, conv.lr, atol=2e-6)


def test_degrade_isotropic_above_the_separable_size_takes_the_2d_path(monkeypatch):
    hr = jnp.asarray(_rng(32).random((2, 40, 32, 3)), jnp.float32)
    key, spec = jax.random.key(4), D.DegradationSpec(scale=2, kernel_size=7, blur_method="fused")
    monkeypatch.setattr(cpu_degrade, "SEPARABLE_MAX_SIDE", 39)
    monkeypatch.setattr(cpu_degrade, "separable_blur_downsample", lambda *a, **k: (_ for _ in ()).throw(AssertionError("separable")))
    got = jax.jit(D._degrade.__wrapped__, static_argnames=("spec",))(key, hr, spec=spec)
    want = D.degrade(key, hr, D.DegradationSpec(scale=2, kernel_size=7, blur_method="conv"))
    np.testing.assert_allclose(got.lr, want.lr, atol=2e-6)


# --------------------------------------------------------------------------- the platform choice

def _ops(fn, args, platform):
    """Counts of FFTs, convolutions and loops in `fn` lowered for `platform` (no device needed)."""
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    return {op: len(re.findall(rf"stablehlo\.{op}\b", text)) for op in ("fft", "convolution", "while")}


_F32 = jnp.float32
_AUTO = {  # method="auto" everywhere: the CPU formulation (FFTs or loops) on CPU, one convolution elsewhere
    "blur": (lambda x, k: D.blur(x, k), [(2, 40, 36, 3), (2, 21, 21)], "fft"),
    "kernel_gradient": (lambda x, r: unfolding.kernel_gradient(x, r, 9, 4), [(2, 24, 20, 3), (2, 6, 5, 3)], "fft"),
    "transposed_blur": (lambda e, k: unfolding.transposed_blur(e, k, 4), [(2, 6, 5, 3), (2, 9, 9)], "fft"),
    "blur_down": (lambda x, k: unfolding.blur_down(x, k, 4), [(2, 24, 20, 3), (2, 9, 9)], "fft"),
    "apply_degradation": (lambda x, k: D.apply_degradation(x, k, D.setting2(4)), [(2, 40, 36, 3), (2, 21, 21)], "while"),
}


@pytest.mark.parametrize("name", sorted(_AUTO))
def test_auto_picks_the_cpu_formulation_only_in_cpu_programs(name):
    fn, shapes, cpu_op = _AUTO[name]
    args = [jax.ShapeDtypeStruct(s, _F32) for s in shapes]
    cpu, tpu = _ops(fn, args, "cpu"), _ops(fn, args, "tpu")
    assert cpu[cpu_op] > 0 and cpu["convolution"] == 0, cpu
    assert tpu == {"fft": 0, "convolution": 1, "while": 0}, tpu


def test_unfolding_fft_formulations_equal_the_convolutions():
    # KXNet's K- and X-step operators (also checked against their definitions in tests/models/test_kxnet.py)
    rng = _rng(50)
    x = jnp.asarray(rng.random((2, 24, 20, 3)), _F32)
    r = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), _F32)
    k = jnp.asarray(rng.random((2, 9, 9)), _F32)
    kg = jax.jit(lambda x, r: [unfolding.kernel_gradient(x, r, 9, 4, m) for m in ("fft", "conv")])(x, r)
    np.testing.assert_allclose(kg[0], kg[1], rtol=1e-5, atol=1e-6)
    tb = jax.jit(lambda e, k: [unfolding.transposed_blur(e, k, 4, m) for m in ("fft", "conv")])(r, k)
    np.testing.assert_allclose(tb[0], tb[1], atol=1e-5)
    bd = jax.jit(lambda x, k: [unfolding.blur_down(x, k, 4, m) for m in ("fft", "conv")])(x, k)
    np.testing.assert_allclose(bd[0], bd[1], rtol=1e-5, atol=1e-5)
