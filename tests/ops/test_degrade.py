import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import jaxsr.ops.degrade as D


def _np_gaussian(size, sx, sy, theta):
    """Reference from the definition: exp(-½ pᵀ Σ⁻¹ p), Σ = R diag(sx², sy²) Rᵀ, p = (x, y)."""
    r = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cov = r @ np.diag([sx ** 2, sy ** 2]) @ r.T
    inv = np.linalg.inv(cov)
    c = size // 2
    k = np.zeros((size, size))
    for row in range(size):
        for col in range(size):
            p = np.array([col - c, row - c], float)
            k[row, col] = np.exp(-0.5 * p @ inv @ p)
    return k / k.sum()


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_gaussian_kernels_match_definition():
    rng = _rng()
    sx, sy, th = rng.uniform(0.6, 5, 5), rng.uniform(0.6, 5, 5), rng.uniform(-np.pi, np.pi, 5)
    got = np.asarray(D.gaussian_kernels(15, sx, sy, th))
    for i in range(5):
        np.testing.assert_allclose(got[i], _np_gaussian(15, sx[i], sy[i], th[i]), atol=1e-6)
    iso = np.asarray(D.gaussian_kernels(21, [1.3]))[0]
    g = np.exp(-0.5 * (np.arange(21) - 10) ** 2 / 1.3 ** 2)
    np.testing.assert_allclose(iso, np.outer(g, g) / np.outer(g, g).sum(), atol=1e-7)


def test_anisotropic_orientation():
    # theta = 0: the long axis (sigma_x) runs along columns (x); theta = pi/2 turns it to rows.
    k0 = np.asarray(D.gaussian_kernels(21, 4.0, 1.0, 0.0))[0]
    k90 = np.asarray(D.gaussian_kernels(21, 4.0, 1.0, np.pi / 2))[0]
    assert k0[10, 14] > k0[14, 10]
    np.testing.assert_allclose(k90, k0.T, atol=1e-6)


def test_gaussian8_exact_values():
    np.testing.assert_allclose(D.gaussian8_sigmas(2), np.linspace(0.80, 1.60, 8))
    np.testing.assert_allclose(D.gaussian8_sigmas(3), np.linspace(1.35, 2.40, 8))
    np.testing.assert_allclose(D.gaussian8_sigmas(4), np.linspace(1.80, 3.20, 8))
    k = D.gaussian8_kernels(4)
    assert k.shape == (8, 21, 21)
    np.testing.assert_allclose(np.asarray(k).sum(axis=(1, 2)), 1, atol=1e-6)


def test_kxnet_test_kernels():
    k = np.asarray(D.kxnet_test_kernels(21))
    assert k.shape == (8, 21, 21)
    np.testing.assert_allclose(k[4], _np_gaussian(21, 2.0, 4.0, 0.0), atol=1e-6)


def _sigma_from_kernel(k):
    c = k.shape[-1] // 2
    r2 = (np.arange(k.shape[-1]) - c) ** 2
    return np.sqrt((k.sum(axis=-2) * r2).sum(-1))  # std of the column marginal


def test_setting1_sigma_range():
    spec = D.setting1(2)
    k = np.asarray(D.sample_kernels(jax.random.key(1), 4000, spec))
    assert k.shape == (4000, 21, 21)
    np.testing.assert_allclose(k.sum(axis=(1, 2)), 1, atol=1e-5)
    np.testing.assert_allclose(k, np.transpose(k, (0, 2, 1)), atol=1e-7)  # isotropic
    s = _sigma_from_kernel(k)
    # A sampled sigma of 0.2 gives a nearly discrete delta (marginal std ~0.0); check the top end
    # and that values spread over the range.
    assert 1.95 < s.max() <= 2.0 + 1e-3
    assert s.min() < 0.3
    assert 0.4 < np.mean(s > 1.1) < 0.6


