"""KENet: the adaptive attention loss against a NumPy transcription of the paper's formula,
the estimator's structure and shapes, training, and the KENet -> USRNet pipeline through
`jaxsr.evaluate` (blind, and with the true kernel as the upper bound)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import ndimage

from helpers import count, load_config, smooth_image
from jaxsr import evaluate as E
from jaxsr import predict as predict_lib
from jaxsr.models import kenet as K
from jaxsr.models import usrnet as U
from jaxsr.ops import degrade

TINY = dict(features=4, fc_features=16)


def numpy_params(model, shape=(1, 16, 16, 3), seed=0):
    """Random parameters (PyTorch-like bounds) from the traced shapes; avoids compiling `init`."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    rng = np.random.default_rng(seed)

    def fill(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 16
        bound = 1 / np.sqrt(fan_in)
        return jnp.asarray(rng.uniform(-bound, bound, leaf.shape), jnp.float32)

    return jax.tree.map(fill, shapes)


# ----------------------------------------------------------------------------- loss
def np_attention_loss(estimate, target, lambdas=(0.01, 0.1), rhos=(0.01, 0.1, 1.0)):
    """Eq. (7)-(8) of the paper, in float64: ρ0 ||k* - k||₁ + Σ ρt ||k*_λt - k||₁, where k*_λ(i, j)
    is k*(i, j) if k(i, j) > λ p_max and k(i, j) otherwise; ||.||₁ as a mean over the taps."""
    est, gt = np.asarray(estimate, np.float64), np.asarray(target, np.float64)
    total = rhos[0] * np.mean(np.abs(est - gt))
    for lam, rho in zip(lambdas, rhos[1:]):
        p_max = gt.max(axis=(1, 2), keepdims=True)
        k_lam = np.where(gt > lam * p_max, est, gt)
        total += rho * np.mean(np.abs(k_lam - gt))
    return total


def random_gaussians(rng, n, size):
    sx, sy = rng.uniform(0.2, 4.0, n), rng.uniform(0.2, 4.0, n)
    theta = rng.uniform(0, np.pi, n)
    return np.asarray(degrade.gaussian_kernels(size, jnp.asarray(sx), jnp.asarray(sy), jnp.asarray(theta)))


@pytest.mark.parametrize("size", [11, 21])
def test_attention_loss_matches_the_paper_formula(size):
    rng = np.random.default_rng(size)
    target = random_gaussians(rng, 4, size)
    logits = rng.standard_normal((4, size * size))
    estimate = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).reshape(4, size, size).astype(np.float32)
    got = float(K.adaptive_attention_loss(jnp.asarray(estimate), jnp.asarray(target)))
    np.testing.assert_allclose(got, np_attention_loss(estimate, target), rtol=1e-5)
    # the three terms are really weighted as the paper says (0.01, 0.1, 1)
    only_l1 = float(K.adaptive_attention_loss(jnp.asarray(estimate), jnp.asarray(target), (), (1.0,)))
    np.testing.assert_allclose(only_l1, np.mean(np.abs(estimate.astype(np.float64) - target)), rtol=1e-5)
    assert K.ATTENTION_THRESHOLDS == (0.01, 0.1) and K.ATTENTION_WEIGHTS == (0.01, 0.1, 1.0)


def test_attention_loss_threshold_boundaries():
    """Taps exactly at λ·p_max are excluded (strict >), taps one float above are included."""
    lambdas, rhos = (0.25, 0.5), (1.0, 2.0, 4.0)
    up = lambda v: np.nextafter(np.float32(v), np.float32(1))
    # p_max = 0.5, so the thresholds are 0.125 and 0.25 exactly
    target = np.array([[[0.5, 0.125, 0.25], [up(0.125), up(0.25), 0.0], [0.01, 0.0, 0.0]]], np.float32)
    estimate = np.zeros_like(target)
    got = float(K.adaptive_attention_loss(jnp.asarray(estimate), jnp.asarray(target), lambdas, rhos))
    s = target.astype(np.float64)[0]
    hand = (s.sum() / 9                                                   # ρ0 ||k* - k||
            + 2.0 * (0.5 + 0.25 + float(up(0.125)) + float(up(0.25))) / 9  # taps > 0.125
            + 4.0 * (0.5 + float(up(0.25))) / 9)                           # taps > 0.25
    np.testing.assert_allclose(got, hand, rtol=1e-6)
    np.testing.assert_allclose(got, np_attention_loss(estimate, target, lambdas, rhos), rtol=1e-6)


