"""USRNet: the FFT data step against a dense linear solve, parameter counts, shapes, the shared
prior, gradients, the training-loop hooks and a short fit."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import ndimage

from helpers import count, load_config, torch_like_params
from jaxsr import config_lib
from jaxsr import predict as predict_lib
from jaxsr.models import usrnet as U
from jaxsr.ops import unfolding

TINY = dict(num_iters=2, features=(4, 4, 8, 8), num_blocks=1, hyper_features=8)


def tiny(scale=2, **kw):
    return U.USRNet(scale=scale, **{**TINY, **kw})


_APPLY = {}


def apply(model, variables, lr, kernel=None, sigma=None, num_iters=None):
    """model.apply, jitted once per model (the tests share a few input shapes)."""
    if model not in _APPLY:
        _APPLY[model] = jax.jit(model.apply, static_argnames=("num_iters",))
    return _APPLY[model](variables, lr, kernel, sigma, num_iters=num_iters)



def random_kernels(rng, n, k):
    """Asymmetric positive kernels summing to 1 (a Gaussian would hide a flip bug)."""
    kern = rng.random((n, k, k)) ** 3
    return (kern / kern.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- data step
def dense_degradation(kernel, hr_shape, scale):
    """The matrix of y = (x ★ k)↓s: circular cross-correlation (jaxsr's kernel convention,
    scipy 'wrap') then keep the top-left pixel of each s x s block, built column by column."""
    h, w = hr_shape
    cols = []
    for idx in range(h * w):
        e = np.zeros(h * w)
        e[idx] = 1.0
        blurred = ndimage.correlate(e.reshape(h, w), np.asarray(kernel, np.float64), mode="wrap")
        cols.append(blurred[::scale, ::scale].ravel())
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("scale,lr_hw,k", [(2, (3, 4), 5), (3, (2, 3), 5), (4, (2, 2), 3)])
def test_data_step_is_the_closed_form_solution(scale, lr_hw, k):
    """z = argmin ||y - S K z||² + α ||z - x||², solved densely: (AᵀA + αI) z = Aᵀy + αx."""
    rng = np.random.default_rng(scale)
    n, c = 2, 3
    h, w = lr_hw[0] * scale, lr_hw[1] * scale
    lr = rng.random((n, *lr_hw, c)).astype(np.float32)
    x = rng.random((n, h, w, c)).astype(np.float32)
    kernel = random_kernels(rng, n, k)
    alpha = np.array([0.05, 2.0], np.float32)

    fb, fbfy = unfolding.data_precompute(jnp.asarray(lr), jnp.asarray(kernel), scale)
    got = np.asarray(unfolding.data_step(jnp.asarray(x), fb, fbfy, jnp.asarray(alpha), scale))

    for i in range(n):
        a = dense_degradation(kernel[i], (h, w), scale)
        lhs = a.T @ a + alpha[i] * np.eye(h * w)
        for ch in range(c):
            rhs = a.T @ lr[i, ..., ch].astype(np.float64).ravel() + alpha[i] * x[i, ..., ch].ravel()
            want = np.linalg.solve(lhs, rhs).reshape(h, w)
            np.testing.assert_allclose(got[i, ..., ch], want, atol=2e-5, rtol=1e-4)


def test_p2o_gives_centred_circular_convolution():
    rng = np.random.default_rng(1)
    psf = rng.random((1, 5, 5)).astype(np.float32)
    image = rng.random((9, 12))
    otf = unfolding.p2o(jnp.asarray(psf), (9, 12))
    got = np.real(np.fft.ifft2(np.asarray(otf)[0] * np.fft.fft2(image)))
    want = ndimage.convolve(image, psf[0].astype(np.float64), mode="wrap")
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_block_mean_and_zero_upsampling():
    rng = np.random.default_rng(2)
    x = rng.random((1, 6, 9, 2))
    got = np.asarray(unfolding.block_mean(jnp.asarray(x), 3))
    want = np.mean([x[:, 2 * i:2 * i + 2, 3 * j:3 * j + 3] for i in range(3) for j in range(3)], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    up = np.asarray(unfolding.upsample_zeros(jnp.asarray(x, jnp.float32), 2))
    assert up.shape == (1, 12, 18, 2)
    np.testing.assert_allclose(up[:, ::2, ::2], x, rtol=1e-6)
    assert np.count_nonzero(up[:, 1::2]) == 0 and np.count_nonzero(up[:, :, 1::2]) == 0


def test_transposed_conv_matches_definition():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    w = rng.standard_normal((2, 2, 6, 5)).astype(np.float32)  # (a, b, out, in)
    got = np.asarray(U.ConvTranspose2x2(6).apply({"params": {"kernel": w}}, x))
    want = np.zeros((2, 6, 8, 6))
    for a in range(2):
        for b in range(2):
            want[:, a::2, b::2, :] = np.einsum("nhwc,oc->nhwo", x, w[a, b])
    np.testing.assert_allclose(got, want, atol=1e-5)


# ----------------------------------------------------------------------------- structure
def test_param_counts_match_official():
    full = jax.eval_shape(U.USRNet(scale=4).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert count(full["params"]) == U.OFFICIAL_NUM_PARAMS == 17_016_016
    small = U.USRNet(scale=4, **U.OFFICIAL_VARIANTS["usrnet_tiny"])
    assert count(jax.eval_shape(small.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]) == 590_332
    # one ResUNet shared by all stages: the count does not grow with T (only the hyper-net's output)
    assert "prior" in full["params"] and "hyper" in full["params"] and len(full["params"]) == 2


@pytest.fixture(scope="module")
def tiny_vars():
    model = tiny()
    params = torch_like_params(model, input_shape=(1, 8, 8, model.channels), other_fan_in=16, num_iters=None)
    return {"params": params["params"]}


@pytest.mark.parametrize("scale,batch,h,w", [(2, 1, 7, 9), (3, 3, 5, 6), (4, 1, 6, 5)])
def test_output_shapes(scale, batch, h, w, tiny_vars):
    model = tiny(scale)
    lr = jax.random.uniform(jax.random.key(0), (batch, h, w, 3))
    kernel = jnp.asarray(random_kernels(np.random.default_rng(0), batch, 5))
    out = apply(model, tiny_vars, lr, kernel, jnp.full((batch,), 5.0))
    assert set(out) == {"sr"} and out["sr"].shape == (2, batch, scale * h, scale * w, 3)
    assert bool(jnp.all(jnp.isfinite(out["sr"])))


def test_first_stage_is_prior_of_data_step(tiny_vars):
    """Stage 1 = ResUNet(concat(D(nearest-up(y)), β1)), with α1, β1 from the hyper-net on (σ/255, s);
    num_iters=1 runs just that stage; no kernel / noise means a Dirac kernel and σ = 0."""
    model = tiny(2)
    rng = np.random.default_rng(4)
    lr = jnp.asarray(rng.random((2, 6, 5, 3)), jnp.float32)
    kernel = jnp.asarray(random_kernels(rng, 2, 3))
    sigma = jnp.array([0.0, 25.0])
    out = apply(model, tiny_vars, lr, kernel, sigma)["sr"]
    p = tiny_vars["params"]
    hyper = U.HyperNet(4, 8).apply({"params": p["hyper"]}, sigma / 255.0, jnp.full((2,), 2.0))
    fb, fbfy = unfolding.data_precompute(lr, kernel, 2)
    z = unfolding.data_step(jnp.repeat(jnp.repeat(lr, 2, 1), 2, 2), fb, fbfy, hyper[:, 0], 2)
    beta = jnp.broadcast_to(hyper[:, 2][:, None, None, None], (*z.shape[:3], 1))
    want = U.ResUNet(3, (4, 4, 8, 8), 1).apply({"params": p["prior"]}, jnp.concatenate([z, beta], -1))
    np.testing.assert_allclose(out[0], want, atol=1e-5)
    assert bool(jnp.all(hyper > 0))
    one = apply(model, tiny_vars, lr, kernel, sigma, num_iters=1)["sr"]
    assert one.shape[0] == 1
    np.testing.assert_allclose(one[0], out[0], atol=1e-6)

    dirac = jnp.zeros((2, 3, 3)).at[:, 1, 1].set(1.0)
    np.testing.assert_allclose(apply(model, tiny_vars, lr)["sr"],
                               apply(model, tiny_vars, lr, dirac, jnp.zeros((2,)))["sr"], atol=1e-5)


def test_bad_arguments_raise_value_error(tiny_vars):
    model = tiny(2)
    lr = jnp.zeros((2, 6, 6, 3))
    k = jnp.ones((2, 3, 3)) / 9
    with pytest.raises(ValueError, match="kernel"):
        model.apply(tiny_vars, lr, jnp.ones((3, 3, 3)) / 9)
    with pytest.raises(ValueError, match="noise_sigma"):
        model.apply(tiny_vars, lr, k, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="num_iters"):
        model.apply(tiny_vars, lr, k, num_iters=3)
    with pytest.raises(ValueError, match="larger than the HR grid"):
        model.apply(tiny_vars, lr, jnp.ones((2, 15, 15)) / 225)
    with pytest.raises(ValueError, match="lr"):
        model.apply(tiny_vars, jnp.zeros((2, 6, 6, 1)), k)


def test_jit_traces_once(tiny_vars):
    model, traces = tiny(2), []

    @jax.jit
    def run(v, lr, k, s):
        traces.append(1)
        return model.apply(v, lr, k, s)["sr"]

    k = jnp.ones((2, 3, 3)) / 9
    for seed in range(3):
        run(tiny_vars, jax.random.uniform(jax.random.key(seed), (2, 6, 6, 3)), k, jnp.full((2,), float(seed)))
    assert len(traces) == 1


# ----------------------------------------------------------------------------- training
def config(**loss):
    return ml_collections.ConfigDict({"scale": 2, "model": {"name": "usrnet", **TINY},
                                      "loss": loss, "eval": {"noise": 0.0, "num_iters": -1}})


def make_batch(seed=0, n=2, hw=8, scale=2):
    rng = np.random.default_rng(seed)
    hr = ndimage.gaussian_filter(rng.random((n, hw * scale, hw * scale, 3)), (0, 1.5, 1.5, 0))
    hr = jnp.asarray((hr - hr.min()) / (hr.max() - hr.min()), jnp.float32)
    kernel = jnp.asarray(random_kernels(rng, n, 5))
    from jaxsr.ops import degrade
    lr = degrade.downsample_sfold(degrade.blur(hr, kernel), scale)
    return {"hr": hr, "lr": lr, "kernel": kernel, "noise_sigma": jnp.zeros((n,))}


def test_create_model_forward_and_loss(tiny_vars):
    cfg = config()
    model = U.create_model(cfg)
    assert model == tiny(2)
    batch = make_batch()
    out = U.forward(model, tiny_vars, batch)
    loss, metrics = U.compute_loss(out, batch, cfg)
    want = np.mean(np.abs(np.asarray(out["sr"][-1], np.float64) - np.asarray(batch["hr"], np.float64)))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert set(metrics) == {"loss", "l1_sr", "l1_sr_iter0", "l1_sr_iter1"}
    with pytest.raises(ValueError, match="non-blind and needs the kernel"):
        U.predict(model, tiny_vars, batch["lr"])
    with pytest.raises(ValueError, match="unknown cfg.model fields"):
        U.create_model(ml_collections.ConfigDict({"scale": 2, "model": {"name": "usrnet", "depth": 3}}))


def test_tiny_model_fits_a_fixed_batch_with_finite_nonzero_gradients(tiny_vars):
    cfg, model, batch = config(), tiny(2), make_batch(seed=5)
    tx = optax.adam(3e-3)
    params = tiny_vars["params"]
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        loss_fn = lambda p: U.compute_loss(U.forward(model, {"params": p}, batch), batch, cfg)[0]
        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, loss, g

    losses = []
    for i in range(30):
        params, opt, loss, grads = step(params, opt)
        losses.append(float(loss))
        if i == 0:
            leaves = jax.tree.leaves(grads)
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
            assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
    assert losses[-1] < 0.5 * losses[0], losses


def test_oracle_predictor_needs_a_kernel(tiny_vars):
    model, batch = tiny(2), make_batch()
    predict = predict_lib.bind(U.SPEC, model, tiny_vars["params"])
    sr, k = predict(batch["lr"], batch["kernel"])
    assert k is None
    np.testing.assert_allclose(sr, U.forward(model, tiny_vars, batch)["sr"][-1], atol=1e-5)
    with pytest.raises(ValueError, match="non-blind"):
        predict(batch["lr"])


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("variant", ["kenet_x2", "kenet_x4", "kxnet2_x2", "kxnet2_x3", "kxnet2_x4", "tiny", "cpu"])
def test_config_variants_validate(variant):
    from jaxsr import config_lib
    cfg = load_config("usrnet", variant)
    config_lib.validate(cfg)
    assert config_lib.degradation_spec(cfg).downsampler == "sfold"  # the data step's model
    assert U.create_model(cfg).scale == cfg.scale and cfg.eval.oracle_kernel
    if variant.startswith(("kenet", "kxnet2")):
        assert U.create_model(cfg) == U.USRNet(scale=cfg.scale)  # the official architecture
        assert cfg.data.patch_size * cfg.scale == 96 and cfg.data.batch_size == 48