def test_setting2_kernels_noisy_and_anisotropic():
    spec = D.setting2(4)
    assert (spec.kernel_size, spec.kernel_noise, spec.sigma_range) == (21, 0.25, (0.6, 5.0))
    k = np.asarray(D.sample_kernels(jax.random.key(2), 256, spec))
    np.testing.assert_allclose(k.sum(axis=(1, 2)), 1, atol=1e-5)
    assert (k >= 0).all()
    clean = D.DegradationSpec(**{**spec.__dict__, "kernel_noise": 0.0})
    k_clean = np.asarray(D.sample_kernels(jax.random.key(2), 256, clean))
    ratio = np.where(k_clean > 1e-20, k / np.maximum(k_clean, 1e-30), 1.0)  # skip underflowed taps
    spread = ratio.max(axis=(1, 2)) / ratio.min(axis=(1, 2))
    assert (spread <= 1.25 / 0.75 + 1e-4).all() and (spread > 1.4).all()
    assert np.abs(k_clean - np.transpose(k_clean, (0, 2, 1))).max() > 1e-3  # not all isotropic


@pytest.mark.parametrize("method", ["conv", "fft"])
def test_blur_matches_scipy_correlate_with_reflect_padding(method):
    rng = _rng(3)
    x = rng.random((3, 17, 22, 3)).astype(np.float32)
    k = rng.random((3, 7, 7)).astype(np.float32)  # asymmetric on purpose: checks orientation
    k /= k.sum(axis=(1, 2), keepdims=True)
    got = np.asarray(D.blur(jnp.asarray(x), jnp.asarray(k), method=method))
    for i in range(3):
        for c in range(3):
            # numpy/jnp 'reflect' (edge not repeated) is scipy's 'mirror'.
            ref = ndimage.correlate(x[i, :, :, c].astype(np.float64), k[i].astype(np.float64), mode="mirror")
            np.testing.assert_allclose(got[i, :, :, c], ref, atol=1e-5)


def test_blur_one_conv_under_jit_and_vmap():
    rng = _rng(4)
    x = jnp.asarray(rng.random((2, 4, 16, 16, 1)), jnp.float32)
    k = jnp.asarray(rng.random((2, 4, 5, 5)), jnp.float32)
    out = jax.jit(jax.vmap(D.blur))(x, k)
    ref = jnp.stack([D.blur(x[i], k[i]) for i in range(2)])
    np.testing.assert_allclose(out, ref, atol=1e-6)
    hlo = jax.jit(lambda a, b: D.blur(a, b, method="conv")).lower(x[0], k[0]).as_text()
    assert hlo.count("convolution(") == 1 or hlo.count("stablehlo.convolution") == 1


def test_blur_gradient_is_adjoint():
    rng = _rng(5)
    x = jnp.asarray(rng.random((2, 12, 12, 3)), jnp.float32)
    k = jnp.asarray(rng.random((2, 5, 5)), jnp.float32)
    y = jnp.asarray(rng.random((2, 12, 12, 3)), jnp.float32)
    gx, gk = jax.grad(lambda x, k: jnp.sum(D.blur(x, k) * y), argnums=(0, 1))(x, k)
    assert np.isfinite(gx).all() and np.abs(gk).sum() > 0
    # <A x, y> == <x, Aᵀ y> with Aᵀ y = grad: check on a second random x (linearity in x).
    x2 = jnp.asarray(rng.random((2, 12, 12, 3)), jnp.float32)
    np.testing.assert_allclose(jnp.sum(D.blur(x2, k) * y), jnp.sum(x2 * gx), rtol=1e-5)


def test_sfold_keeps_upper_left():
    x = jnp.arange(2 * 8 * 12 * 1, dtype=jnp.float32).reshape(2, 8, 12, 1)
    np.testing.assert_array_equal(D.downsample_sfold(x, 4), np.asarray(x)[:, ::4, ::4])
    assert D.downsample_sfold(x, 4).shape == (2, 2, 3, 1)


def test_noise_per_image_sigma_and_clipping():
    x = jnp.full((2, 64, 64, 3), 0.5, jnp.float32)
    y = D.add_noise(jax.random.key(0), x, jnp.array([5.0, 20.0]))
    std = np.asarray(y - x).reshape(2, -1).std(axis=1) * 255
    np.testing.assert_allclose(std, [5.0, 20.0], rtol=0.05)
    z = D.add_noise(jax.random.key(0), jnp.ones((1, 32, 32, 1)), 50.0)
    assert float(z.max()) <= 1.0 and float(z.min()) >= 0.0