def test_attention_loss_gradient_weights_taps_by_their_terms():
    """d/dk* = sign(k* - k)·(ρ0 + Σ_t ρt [k > λt p_max]) / #taps."""
    rng = np.random.default_rng(7)
    target = random_gaussians(rng, 2, 11)
    estimate = target + rng.uniform(-1e-3, 1e-3, target.shape).astype(np.float32)
    grad = np.asarray(jax.grad(K.adaptive_attention_loss)(jnp.asarray(estimate), jnp.asarray(target)))
    p_max = target.max(axis=(1, 2), keepdims=True)
    weight = 0.01 + 0.1 * (target > 0.01 * p_max) + 1.0 * (target > 0.1 * p_max)
    want = np.sign(estimate - target) * weight / target.size
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-12)


def test_attention_loss_validates():
    with pytest.raises(ValueError, match="weights"):
        K.adaptive_attention_loss(jnp.zeros((1, 3, 3)), jnp.zeros((1, 3, 3)), (0.1,), (1.0,))
    with pytest.raises(ValueError, match="estimate and target"):
        K.adaptive_attention_loss(jnp.zeros((1, 3, 3)), jnp.zeros((1, 5, 5)))


# ----------------------------------------------------------------------------- network
def paper_param_count(l, in_ch=3, base=64, fc=1024):
    """From §2.2: 3x3 convs with 64·s outputs (s = 1..4), a 2-conv residual block after each,
    FC 1024 -> 1024 -> l², all with biases."""
    total, prev = 0, in_ch
    for s in range(1, 5):
        width = base * s
        total += 9 * prev * width + width           # conv
        total += 2 * (9 * width * width + width)    # residual block
        prev = width
    return total + (prev * fc + fc) + (fc * fc + fc) + (fc * l * l + l * l)


