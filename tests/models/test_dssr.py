"""DSSR module: parameter count, shapes, the shared-parameter scan, loss, gradients, training."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from helpers import count, load_config, rand, torch_like_params
from jaxsr.models import dssr

TINY = dict(features=8, structure_blocks=2, refine_blocks=1)


def tiny(scale=2, **kw):
    return dssr.DSSR(scale=scale, **{**TINY, **kw})


@pytest.fixture(scope="module")
def tiny_vars():
    return torch_like_params(tiny())


# ----------------------------------------------------------------------------- structure
def test_param_count_matches_official_x4():
    # official training setting: 128 channels, 15 Stru-FE + 5 refinement blocks, x4
    shapes = jax.eval_shape(dssr.DSSR(scale=4).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    assert count(shapes["params"]) == 8_902_278


def test_param_count_by_hand_at_x2_and_x3():
    f, c = 128, 3
    conv = lambda i, o, k: i * o * k * k + o
    shared = (conv(c, f, 3) + conv(2 * f, f, 1) + 20 * 2 * conv(f, f, 3) + conv(f, c, 3) + conv(c, f, 3)
              + 2 * (4 * conv(f, f, 3) + 2 * conv(f, f, 1)))
    for scale, k in ((2, 4), (3, 5)):
        want = shared + 2 * conv(f, f, k) + conv(f, f * scale * scale, 3) + conv(f, c, 3)
        shapes = jax.eval_shape(dssr.DSSR(scale=scale).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        assert count(shapes["params"]) == want


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("batch,h,w", [(1, 7, 10), (3, 5, 5)])
def test_output_shapes(scale, batch, h, w):
    model = tiny(scale, num_iters=3)
    lr = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)
    out, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), lr)
    assert out["sr"].shape == out["detail"].shape == (3, batch, scale * h, scale * w, 3)
    assert out["sr_mean"].shape == (batch, scale * h, scale * w, 3)
    # one parameter set whatever T is: nothing has a leading T axis
    _, v1 = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, num_iters=1), lr)
    assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape, v1)


@pytest.mark.parametrize("scale,k,pad", [(2, 4, 1), (3, 5, 1), (4, 4, 0)])
def test_conv_transpose_matches_scatter_definition(scale, k, pad):
    # torch.nn.ConvTranspose2d: every input pixel scatters weight[i, o] * x into the output at
    # (stride * y + u - padding, stride * x + v - padding)
    rng = np.random.default_rng(scale)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    w = rng.standard_normal((k, k, 6, 5))  # (k, k, out, in)
    b = rng.standard_normal(6)
    params = {"params": {"kernel": jnp.asarray(w, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}}
    got = np.asarray(dssr.ConvTranspose(6, k, scale, pad).apply(params, x))
    full = np.zeros((2, (3 - 1) * scale + k, (4 - 1) * scale + k, 6))
    for yy in range(3):
        for xx in range(4):
            full[:, scale * yy:scale * yy + k, scale * xx:scale * xx + k] += np.einsum(
                "ni,uvoi->nuvo", x[:, yy, xx].astype(np.float64), w)
    want = full[:, pad:pad + scale * 3, pad:pad + scale * 4] + b
    assert got.shape == (2, 3 * scale, 4 * scale, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_conv_transpose_init_uses_pytorch_bounds():
    # PyTorch's fan-in for a transposed conv is out_channels * k * k
    p = dssr.ConvTranspose(16, 4, 4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 32)))["params"]
    assert p["kernel"].shape == (4, 4, 16, 32)
    bound = 1 / np.sqrt(16 * 4 * 4)
    for leaf in (np.asarray(p["kernel"]), np.asarray(p["bias"])):
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound


def test_bad_arguments_raise_value_error(tiny_vars):
    model = tiny()
    with pytest.raises(ValueError, match="lr"):
        model.apply(tiny_vars, rand((1, 6, 7, 1)))
    with pytest.raises(ValueError, match="lr"):
        model.apply(tiny_vars, jnp.zeros((6, 7, 3)))
    with pytest.raises(ValueError, match="num_iters"):
        model.apply(tiny_vars, rand((1, 6, 7, 3)), num_iters=0)
    with pytest.raises(ValueError, match="scan_unroll"):
        model.clone(scan_unroll=-1).apply(tiny_vars, rand((1, 6, 7, 3)))
    with pytest.raises(ValueError, match="scale"):
        jax.eval_shape(tiny(scale=1).init, jax.random.key(0), jnp.zeros((1, 6, 7, 3)))


# ----------------------------------------------------------------------------- the loop
def test_steps_share_parameters_T_only_appends_and_predict_returns_the_mean(tiny_vars):
    model, lr = tiny(), rand((2, 6, 7, 3), 3)

    @jax.jit
    def run(v, x):
        return (model.apply(v, x, num_iters=2), model.apply(v, x, num_iters=3),
                dssr.predict(model, v, x, num_iters=3))

    out2, out3, (predicted, kernel) = run(tiny_vars, lr)
    assert kernel is None  # kernel-free
    for key in ("sr", "detail"):
        assert out3[key].shape[0] == 3
        np.testing.assert_allclose(out3[key][:2], out2[key], rtol=1e-5, atol=1e-6)
    mean = np.mean(np.asarray(out3["sr"], np.float64), 0)
    np.testing.assert_allclose(out3["sr_mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predicted, mean, rtol=1e-5, atol=1e-6)
    # the recurrence matters: step 3 differs from step 2 (the hidden state changed)
    assert float(jnp.max(jnp.abs(out3["sr"][2] - out3["sr"][1]))) > 1e-5
    # the default T is the field's
    shapes = jax.eval_shape(model.apply, tiny_vars, lr)
    assert shapes["sr"].shape[0] == model.num_iters == 4


def test_unroll_and_remat_change_nothing_numerically(tiny_vars):
    lr = rand((1, 5, 6, 3), 5)

    @jax.jit
    def run(v):
        return [m.apply(v, lr, num_iters=3) for m in (tiny(), tiny(scan_unroll=3), tiny(remat=True, scan_unroll=2))]

    plain, *others = run(tiny_vars)
    for other in others:
        for key in ("sr", "detail", "sr_mean"):
            np.testing.assert_allclose(other[key], plain[key], rtol=1e-5, atol=1e-6)


def test_jit_traces_once_for_a_fixed_shape(tiny_vars):
    model, traces = tiny(), []

    @jax.jit
    def forward(variables, lr):
        traces.append(1)  # Python side effect: runs only while tracing
        return model.apply(variables, lr, num_iters=2)["sr_mean"]

    for seed in range(3):
        forward(tiny_vars, rand((2, 6, 7, 3), seed)).block_until_ready()
    assert len(traces) == 1


# ----------------------------------------------------------------------------- loss
def torch_bicubic_up(x, s):
    """float64 NumPy `F.interpolate(x, scale_factor=s, mode='bicubic', align_corners=False)`, NHWC."""
    def axis_matrix(n):
        a = -0.75
        m = np.zeros((n * s, n))
        for o in range(n * s):
            src = (o + 0.5) / s - 0.5
            base = int(np.floor(src))
            for tap in range(base - 1, base + 3):
                d = abs(src - tap)
                w = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else (((d - 5) * d + 8) * d - 4) * a
                m[o, min(max(tap, 0), n - 1)] += w
        return m
    return np.einsum("oh,nhwc,pw->nopc", axis_matrix(x.shape[1]), x.astype(np.float64), axis_matrix(x.shape[2]))


def loss_cfg(scale=2, **loss):
    return ml_collections.ConfigDict({"scale": scale, "model": {"name": "dssr", **TINY}, "loss": loss})


def test_compute_loss_matches_numpy():
    rng = np.random.default_rng(0)
    t, n, h, w, s = 3, 2, 4, 5, 3
    lr = rng.random((n, h, w, 3), np.float32)
    hr = rng.random((n, s * h, s * w, 3), np.float32)
    out = {"sr": rng.random((t, n, s * h, s * w, 3), np.float32),
           "detail": rng.standard_normal((t, n, s * h, s * w, 3)).astype(np.float32)}
    l1 = lambda a, b: np.mean(np.abs(a.astype(np.float64) - b))
    target = hr - torch_bicubic_up(lr, s)
    sr_terms = [l1(out["sr"][i], hr) for i in range(t)]
    d_terms = [l1(out["detail"][i], target) for i in range(t)]
    batch = {"hr": jnp.asarray(hr), "lr": jnp.asarray(lr)}
    jout = {k: jnp.asarray(v) for k, v in out.items()}

    loss, metrics = dssr.compute_loss(jout, batch, loss_cfg(s))  # paper: α = 1, plain sum over t
    np.testing.assert_allclose(loss, sum(sr_terms) + sum(d_terms), rtol=1e-5)
    np.testing.assert_allclose(metrics["l1_detail_iter1"], d_terms[1], rtol=1e-5)
    np.testing.assert_allclose(metrics["l1_sr_iter2"], sr_terms[2], rtol=1e-5)

    loss, metrics = dssr.compute_loss(jout, batch, loss_cfg(s, detail_weight=0.5, iter_weights=(0.0, 1.0, 2.0)))
    want = sum(wt * (sr_terms[i] + 0.5 * d_terms[i]) for i, wt in enumerate((0.0, 1.0, 2.0)))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    with pytest.raises(ValueError, match="iter_weights"):
        dssr.compute_loss(jout, batch, loss_cfg(s, iter_weights=(1.0, 1.0)))


def test_create_model_validates_config():
    model = dssr.create_model(loss_cfg(3))
    assert model.scale == 3 and model.features == 8
    cfg = loss_cfg()
    cfg.model.kernel_size = 21
    with pytest.raises(ValueError, match="kernel_size"):
        dssr.create_model(cfg)
    cfg = loss_cfg()
    cfg.model.name = "danv1"
    with pytest.raises(ValueError, match="danv1"):
        dssr.create_model(cfg)


# ----------------------------------------------------------------------------- gradients and training
def test_tiny_model_gradients_and_fit_a_fixed_batch():
    cfg = loss_cfg(2)
    model = dssr.create_model(cfg)
    # smooth HR content, 2x decimated: a learnable fixed batch
    yy, xx = np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 14), indexing="ij")
    hr = np.stack([0.5 + 0.3 * np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)], -1)[None].repeat(2, 0)
    hr[1] = hr[1, ::-1]
    batch = {"hr": jnp.asarray(hr, jnp.float32), "lr": jnp.asarray(hr[:, ::2, ::2], jnp.float32)}
    params = torch_like_params(model)["params"]
    opt = optax.adam(2e-3, b1=0.9, b2=0.99)
    state = opt.init(params)

    def loss_fn(p):
        return dssr.compute_loss(model.apply({"params": p}, batch["lr"], num_iters=2), batch, cfg)

    @jax.jit
    def step(params, state):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, grads

    losses = []
    for i in range(40):
        params, state, loss, grads = step(params, state)
        if i == 0:  # every parameter gets a finite, non-zero gradient
            for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
                assert bool(jnp.all(jnp.isfinite(g))), path
                assert float(jnp.sum(g ** 2)) > 0, path
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert min(losses[-5:]) < 0.5 * losses[0], losses


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("variant", ["setting1_x2", "setting1_x3", "setting1_x4", "setting2_x2", "setting2_x4",
                                     "tiny", "cpu"])
def test_config_variants_validate_and_build(variant):
    from jaxsr import config_lib
    cfg = load_config("dssr", variant)
    config_lib.validate(cfg)
    model = dssr.create_model(cfg)
    assert model.scale == cfg.scale


def test_config_paper_settings():
    from jaxsr import config_lib
    cfg = load_config("dssr", "setting1_x4")
    assert (cfg.data.batch_size, cfg.data.patch_size, cfg.train.steps) == (8, 64, 480_000)
    assert (cfg.train.b1, cfg.train.b2, cfg.train.learning_rate, cfg.train.lr_gamma) == (0.9, 0.99, 2e-4, 0.5)
    assert tuple(cfg.train.lr_milestones) == (80_000, 160_000, 240_000, 320_000, 400_000)
    assert cfg.loss.detail_weight == 1.0 and cfg.loss.iter_weights is None
    model = dssr.create_model(cfg)
    assert (model.features, model.structure_blocks, model.refine_blocks, model.num_iters) == (128, 15, 5, 4)
    assert config_lib.degradation_spec(cfg).sigma_range == (0.2, 4.0)
    assert config_lib.degradation_spec(load_config("dssr", "setting1_x3")).sigma_range == (0.2, 3.0)
    spec2 = config_lib.degradation_spec(load_config("dssr", "setting2_x2"))
    assert (spec2.kernel_size, spec2.kernel_type, spec2.sigma_range, spec2.kernel_noise) == (11, "aniso", (0.6, 5.0), 0.25)
    assert config_lib.degradation_spec(load_config("dssr", "setting2_x4")).kernel_size == 21