def test_degrade_end_to_end_sfold_matches_scipy():
    rng = _rng(6)
    hr = jnp.asarray(rng.random((2, 24, 32, 3)), jnp.float32)
    spec = D.DegradationSpec(scale=2, kernel_size=7, downsampler="sfold", sigma_range=(0.5, 2.0))
    out = D.degrade(jax.random.key(7), hr, spec)
    assert out.lr.shape == (2, 12, 16, 3) and out.kernel.shape == (2, 7, 7)
    k = np.asarray(out.kernel, np.float64)
    for i in range(2):
        for c in range(3):
            ref = ndimage.correlate(np.asarray(hr[i, :, :, c], np.float64), k[i], mode="mirror")[::2, ::2]
            np.testing.assert_allclose(out.lr[i, :, :, c], ref, atol=1e-5)


def test_degrade_bicubic_composes_blur_and_imresize():
    from jaxsr.ops.imresize import imresize
    rng = _rng(8)
    hr = jnp.asarray(rng.random((2, 32, 28, 3)), jnp.float32)
    spec = D.setting1(4)
    out = D.degrade(jax.random.key(3), hr, spec)
    np.testing.assert_allclose(out.lr, imresize(D.blur(hr, out.kernel), 0.25), atol=1e-6)
    assert out.lr.shape == (2, 8, 7, 3)


def test_degrade_deterministic_and_noise():
    hr = jnp.asarray(_rng(9).random((4, 16, 16, 3)), jnp.float32)
    spec = D.kxnet_setting(2, setting=2)
    a = D.degrade(jax.random.key(0), hr, spec)
    b = D.degrade(jax.random.key(0), hr, spec)
    c = D.degrade(jax.random.key(1), hr, spec)
    np.testing.assert_array_equal(a.lr, b.lr)
    assert not np.allclose(a.lr, c.lr)
    assert a.noise_sigma.shape == (4,) and (a.noise_sigma >= 0).all() and (a.noise_sigma <= 25).all()
    assert len(set(np.asarray(a.noise_sigma).round(4))) == 4  # one level per image


def test_degrade_quantize_gives_uint8_levels():
    hr = jnp.asarray(_rng(10).random((1, 16, 16, 3)), jnp.float32)
    spec = D.DegradationSpec(scale=2, kernel_size=5, quantize=True)
    lr = np.asarray(D.degrade(jax.random.key(0), hr, spec).lr) * 255
    np.testing.assert_allclose(lr, np.round(lr), atol=1e-4)


@pytest.mark.parametrize("call, match", [
    (lambda: D.blur(jnp.zeros((8, 8, 3)), jnp.ones((1, 3, 3)) / 9), "4-D NHWC"),
    (lambda: D.blur(jnp.zeros((1, 8, 8, 3), jnp.uint8), jnp.ones((1, 3, 3)) / 9), "floating-point"),
    (lambda: D.blur(jnp.zeros((1, 8, 8, 3)), jnp.ones((1, 4, 4)) / 16), "odd"),
    (lambda: D.blur(jnp.zeros((2, 8, 8, 3)), jnp.ones((1, 3, 3)) / 9), "one kernel per image"),
    (lambda: D.blur(jnp.zeros((1, 8, 8, 3)), jnp.ones((1, 21, 21)) / 441), "too small"),
    (lambda: D.blur(jnp.full((1, 8, 8, 3), jnp.nan), jnp.ones((1, 3, 3)) / 9), "NaN"),
    (lambda: D.blur(jnp.zeros((1, 8, 8, 3)), jnp.ones((1, 3, 3)) / 9, method="fast"), "method"),
    (lambda: D.setting1(5), "scale"),
    (lambda: D.DegradationSpec(kernel_size=20), "kernel_size"),
    (lambda: D.DegradationSpec(downsampler="nearest"), "downsampler"),
    (lambda: D.DegradationSpec(noise_range=(-1, 3)), "noise_range"),
    (lambda: D.gaussian_kernels(21, -1.0), "sigma_x"),
    (lambda: D.degrade(jax.random.key(0), jnp.zeros((1, 30, 30, 3)), D.setting1(4)), "multiple of scale"),
    (lambda: D.degrade(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), {"scale": 4}), "DegradationSpec"),
])
def test_bad_input_raises_named_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- fused blur + downsample