@pytest.mark.parametrize("l,expected", [(11, 4_389_561), (21, 4_717_561)])
def test_param_count_follows_the_paper(l, expected):
    shapes = jax.eval_shape(K.KENet(kernel_size=l).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    assert count(shapes["params"]) == paper_param_count(l) == expected


def test_structure_matches_a_direct_composition():
    """conv(3→4·s) + ReLU + RB per level, 2x2 max-pool (floor) between levels, GAP, FC-ReLU-FC-ReLU-FC, softmax."""
    model = K.KENet(kernel_size=5, **TINY)
    lr = jax.random.uniform(jax.random.key(3), (2, 13, 10, 3))
    params = numpy_params(model)["params"]
    got = model.apply({"params": params}, lr)["kernel"][0]

    def conv(x, p):
        y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + p["bias"]

    def pool(x):
        n, h, w, c = x.shape
        x = x[:, :h // 2 * 2, :w // 2 * 2]
        return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    f = lr
    for level in range(4):
        f = pool(f) if level else f
        f = jax.nn.relu(conv(f, params[f"conv_{level}"]))
        b = params[f"block_{level}"]
        f = f + conv(jax.nn.relu(conv(f, b["conv1"])), b["conv2"])
        assert f.shape[-1] == 4 * (level + 1)
    f = f.mean(axis=(1, 2))
    for i in range(3):
        f = f @ params[f"fc_{i}"]["kernel"] + params[f"fc_{i}"]["bias"]
        f = jax.nn.relu(f) if i < 2 else f
    want = jax.nn.softmax(f, axis=-1).reshape(2, 5, 5)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("l,batch,h,w", [(11, 1, 17, 9), (15, 3, 12, 13), (21, 1, 8, 11)])
def test_output_shapes_and_kernel_constraints(l, batch, h, w):
    model = K.KENet(kernel_size=l, **TINY)
    params = numpy_params(model)
    lr = jax.random.uniform(jax.random.key(l), (batch, h, w, 3))
    out = jax.jit(model.apply)(params, lr)
    assert set(out) == {"kernel"} and out["kernel"].shape == (1, batch, l, l)
    k = np.asarray(out["kernel"][0], np.float64)
    assert (k >= 0).all()
    np.testing.assert_allclose(k.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    sr, est = K.predict(model, params, lr)
    assert sr is None and est.shape == (batch, l, l)


def test_bad_inputs_raise_value_error():
    model = K.KENet(kernel_size=5, **TINY)
    params = numpy_params(model)
    with pytest.raises(ValueError, match="at least 8x8"):
        model.apply(params, jnp.zeros((1, 7, 16, 3)))
    with pytest.raises(ValueError, match="lr"):
        model.apply(params, jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(ValueError, match="kernel_size"):
        K.KENet(kernel_size=4).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="unknown cfg.model fields"):
        K.create_model(ml_collections.ConfigDict({"model": {"name": "kenet", "depth": 2}}))


def test_jit_traces_once():
    model, traces = K.KENet(kernel_size=5, **TINY), []
    params = numpy_params(model)

    @jax.jit
    def run(p, lr):
        traces.append(1)
        return model.apply(p, lr)["kernel"]

    for seed in range(3):
        run(params, jax.random.uniform(jax.random.key(seed), (2, 16, 12, 3)))
    assert len(traces) == 1


# ----------------------------------------------------------------------------- training
def config(kind="attention", l=11):
    return ml_collections.ConfigDict({"scale": 2, "model": {"name": "kenet", "kernel_size": l, **TINY},
                                      "loss": {"type": kind}})


def make_batch(seed=0, n=4, hw=16, l=11):
    rng = np.random.default_rng(seed)
    hr = ndimage.gaussian_filter(rng.random((n, 2 * hw, 2 * hw, 3)), (0, 1.0, 1.0, 0))
    hr = jnp.asarray((hr - hr.min()) / (hr.max() - hr.min()), jnp.float32)
    kernel = jnp.asarray(random_gaussians(rng, n, l))
    lr = degrade.downsample_sfold(degrade.blur(hr, kernel), 2)
    return {"hr": hr, "lr": lr, "kernel": kernel, "noise_sigma": jnp.zeros((n,))}


def test_compute_loss_both_kinds():
    model = K.create_model(config())
    assert model == K.KENet(kernel_size=11, **TINY)
    params = numpy_params(model)
    batch = make_batch()
    out = model.apply(params, batch["lr"])
    est, gt = np.asarray(out["kernel"][0]), np.asarray(batch["kernel"])
    loss, metrics = K.compute_loss(out, batch, config("attention"))
    np.testing.assert_allclose(float(loss), np_attention_loss(est, gt), rtol=1e-5)
    l1, _ = K.compute_loss(out, batch, config("l1"))
    np.testing.assert_allclose(float(l1), np.mean(np.abs(est.astype(np.float64) - gt)), rtol=1e-5)
    mse = np.mean((est.astype(np.float64) - gt) ** 2, axis=(1, 2))
    np.testing.assert_allclose(float(metrics["kernel_psnr"]), np.mean(10 * np.log10(1 / mse)), rtol=1e-5)
    with pytest.raises(ValueError, match="cfg.loss.type"):
        K.compute_loss(out, batch, config("l2"))


def test_tiny_model_fits_a_fixed_batch_with_finite_nonzero_gradients():
    cfg = config()
    model, batch = K.create_model(cfg), make_batch(seed=3)
    params = numpy_params(model)["params"]
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        loss_fn = lambda p: K.compute_loss(model.apply({"params": p}, batch["lr"]), batch, cfg)[0]
        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt, loss, g

    losses = []
    for i in range(40):
        params, opt, loss, grads = step(params, opt)
        losses.append(float(loss))
        if i == 0:
            assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
                       for g in jax.tree.leaves(grads))
    # from a near-uniform kernel to (at least) the batch's average kernel shape
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < min(losses[:10]), losses


# ----------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def pipeline():
    kenet = K.KENet(kernel_size=11, **TINY)
    usr = U.USRNet(scale=2, num_iters=2, features=(4, 4, 8, 8), num_blocks=1, hyper_features=8)
    kp = numpy_params(kenet)["params"]
    up = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(1).uniform(-0.2, 0.2, x.shape), jnp.float32),
                      jax.eval_shape(lambda: usr.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))["params"])
    return predict_lib.two_step(predict_lib.bind(K.SPEC, kenet, kp), predict_lib.bind(U.SPEC, usr, up)), usr, up


