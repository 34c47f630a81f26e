"""KXNet: its operators against NumPy definitions, parameter counts, the scanned stages, training."""
import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from helpers import count, load_config, rand
from jaxsr import config_lib
from jaxsr.models import kxnet, layers
from jaxsr.ops import degrade, unfolding
from jaxsr.ops.imresize import resize_bicubic_torch

K = 5  # tiny kernel size for the fast tests
TINY = dict(kernel_size=K, num_stages=3, aux_x_features=4, aux_k_features=4, prox_blocks=1)


def tiny(scale=2, **kw):
    return kxnet.KXNet(scale=scale, **{**TINY, **kw})


@pytest.fixture(scope="module")
def tiny_vars():
    # the "rbg" PRNG compiles faster on CPU than threefry; the initialisers are the same
    return jax.jit(tiny().init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 6, 7, 3)))


@pytest.fixture(scope="module")
def forward():
    """The tiny model's jitted apply, recording each trace (one compile shared by several tests)."""
    traces = []

    @functools.partial(jax.jit, static_argnames="num_iters")
    def run(variables, lr, num_iters=None):
        traces.append(num_iters)  # Python side effect: runs only while tracing
        return tiny().apply(variables, lr, num_iters=num_iters)

    run.traces = traces
    return run


# ----------------------------------------------------------------------------- operators
def dense_unfold(x, size, scale):
    """D_s U_f(X) of the paper for one image (H, W, C): row (c, i, j) is the k×k patch of the
    reflect-padded X at (s·i, s·j), flattened. Float64, built with loops."""
    pad = size // 2
    xp = np.pad(x.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = x.shape[0] // scale, x.shape[1] // scale
    return np.stack([xp[scale * i:scale * i + size, scale * j:scale * j + size, c].ravel()
                     for c in range(x.shape[2]) for i in range(h) for j in range(w)])


@pytest.mark.parametrize("method", ["fft", "conv"])
@pytest.mark.parametrize("scale,size,h,w", [(2, 5, 4, 5), (3, 7, 3, 4), (4, 9, 3, 3)])
def test_kernel_gradient_equals_the_dense_unfold_formulation(scale, size, h, w, method):
    rng = np.random.default_rng(scale)
    x = rng.random((2, scale * h, scale * w, 3)).astype(np.float32)
    r = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    k = rng.random((2, size, size)).astype(np.float32)
    got = np.asarray(jax.jit(unfolding.kernel_gradient, static_argnums=(2, 3, 4))(x, r, size, scale, method))
    fwd = np.asarray(jax.jit(unfolding.blur_down, static_argnums=(2, 3))(x, k, scale, method))
    for n in range(2):
        u = dense_unfold(x[n], size, scale)  # (C·h·w, k²)
        want = u.T @ r[n].transpose(2, 0, 1).ravel() / (3 * h * w)
        np.testing.assert_allclose(got[n], want.reshape(size, size), rtol=1e-5, atol=1e-6)
        # the same matrix is the degradation operator: (X ⊗ K)↓s = D_s U_f(X) vec(K)
        np.testing.assert_allclose(fwd[n].transpose(2, 0, 1).ravel(), u @ k[n].ravel(), rtol=1e-5, atol=1e-5)


def trilinear_partials(x, k, r, scale):
    """Partial derivatives of F = Σ_{i,j,a,b,c} X_pad[s·i+a, s·j+b, c] · K[a, b] · R[i, j, c] for one
    image (X_pad: X reflect-padded by k//2), float64 loops: blur_down(X, K) = ∂F/∂R and
    kernel_gradient(X, R) = ∂F/∂K / (C·h·w), so each VJP of theirs is two of these partials."""
    (hh, ww, c), (h, w), size = x.shape, r.shape[:2], k.shape[0]
    pad = size // 2
    xp = np.pad(x.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dxp, dk, dr = np.zeros_like(xp), np.zeros((size, size)), np.zeros((h, w, c))
    for i in range(h):
        for j in range(w):
            patch = xp[scale * i:scale * i + size, scale * j:scale * j + size]
            dr[i, j] = np.einsum("ab,abc->c", k, patch)
            dk += np.einsum("abc,c->ab", patch, r[i, j])
            dxp[scale * i:scale * i + size, scale * j:scale * j + size] += k[:, :, None] * r[i, j]
    reflect = lambda u, n: abs(u) if u < n else 2 * (n - 1) - u  # noqa: E731 - padded -> source index
    dx = np.zeros((hh, ww, c))
    for u in range(xp.shape[0]):
        for v in range(xp.shape[1]):
            dx[reflect(u - pad, hh), reflect(v - pad, ww)] += dxp[u, v]
    return dx, dk, dr


@pytest.mark.parametrize("method", ["fft", "conv"])
@pytest.mark.parametrize("scale,size,h,w", [(2, 5, 4, 5), (3, 7, 3, 4), (4, 9, 3, 3)])
def test_data_term_vjps_match_definition(scale, size, h, w, method):
    # "conv" (accelerators) differentiates through its own VJPs: the other two operators of the
    # trilinear form, not autodiff's image-sized windows; "fft" (CPU) through XLA's autodiff
    rng = np.random.default_rng(20 + scale)
    x = rng.random((2, scale * h, scale * w, 3)).astype(np.float32)
    r = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    k = rng.random((2, size, size)).astype(np.float32)  # asymmetric: catches a missing flip
    g = rng.standard_normal((2, size, size)).astype(np.float32)
    _, kg_vjp = jax.vjp(lambda x, r: unfolding.kernel_gradient(x, r, size, scale, method), x, r)
    kg_dx, kg_dr = jax.jit(kg_vjp)(g)
    _, bd_vjp = jax.vjp(lambda x, k: unfolding.blur_down(x, k, scale, method), x, k)
    bd_dx, bd_dk = jax.jit(bd_vjp)(r)
    norm = 3 * h * w
    for n in range(2):
        dx, _, dr = trilinear_partials(x[n], g[n].astype(np.float64), r[n], scale)  # <g, kernel_gradient>
        np.testing.assert_allclose(kg_dx[n], dx / norm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(kg_dr[n], dr / norm, rtol=1e-5, atol=1e-6)
        dx, dk, _ = trilinear_partials(x[n], k[n].astype(np.float64), r[n], scale)  # <r, blur_down>
        np.testing.assert_allclose(bd_dx[n], dx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bd_dk[n], dk, rtol=1e-5, atol=1e-5)


def test_accelerator_data_term_gradients_use_kernel_sized_windows():
    # autodiff of the image-sized-window convolution pads the k×k cotangent by s·(h-1) per side;
    # that one convolution took 190 s of a KXNet x2 TPU compile. The custom VJPs pad by k-1 at most.
    size, scale = 9, 4
    x, r, k = (jax.ShapeDtypeStruct(s, jnp.float32) for s in ((2, 24, 20, 3), (2, 6, 5, 3), (2, size, size)))
    fns = {"kernel_gradient": (lambda x, r: jnp.sum(jnp.sin(unfolding.kernel_gradient(x, r, size, scale))), (x, r)),
           "blur_down": (lambda x, k: jnp.sum(jnp.sin(unfolding.blur_down(x, k, scale))), (x, k))}
    for name, (fn, args) in fns.items():
        text = jax.jit(jax.grad(fn, argnums=(0, 1))).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
        pads = [int(p) for m in re.finditer(r"stablehlo\.convolution.*?pad = \[\[(\d+), (\d+)\], \[(\d+), (\d+)\]\]", text)
                for p in m.groups()]
        assert len(pads) == 12, (name, pads)  # forward and two gradients, one convolution each
        assert max(pads) <= size - 1, (name, pads)


def transposed_blur_reference(e, k, scale):
    """K ⊗ₛᵀ E by its definition: each LR pixel scatters k·E[i, j] around HR pixel (s·i, s·j),
    zero outside the image (the adjoint of the zero-padded strided correlation)."""
    h, w, c = e.shape
    size, pad = k.shape[0], k.shape[0] // 2
    out = np.zeros((scale * h + 2 * pad, scale * w + 2 * pad, c))
    for i in range(h):
        for j in range(w):
            out[scale * i:scale * i + size, scale * j:scale * j + size] += k[:, :, None] * e[i, j]
    return out[pad:pad + scale * h, pad:pad + scale * w]


@pytest.mark.parametrize("method", ["fft", "conv"])
@pytest.mark.parametrize("scale,size,h,w", [(2, 5, 4, 3), (3, 7, 3, 5), (4, 5, 2, 3)])
def test_transposed_blur_matches_definition(scale, size, h, w, method):
    rng = np.random.default_rng(10 + scale)
    e = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    k = rng.random((2, size, size)).astype(np.float32)  # asymmetric: catches a missing flip
    got = np.asarray(jax.jit(unfolding.transposed_blur, static_argnums=(2, 3))(e, k, scale, method))
    assert got.shape == (2, scale * h, scale * w, 3)
    for n in range(2):
        np.testing.assert_allclose(got[n], transposed_blur_reference(e[n].astype(np.float64), k[n], scale),
                                   rtol=1e-5, atol=1e-5)


def test_space_to_depth_inverts_pixel_shuffle_in_pytorch_order():
    r = 3
    x = np.random.default_rng(0).standard_normal((2, 6, 9, 2)).astype(np.float32)
    d = np.asarray(layers.space_to_depth(jnp.asarray(x), r))
    assert d.shape == (2, 2, 3, 2 * r * r)
    for c in range(2):
        for i in range(r):
            for j in range(r):
                np.testing.assert_array_equal(d[..., c * r * r + i * r + j], x[:, i::r, j::r, c])
    np.testing.assert_array_equal(np.asarray(layers.pixel_shuffle(jnp.asarray(d), r)), x)


def numpy_gaussian(size, sx, sy, theta):
    """exp(-½ pᵀ Σ⁻¹ p), Σ = R(θ) diag(σx², σy²) R(θ)ᵀ, p = (column, row) offset; normalised."""
    ax = np.arange(size) - size // 2
    p = np.stack(np.meshgrid(ax, ax, indexing="xy"), -1).astype(np.float64)  # (..., (x, y))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([sx ** 2, sy ** 2]) @ rot.T)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", p, inv, p))
    return k / k.sum()


def test_initial_kernel_and_auxiliary_maps():
    np.testing.assert_allclose(kxnet.initial_kernel(21), numpy_gaussian(21, 1.0, 1.0, 0.0), atol=1e-7)
    iso = kxnet.auxiliary_kernel_map(21, "iso")
    assert iso.shape == (24, 21, 21)
    for i, s in enumerate(np.linspace(0.2, 4.0, 24)):
        np.testing.assert_allclose(iso[i], numpy_gaussian(21, s, s, 0.0), atol=1e-6)
    aniso = kxnet.auxiliary_kernel_map(15, "aniso")
    params = [(a, b, np.deg2rad(t)) for a in (1.0, 2.5, 4.0) for b in (3.5, 5.0) for t in (0, 45, 90, 135)]
    for i, (a, b, t) in enumerate(params):
        np.testing.assert_allclose(aniso[i], numpy_gaussian(15, a, b, t), atol=1e-6)
    with pytest.raises(ValueError, match="aux_kernel_init"):
        kxnet.auxiliary_kernel_map(15, "disk")


# ----------------------------------------------------------------------------- structure
def test_param_count_matches_official_x4():
    # 19 stages x (X prox: 9 convs at 131 ch + K prox: 9 convs at 27 ch) + AV_X_ker + kernel map
    # + gamma + eta; the state dict adds the frozen 24x21x21 `kernel_map0` (27,581,798 values)
    model = kxnet.KXNet(scale=4, kernel_size=21)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    assert count(shapes) == 27_571_214
    assert count(shapes) + 24 * 21 * 21 == 27_581_798
    assert shapes["stages"]["x_prox"]["block0_conv1"]["kernel"].shape == (19, 3, 3, 131, 131)
    assert shapes["stages"]["gamma"].shape == (19, 1)
    # Table 3's 6.50 M is the x2 model (11x11 kernels, 59-channel X prox)
    x2 = jax.eval_shape(kxnet.KXNet(scale=2, kernel_size=11).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert count(x2["params"]) == 6_497_702


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("batch,h,w", [(1, 7, 10), (3, 5, 5)])
def test_output_shapes(scale, batch, h, w):
    model = tiny(scale)
    out, v = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32))
    assert out["sr"].shape == (3, batch, scale * h, scale * w, 3)
    assert out["kernel"].shape == (3, batch, K, K)
    assert v["params"]["stages"]["x_prox"]["out"]["kernel"].shape == (3, 3, 3, 6 * scale ** 2 + 3 + 4,
                                                                       6 * scale ** 2 + 3 + 4)


def test_graph_holds_one_stage():
    # the jaxpr's size does not grow with T: the stages are one scan body, not T copies
    lr = jax.ShapeDtypeStruct((1, 6, 7, 3), jnp.float32)

    def size(t):
        model = tiny(num_stages=t)
        v = jax.eval_shape(model.init, jax.random.key(0), lr)
        return len(jax.make_jaxpr(model.apply)(v, lr).jaxpr.eqns)

    assert size(2) == size(7)


def test_init_variables_and_initial_values(tiny_vars):
    assert set(tiny_vars) == {"params"}  # no buffers, nothing frozen among the params
    p = tiny_vars["params"]
    assert set(p) == {"stages", "aux_x_kernel", "aux_kernel_map"}
    np.testing.assert_array_equal(p["stages"]["gamma"], np.ones((3, 1)))
    np.testing.assert_array_equal(p["stages"]["eta"], np.ones((3, 1)))
    lap = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    np.testing.assert_array_equal(p["aux_x_kernel"], np.broadcast_to(lap[:, :, None, None], (3, 3, 3, 4)))
    np.testing.assert_allclose(p["aux_kernel_map"], kxnet.auxiliary_kernel_map(K, "aniso")[:4], atol=1e-7)
    # separate parameters per stage
    w = np.asarray(p["stages"]["x_prox"]["out"]["kernel"])
    assert not np.allclose(w[0], w[1])


def test_first_stage_starts_from_bicubic_and_gaussian(tiny_vars, forward):
    """Stage 1 run by hand from X⁰ = torch-bicubic(Y), K⁰ = Gaussian(σ=1) reproduces the model."""
    lr = rand((2, 6, 7, 3), 1)
    out = forward(tiny_vars, lr)
    p = tiny_vars["params"]
    stage0 = jax.tree.map(lambda a: a[0], p["stages"])
    x0 = resize_bicubic_torch(lr, scale=2, align_corners=False)
    k0 = jnp.broadcast_to(jnp.asarray(numpy_gaussian(K, 1, 1, 0), jnp.float32), (2, K, K))
    aux_x = jax.lax.conv_general_dilated(lr, p["aux_x_kernel"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    aux_k = jnp.broadcast_to(jnp.transpose(p["aux_kernel_map"], (1, 2, 0)), (2, K, K, 4))
    stage = kxnet.KXStage(2, K, prox_blocks=1)
    (x1, k1, _, _), _ = jax.jit(stage.apply)({"params": stage0}, (x0, k0, aux_x, aux_k), lr)
    np.testing.assert_allclose(out["sr"][0], x1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["kernel"][0], k1, rtol=1e-5, atol=1e-7)


def test_fewer_iterations_run_the_first_stages(tiny_vars, forward):
    model, lr = tiny(), rand((2, 6, 7, 3), 3)
    out3, out2 = forward(tiny_vars, lr), forward(tiny_vars, lr, num_iters=2)
    assert out3["sr"].shape[0] == 3 and out2["sr"].shape[0] == 2
    for key in ("sr", "kernel"):
        np.testing.assert_allclose(out3[key][:2], out2[key], rtol=1e-6, atol=1e-7)
    # `truncate_stages` gives the variables of a model built with fewer stages
    short = kxnet.truncate_stages(tiny_vars, 2)
    want = jax.eval_shape(model.clone(num_stages=2).init, jax.random.key(0), lr)
    assert jax.tree.map(jnp.shape, short) == jax.tree.map(jnp.shape, want)
    k = np.asarray(out3["kernel"])
    assert (k >= 0).all()
    np.testing.assert_allclose(k.sum(axis=(-1, -2)), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="num_iters"):
        model.apply(tiny_vars, lr, num_iters=4)
    with pytest.raises(ValueError, match="num_iters"):
        model.apply(tiny_vars, lr, num_iters=0)


def test_bad_arguments_raise_value_error(tiny_vars):
    model = tiny()
    with pytest.raises(ValueError, match="lr"):
        model.apply(tiny_vars, rand((1, 6, 7, 1)))
    with pytest.raises(ValueError, match="too small"):
        model.clone(kernel_size=21).init(jax.random.key(0), rand((1, 4, 7, 3)))
    with pytest.raises(ValueError, match="scale"):
        model.clone(scale=5).init(jax.random.key(0), rand((1, 6, 7, 3)))
    with pytest.raises(ValueError, match="aux_kernel_init"):
        model.clone(aux_kernel_init="disk").init(jax.random.key(0), rand((1, 6, 7, 3)))
    with pytest.raises(ValueError, match="kernel_size"):
        model.clone(kernel_size=4).init(jax.random.key(0), rand((1, 6, 7, 3)))
    with pytest.raises(ValueError, match="method"):
        unfolding.transposed_blur(rand((1, 3, 3, 3)), rand((1, 3, 3)), 2, "dft")


def test_jit_traces_once_for_a_fixed_shape(tiny_vars, forward):
    for seed in range(3):
        forward(tiny_vars, rand((2, 6, 7, 3), 10 + seed))["sr"].block_until_ready()
    assert forward.traces.count(None) == 1


# ----------------------------------------------------------------------------- training API
def make_cfg(**loss):
    return ml_collections.ConfigDict({"scale": 2, "model": {"name": "kxnet", **TINY}, "loss": loss})


def test_compute_loss_matches_numpy():
    rng = np.random.default_rng(0)
    out = {"sr": rng.random((3, 2, 8, 6, 3), np.float32), "kernel": rng.random((3, 2, K, K), np.float32)}
    batch = {"hr": rng.random((2, 8, 6, 3), np.float32), "kernel": rng.random((2, K, K), np.float32)}
    l1 = lambda a, b: np.mean(np.abs(a.astype(np.float64) - b))
    sr = [l1(out["sr"][t], batch["hr"]) for t in range(3)]
    ker = [l1(out["kernel"][t], batch["kernel"]) for t in range(3)]
    jout = {k: jnp.asarray(v) for k, v in out.items()}
    loss, metrics = kxnet.compute_loss(jout, batch, make_cfg())
    want = 0.1 * (sr[0] + sr[1] + ker[0] + ker[1]) + sr[2] + ker[2]  # 0.1 middle stages, 1 last
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["l1_kernel_iter1"], ker[1], rtol=1e-5)
    np.testing.assert_allclose(metrics["l1_sr_last"], sr[2], rtol=1e-5)
    loss, _ = kxnet.compute_loss(jout, batch, make_cfg(iter_weights=(0.0, 0.5, 1.0), kernel_weight=2.0))
    np.testing.assert_allclose(loss, 0.5 * sr[1] + sr[2] + 2 * (0.5 * ker[1] + ker[2]), rtol=1e-5)
    with pytest.raises(ValueError, match="iter_weights"):
        kxnet.compute_loss(jout, batch, make_cfg(iter_weights=(1.0, 1.0)))


def test_create_model_validates_config():
    cfg = make_cfg()
    model = kxnet.create_model(cfg)
    assert isinstance(model, kxnet.KXNet) and model.scale == 2 and model.num_stages == 3
    cfg.model.bogus_width = 3
    with pytest.raises(ValueError, match="bogus_width"):
        kxnet.create_model(cfg)
    del cfg.model["bogus_width"]
    cfg.model.name = "danv1"
    with pytest.raises(ValueError, match="kxnet"):
        kxnet.create_model(cfg)


def check_gradients(grads):
    """Finite everywhere; non-zero for every stage of every layer, except the unused `eta`."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        name, leaf = jax.tree_util.keystr(path), np.asarray(leaf)
        assert np.isfinite(leaf).all(), name
        if "eta" in name:  # the official forward never reads eta
            assert (leaf == 0).all(), name
        elif "stages" in name:
            assert (np.abs(leaf.reshape(leaf.shape[0], -1)).sum(axis=1) > 0).all(), name
        else:
            assert np.abs(leaf).sum() > 0, name


def test_tiny_model_fits_a_fixed_batch_with_finite_gradients(tiny_vars):
    cfg = make_cfg()
    cfg.model.remat = True  # the rematerialised stage must train too
    model = kxnet.create_model(cfg)
    # smooth HR content, blurred and s-fold decimated: a learnable fixed batch
    yy, xx = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 1, 14), indexing="ij")
    hr = np.stack([0.5 + 0.3 * np.sin(4 * xx + c) * np.cos(3 * yy - c) for c in range(3)], -1)[None].repeat(2, 0)
    hr[1] = hr[1, ::-1]
    kernel = degrade.gaussian_kernels(K, jnp.array([0.7, 1.3]))
    hr = jnp.asarray(hr, jnp.float32)
    batch = {"hr": hr, "kernel": kernel, "lr": unfolding.blur_down(hr, kernel, 2)}
    opt = optax.adam(2e-3, b1=0.9, b2=0.99)
    params = tiny_vars["params"]
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        def loss_fn(p):
            return kxnet.compute_loss(model.apply({"params": p}, batch["lr"]), batch, cfg)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, grads

    losses = []
    for i in range(40):
        params, state, loss, grads = step(params, state, batch)
        if i == 0:
            check_gradients(grads)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert min(losses[-5:]) < 0.6 * losses[0], losses


@pytest.mark.parametrize("variant", [f"setting{i}_x{s}" for i in (1, 2) for s in (2, 3, 4)] + ["tiny", "cpu"])
def test_config_variants_validate(variant):
    cfg = load_config("kxnet", variant)
    config_lib.validate(cfg)
    spec = config_lib.degradation_spec(cfg)
    assert spec.downsampler == "sfold" and spec.kernel_size == cfg.model.kernel_size
    model = kxnet.create_model(cfg)  # built from this config's settings
    fields = ("kernel_size", "num_stages", "prox_blocks", "aux_x_features", "aux_k_features", "aux_kernel_init")
    assert (model.scale, *(getattr(model, f) for f in fields)) == (cfg.scale, *(cfg.model[f] for f in fields))
    if variant.startswith("setting"):
        assert cfg.model.num_stages == 19 and cfg.model.prox_blocks == 4
        assert (cfg.data.batch_size, cfg.data.patch_size, cfg.train.learning_rate) == (12, 64, 2e-4)
        assert (cfg.train.b1, cfg.train.b2, cfg.train.lr_gamma) == (0.9, 0.99, 0.5)
        assert tuple(cfg.train.lr_milestones) == (200_000, 400_000, 600_000, 800_000)
        noisy = variant.startswith("setting2")
        assert spec.noise_range == ((0.0, 25.0) if noisy else (0.0, 0.0))
        assert cfg.eval.protocol == ("kxnet" if noisy else "gaussian8")
        assert cfg.model.aux_kernel_init == ("aniso" if noisy else "iso")