def test_apply_degradation_same_result_for_every_blur_method():
    # blur_method only picks an implementation ("auto" = "fused" on CPU): every choice gives the
    # same LR image. One jit for all of them keeps the test's compile time down.
    hr = jnp.asarray(_rng(22).random((2, 40, 44, 3)), jnp.float32)
    specs = [D.setting2(4), D.kxnet_setting(2, setting=1)]
    kernels = [D.sample_kernels(jax.random.key(5), 2, spec) for spec in specs]

    @jax.jit
    def all_methods(hr, kernels):
        return [{m: D.apply_degradation(hr, k, D.DegradationSpec(**{**spec.__dict__, "blur_method": m}))
                 for m in D.SPEC_BLUR_METHODS} for spec, k in zip(specs, kernels)]

    for outs in all_methods(hr, kernels):
        for m in ("conv", "fft", "fused"):
            np.testing.assert_allclose(outs[m], outs["auto"], atol=2e-6)


def test_fused_rejected_by_plain_blur():
    with pytest.raises(ValueError, match="method"):
        D.blur(jnp.zeros((1, 8, 8, 3)), jnp.ones((1, 3, 3)) / 9, method="fused")
    with pytest.raises(ValueError, match="blur_method"):
        D.DegradationSpec(blur_method="fast")


# --------------------------------------------------------------------------- separable kernels

@pytest.mark.parametrize("taps_h, taps_w, match", [
    (jnp.ones((2, 5)) / 5, jnp.ones((1, 5)) / 5, r"taps_h must have shape \(1, k\)"),
    (jnp.ones((1, 4)) / 4, jnp.ones((1, 4)) / 4, "k odd"),
    (jnp.ones((1, 5)) / 5, jnp.ones((1, 7)) / 7, "same shape"),
    (jnp.ones((1, 21)) / 21, jnp.ones((1, 21)) / 21, "too small"),
])
def test_separable_bad_input_raises_named_value_error(taps_h, taps_w, match):
    with pytest.raises(ValueError, match=match):
        D.separable_blur_downsample(jnp.zeros((1, 8, 8, 3)), taps_h, taps_w, 2)


# --------------------------------------------------------------------------- official-code options (issue 37)

def _official_tap_noise(kernels, draws):
    """greatlog/DAN codes/utils/deg_utils.py random_batch_kernel, random_disturb=True, with its
    np.random.uniform(0, 0.25, (batch, l, l)) draws given: k + draws·k, then k / Σk."""
    k = kernels + draws * kernels
    return k / np.sum(k, (1, 2), keepdims=True)


def test_perturb_taps_is_the_official_tap_noise_on_random_kernels():
    rng = _rng(21)
    sx, sy, th = rng.uniform(0.6, 5, 6), rng.uniform(0.6, 5, 6), rng.uniform(-np.pi, np.pi, 6)
    kernels = np.stack([_np_gaussian(11, *p) for p in zip(sx, sy, th)])
    draws = rng.uniform(0, 0.25, kernels.shape)
    got = np.asarray(D.perturb_taps(jnp.asarray(kernels, jnp.float32), jnp.asarray(draws, jnp.float32)))
    want = _official_tap_noise(kernels, draws)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
    assert np.abs(want - kernels).max() > 1e-3  # the noise is visible: the check above can fail