def test_pipeline_through_evaluate_blind_and_oracle(pipeline):
    predict, usr, up = pipeline
    rng = np.random.default_rng(0)
    images = [("b", smooth_image(rng, 32, 32))]  # one padded size: one compile per path
    blind = E.evaluate(predict, images, scale=2, protocol="kxnet", max_batch=8)
    assert blind["kernel_size"] == 11 and len(blind["per_image"]) == 8 and not blind["oracle_kernel"]
    for key in ("psnr", "ssim", "kernel_psnr", "kernel_mae", "bicubic_psnr"):
        assert blind["mean"][key] is not None and np.isfinite(blind["mean"][key]), key

    oracle = E.evaluate(predict, images, scale=2, protocol="kxnet", max_batch=3, oracle_kernel=True)
    assert oracle["oracle_kernel"] and oracle["mean"]["kernel_psnr"] is None
    assert np.isfinite(oracle["mean"]["psnr"])
    # the oracle path really restores image i under kernel k with kernel k
    assert "true kernel" in E.format_markdown(oracle)


def test_oracle_path_feeds_each_lr_its_own_kernel():
    """Every (lr, kernel) pair that reaches predict_fn(lr, kernel) must satisfy lr = degrade(hr, kernel),
    including in the last, filled-up batch."""
    rng = np.random.default_rng(1)
    hr = smooth_image(rng, 32, 32)
    spec = degrade.DegradationSpec(scale=2, kernel_size=11, kernel_type="aniso", downsampler="sfold", quantize=True)
    calls = []

    def fake(lr, kernel):
        calls.append((np.asarray(lr), np.asarray(kernel)))
        return jnp.repeat(jnp.repeat(lr, 2, axis=1), 2, axis=2), None

    result = E.evaluate(fake, [("x", hr)], scale=2, protocol="kxnet", max_batch=3, oracle_kernel=True)
    assert [c[0].shape[0] for c in calls] == [3, 3, 3] and result["oracle_kernel"]
    seen = np.concatenate([c[1] for c in calls])
    np.testing.assert_array_equal(seen[:8], np.asarray(degrade.kxnet_test_kernels(11)))
    for lr, kernel in calls:
        want = degrade.apply_degradation(jnp.broadcast_to(jnp.asarray(hr), (len(kernel), 32, 32, 3)),
                                         jnp.asarray(kernel), spec)
        np.testing.assert_allclose(lr, want, atol=1e-6)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("variant", ["x2", "x4", "tiny", "cpu"])
def test_config_variants_validate(variant):
    from jaxsr import config_lib
    cfg = load_config("kenet", variant)
    config_lib.validate(cfg)
    spec = config_lib.degradation_spec(cfg)
    assert spec.kernel_size == cfg.model.kernel_size and spec.downsampler == "sfold"
    assert K.create_model(cfg).kernel_size == spec.kernel_size


def test_config_paper_settings():
    from jaxsr import config_lib
    cfg = load_config("kenet", "x4")
    spec = config_lib.degradation_spec(cfg)
    assert (spec.kernel_size, spec.kernel_type, spec.sigma_range, spec.theta_range) == (21, "aniso", (0.2, 4.0),
                                                                                          (0.0, np.pi))
    assert config_lib.degradation_spec(load_config("kenet", "x2")).kernel_size == 11
    assert (cfg.data.patch_size, cfg.data.batch_size, cfg.train.steps) == (96, 64, 600_000)
    assert (cfg.train.learning_rate, cfg.train.lr_gamma) == (1e-2, 0.1)
    assert tuple(cfg.train.lr_milestones) == (200_000, 400_000)
    assert cfg.loss.type == "attention" and tuple(cfg.loss.thresholds) == (0.01, 0.1)
    assert tuple(cfg.loss.weights) == (0.01, 0.1, 1.0)