@pytest.mark.parametrize("mode, spread", [("positive", (1.2, 1.25)), ("symmetric", (1.5, 1.25 / 0.75))])
def test_kernel_noise_mode_draws_the_stated_distribution(mode, spread):
    """Same key, same Gaussian: noisy / clean is (1 + n) / c per tap, so its max / min spread is at
    most 1.25 for n ~ U(0, 0.25) (the official k + U(0, 0.25)·k) and up to 1.25 / 0.75 for U(-0.25, 0.25)."""
    base = D.DegradationSpec(scale=2, kernel_size=11, kernel_type="aniso", sigma_range=(2.0, 5.0), kernel_noise_mode=mode)
    import dataclasses
    clean = np.asarray(D.sample_kernels(jax.random.key(3), 8, base), np.float64)
    noisy = np.asarray(D.sample_kernels(jax.random.key(3), 8, dataclasses.replace(base, kernel_noise=0.25)), np.float64)
    for c, n in zip(clean, noisy):
        ratio = (n / c)[c > 1e-4]
        r = ratio.max() / ratio.min()
        assert spread[0] < r <= spread[1] * (1 + 1e-4), (mode, r)
    np.testing.assert_allclose(noisy.sum((1, 2)), 1.0, atol=1e-5)


def test_symmetric_tap_noise_unchanged_for_the_paper_variants():
    """The default mode draws exactly what jaxsr drew before the option existed."""
    spec = D.setting2(2)
    assert spec.kernel_noise_mode == "symmetric"
    k_sx, k_sy, k_th, k_noise = jax.random.split(jax.random.key(5), 4)
    sx = jax.random.uniform(k_sx, (3,), minval=0.6, maxval=5.0)
    sy = jax.random.uniform(k_sy, (3,), minval=0.6, maxval=5.0)
    th = jax.random.uniform(k_th, (3,), minval=-np.pi, maxval=np.pi)
    k = D.gaussian_kernels(11, sx, sy, th)
    k = k * (1.0 + jax.random.uniform(k_noise, k.shape, minval=-0.25, maxval=0.25))
    np.testing.assert_array_equal(D.sample_kernels(jax.random.key(5), 3, spec), k / jnp.sum(k, axis=(1, 2), keepdims=True))


def test_round_8bit_is_the_official_training_rounding():
    """DAN v1/v2, DSSR and KXNet train.py: LR_img = (LR_img * 255).round() / 255, no clipping (bicubic
    overshoot outside [0, 1] survives); torch.round and NumPy both round half to even."""
    x = _rng(22).uniform(-0.05, 1.05, (2, 9, 9, 3)).astype(np.float32)
    x[0, 0, 0, :] = np.array([0.5, 1.5, 2.5], np.float32) / 255  # ties
    want = np.round(x * np.float32(255)) / np.float32(255)
    got = np.asarray(D.round_8bit(jnp.asarray(x)))
    np.testing.assert_array_equal(np.round(got * 255), np.round(x * 255))  # the same 8-bit level everywhere
    np.testing.assert_allclose(got, want, rtol=2.5e-7, atol=0)  # XLA divides by 255 as a multiply: ≤ 2 ulp
    assert got.min() < 0 and got.max() > 1  # not clipped, unlike `quantize`
    assert not np.allclose(got, x, atol=1e-4)
    grad = jax.grad(lambda v: jnp.sum(D.round_8bit(v) * 3.0))(jnp.asarray(x))
    np.testing.assert_array_equal(grad, 3.0)  # straight-through


@pytest.mark.parametrize("spec", [
    D.DegradationSpec(scale=2, kernel_size=5, sigma_range=(0.5, 2.0)),
    D.kxnet_setting(2, 2),  # s-fold with AWGN: rounded after the noise, as KXNet's train.py
])
def test_degrade_round_lr_rounds_the_lr_it_would_give_otherwise(spec):
    import dataclasses
    hr = jnp.asarray(_rng(23).random((2, 24, 24, 3)), jnp.float32)
    plain = np.asarray(D.degrade(jax.random.key(4), hr, spec).lr)
    out = D.degrade(jax.random.key(4), hr, dataclasses.replace(spec, round_lr=True))
    np.testing.assert_allclose(np.asarray(out.lr), np.round(plain * np.float32(255)) / np.float32(255),
                               rtol=2.5e-7, atol=0)
    np.testing.assert_array_equal(np.round(np.asarray(out.lr) * 255), np.round(plain * 255))
    assert not np.array_equal(np.asarray(out.lr), plain)
