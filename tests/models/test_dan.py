"""DANv1 / DANv2 modules: parameter counts, shapes, the scanned loop, gradients, training."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from helpers import rand, torch_like_params
from jaxsr.models import dan, layers

K = 11  # tiny kernel size for the fast tests
TINY = {
    "danv1": dict(restorer_features=8, restorer_blocks=2, estimator_features=8, estimator_blocks=1, reduction=4),
    "danv2": dict(restorer_features=8, restorer_blocks=1, restorer_groups=2, estimator_features=8,
                  estimator_blocks=1),
}


def random_pca(k=K, n=10, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((k * k, n)))
    return q.astype(np.float32)


def tiny(name, scale=2, **kw):
    return dan.MODELS[name](scale=scale, pca_matrix=random_pca(), kernel_size=K, **{**TINY[name], **kw})


@pytest.fixture(scope="module")
def tiny_vars():
    return {name: torch_like_params(tiny(name)) for name in TINY}


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name,expected", [("danv1", 4_329_511), ("danv2", 4_707_708)])
def test_param_count_matches_official_x4(name, expected):
    model = dan.MODELS[name](scale=4, pca_matrix=random_pca(21))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"])) == expected


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("batch,h,w", [(1, 7, 10), (3, 5, 5)])
def test_output_shapes(name, scale, batch, h, w):
    model = tiny(name, scale, num_iters=3)
    lr = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)
    out, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), lr)
    assert out["sr"].shape == (3, batch, scale * h, scale * w, 3)
    assert out["kernel"].shape == (3, batch, K, K)
    assert out["code"].shape == (3, batch, 10)


def test_pixel_shuffle_matches_pytorch_definition():
    r, c = 3, 2
    x = np.random.default_rng(0).standard_normal((2, 4, 5, c * r * r)).astype(np.float32)
    want = np.zeros((2, 4 * r, 5 * r, c), np.float32)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                want[:, i::r, j::r, ch] = x[..., ch * r * r + i * r + j]
    np.testing.assert_array_equal(np.asarray(layers.pixel_shuffle(jnp.asarray(x), r)), want)


def test_strided_conv_matches_direct_correlation():
    # the Estimator's HR head: 9x9, stride 3, zero padding 4, as torch.nn.Conv2d computes it
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 10, 8, 2)).astype(np.float32)

    class Head(layers.nn.Module):
        @layers.nn.compact
        def __call__(self, x):
            return layers.conv2d(x, 3, 9, stride=3, padding=4, name="c")

    variables = Head().init(jax.random.key(0), x)
    got = np.asarray(Head().apply(variables, x))
    w = np.asarray(variables["params"]["c"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["c"]["bias"], np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (4, 4), (4, 4), (0, 0)))
    oh, ow = (10 + 8 - 9) // 3 + 1, (8 + 8 - 9) // 3 + 1
    want = np.zeros((1, oh, ow, 3))
    for i in range(oh):
        for j in range(ow):
            patch = xp[0, 3 * i:3 * i + 9, 3 * j:3 * j + 9, :]
            want[0, i, j] = np.einsum("hwi,hwio->o", patch, w) + b
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_init_uses_pytorch_bounds():
    class Conv(layers.nn.Module):
        @layers.nn.compact
        def __call__(self, x):
            return layers.conv2d(x, 64, 3, name="c")

    p = Conv().init(jax.random.key(0), jnp.zeros((1, 4, 4, 16)))["params"]["c"]
    bound = 1 / np.sqrt(16 * 9)
    for leaf in (p["kernel"], p["bias"]):
        leaf = np.asarray(leaf)
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound
    assert p["kernel"].shape == (3, 3, 16, 64)


def test_dpcg_official_skip_doubles_the_block_output():
    f1, f2 = rand((1, 4, 4, 4), 1), rand((1, 4, 4, 4), 2)
    group = layers.DPCG(2, 3, 3, "input")
    shapes = jax.eval_shape(group.init, jax.random.key(0), f1, f2)
    v = jax.tree.map(lambda s: rand(s.shape, 3) - 0.5, shapes)
    a1, a2 = group.apply(v, f1, f2)                     # f + y
    b1, b2 = group.clone(skip="official").apply(v, f1, f2)  # 2 y
    np.testing.assert_allclose(b1, 2 * (a1 - f1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b2, 2 * (a2 - f2), rtol=1e-5, atol=1e-6)


def test_module_is_hashable_and_compares_by_matrix_value():
    a, b = tiny("danv1"), tiny("danv1")
    assert a == b and hash(a) == hash(b)
    c = tiny("danv1").clone(pca_matrix=random_pca(seed=1))
    assert a != c


def test_bad_arguments_raise_value_error(tiny_vars):
    model = tiny("danv1")
    with pytest.raises(ValueError, match="lr"):
        model.apply(tiny_vars["danv1"], rand((1, 6, 7, 1)))
    with pytest.raises(ValueError, match="num_iters"):
        model.apply(tiny_vars["danv1"], rand((1, 6, 7, 3)), num_iters=0)
    with pytest.raises(ValueError, match="pca_matrix"):
        model.clone(pca_matrix=random_pca(k=5)).init(jax.random.key(0), rand((1, 6, 7, 3)))
    with pytest.raises(ValueError, match="scale"):
        model.clone(scale=5).init(jax.random.key(0), rand((1, 6, 7, 3)))


# ----------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("name", sorted(TINY))
def test_first_iteration_uses_the_dirac_kernel_and_T_can_change(name, tiny_vars):
    model, v = tiny(name), tiny_vars[name]
    lr = rand((2, 6, 7, 3), 3)
    run = jax.jit(model.apply, static_argnames="num_iters")
    out2, out3 = run(v, lr, num_iters=2), run(v, lr, num_iters=3)
    assert out2["sr"].shape[0] == 2 and out3["sr"].shape[0] == 3
    for key in ("sr", "kernel", "code"):  # T only appends iterations
        np.testing.assert_allclose(out3[key][:2], out2[key], rtol=1e-5, atol=1e-6)
    # iteration 0's Restorer input is the PCA code of a centred Dirac
    dirac = np.zeros((K, K), np.float32)
    dirac[K // 2, K // 2] = 1
    code0 = jnp.asarray(np.tile(dirac.reshape(1, -1) @ random_pca(), (2, 1)))
    sr0 = model.apply(v, lr, code0, method=lambda m, x, c: m.restorer(x, c))
    np.testing.assert_allclose(out2["sr"][0], sr0, rtol=1e-5, atol=1e-6)
    if name == "danv2":
        k = np.asarray(out2["kernel"])
        np.testing.assert_allclose(k.sum(axis=(-1, -2)), 1.0, rtol=1e-5)
        assert (k >= 0).all()
        np.testing.assert_allclose(out2["code"], k.reshape(2, 2, -1) @ random_pca(), rtol=1e-4, atol=1e-6)
    else:
        np.testing.assert_allclose(out2["kernel"], (np.asarray(out2["code"]) @ random_pca().T).reshape(2, 2, K, K),
                                   rtol=1e-4, atol=1e-6)


def test_jit_traces_once_for_a_fixed_shape(tiny_vars):
    model, traces = tiny("danv1"), []

    @jax.jit
    def forward(variables, lr):
        traces.append(1)  # Python side effect: runs only while tracing
        return model.apply(variables, lr)["sr"]

    for seed in range(3):
        forward(tiny_vars["danv1"], rand((2, 6, 7, 3), seed)).block_until_ready()
    assert len(traces) == 1


def sq_norm(tree):
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    assert all(np.isfinite(x).all() for x in leaves)
    return float(sum(np.sum(x ** 2) for x in leaves))


def test_gradients_respect_the_official_detaches(tiny_vars):
    model, lr = tiny("danv1"), rand((2, 6, 7, 3), 4)

    def last_terms(p):
        out = model.apply({"params": p}, lr, num_iters=2)
        return jnp.stack([jnp.mean(out["sr"][-1] ** 2), jnp.mean(out["kernel"][-1] ** 2)])

    jac = jax.jit(jax.jacrev(last_terms))(tiny_vars["danv1"]["params"])
    g_sr, g_k = jax.tree.map(lambda g: g[0], jac), jax.tree.map(lambda g: g[1], jac)
    # each module learns from its own output only: the official code detaches the code fed
    # to the Restorer and the SR image fed to the Estimator (iteration 2 needs both)
    assert sq_norm(g_sr["restorer"]) > 0 and sq_norm(g_k["estimator"]) > 0
    assert sq_norm(g_sr["estimator"]) == 0 and sq_norm(g_k["restorer"]) == 0


def test_remat_gives_identical_outputs_and_gradients(tiny_vars):
    params, lr = tiny_vars["danv2"]["params"], rand((1, 5, 6, 3), 5)

    def run(model):
        def loss(p):
            out = model.apply({"params": p}, lr, num_iters=2)
            return jnp.mean(out["sr"][-1] ** 2) + jnp.mean(out["kernel"][-1] ** 2), out
        return jax.jit(jax.grad(loss, has_aux=True))(params)

    plain, remat = run(tiny("danv2")), run(tiny("danv2", remat=True))
    assert sq_norm(plain[0]["restorer"]) > 0 and sq_norm(plain[0]["estimator"]) > 0
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_train_from_changes_no_output_and_no_gradient_the_loss_weights(tiny_vars):
    """`train_from=t` skips only the backward pass of iterations before t: the outputs and the
    gradient of a loss on iterations t.. are unchanged; the default (0) differentiates every
    iteration, so a loss on an earlier one still gets that iteration's gradient."""
    model, params, lr = tiny("danv1"), tiny_vars["danv1"]["params"], rand((1, 6, 7, 3), 6)

    def grads(train_from, weights):
        def loss(p):
            out = model.apply({"params": p}, lr, num_iters=3, train_from=train_from)
            terms = [jnp.mean(out["sr"][t] ** 2) + jnp.mean(out["code"][t] ** 2) for t in range(3)]
            return sum(w * term for w, term in zip(weights, terms)), out
        return jax.jit(jax.grad(loss, has_aux=True))(params)

    last, skipped = grads(0, (0, 0, 1)), grads(2, (0, 0, 1))
    for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(skipped)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    every, _ = grads(0, (1, 1, 1))
    assert sq_norm(jax.tree.map(jnp.subtract, every, last[0])) > 1e-6 * sq_norm(every)


# ----------------------------------------------------------------------------- blocks as one scanned body
DEEPER = {"danv1": dict(restorer_blocks=3, estimator_blocks=2),
          "danv2": dict(restorer_blocks=2, restorer_groups=3, estimator_blocks=2)}


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("remat,train_from", [(False, 0), (True, 1)])
def test_scanned_blocks_match_the_unrolled_blocks(name, remat, train_from):
    """`scan_blocks=True` (GPU/TPU programs) applies the same parameter tree in a `lax.scan`:
    outputs and every parameter's gradient equal the unrolled blocks' (CPU programs)."""
    unrolled = tiny(name, remat=remat, **DEEPER[name])
    scanned = unrolled.clone(scan_blocks=True)
    params = torch_like_params(unrolled, seed=3)["params"]
    assert jax.tree.structure(torch_like_params(scanned)["params"]) == jax.tree.structure(params)
    lr = rand((2, 5, 6, 3), 7)

    def run(model):
        def loss(p):
            out = model.apply({"params": p}, lr, num_iters=3, train_from=train_from)
            return sum(jnp.mean(out["sr"][t] ** 2) + jnp.mean(out["kernel"][t] ** 2) for t in (1, 2)), out
        return jax.jit(jax.grad(loss, has_aux=True))(params)

    (g_unrolled, out_unrolled), (g_scanned, out_scanned) = run(unrolled), run(scanned)
    assert sq_norm(g_unrolled["restorer"]) > 0 and sq_norm(g_unrolled["estimator"]) > 0
    for key in out_unrolled:
        np.testing.assert_allclose(out_scanned[key], out_unrolled[key], rtol=1e-5, atol=1e-6)
    jax.tree_util.tree_map_with_path(lambda path, a, b: np.testing.assert_allclose(
        b, a, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path)), g_unrolled, g_scanned)


@pytest.mark.parametrize("name", sorted(TINY))
def test_create_scans_blocks_for_accelerators_only(name, tmp_path):
    from jaxsr import models
    cfg = make_cfg(name, tmp_path)
    assert not models.create(cfg, "cpu").scan_blocks
    assert models.create(cfg, "gpu").scan_blocks and models.create(cfg, "tpu").scan_blocks
    cfg.model.scan_blocks = False  # an explicit choice is kept
    assert not models.create(cfg, "tpu").scan_blocks


@pytest.mark.parametrize("name,blocks", [("dan", dict(restorer_blocks=12, estimator_blocks=4)),
                                         ("danv2", dict(restorer_groups=3, restorer_blocks=4, estimator_blocks=4))])
def test_tpu_train_step_holds_one_body_per_block_stack(name, blocks):
    """The TPU training step (lowered, not compiled) has its blocks as scanned bodies: far fewer
    convolutions for XLA to compile than with the blocks written out."""
    from helpers import load_config
    from jaxsr import aot
    if not aot.libtpu_installed():
        pytest.skip("libtpu is not installed: TPU programs cannot be lowered here")
    devices = aot.target_devices(aot.parse_target("v5e-1"))

    def convolutions(scan_blocks):
        cfg = load_config(name, "cpu")
        cfg.model.update(dict(blocks, scan_blocks=scan_blocks))
        return aot.training_program(cfg, devices).lower().as_text().count("stablehlo.convolution")

    scanned, unrolled = convolutions(-1), convolutions(False)  # -1: the platform's choice
    assert 3 * scanned < unrolled, (scanned, unrolled)


# ----------------------------------------------------------------------------- training API
def make_cfg(name, tmp_path, **loss):
    path = tmp_path / "pca.npz"
    np.savez(path, matrix=random_pca())
    return ml_collections.ConfigDict({
        "scale": 2,
        "model": {"name": name, "pca_path": str(path), "kernel_size": K, **TINY[name]},
        "loss": {"iter_weights": None, **loss},
    })


def gaussian_kernels(sigmas):
    ax = np.arange(K) - K // 2
    k = np.exp(-(ax[None, :, None] ** 2 + ax[None, None, :] ** 2) / (2 * np.asarray(sigmas)[:, None, None] ** 2))
    return (k / k.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(TINY))
def test_compute_loss_matches_numpy(name, tmp_path):
    cfg = make_cfg(name, tmp_path, iter_weights=(0.5, 1.0), kernel_weight=2.0)
    rng = np.random.default_rng(0)
    out = {"sr": rng.random((2, 3, 8, 6, 3), np.float32), "kernel": rng.random((2, 3, K, K), np.float32),
           "code": rng.standard_normal((2, 3, 10)).astype(np.float32)}
    batch = {"hr": rng.random((3, 8, 6, 3), np.float32), "lr": rng.random((3, 4, 3, 3), np.float32),
             "kernel": gaussian_kernels([1.0, 1.5, 2.0])}
    loss, metrics = dan.compute_loss({k: jnp.asarray(x) for k, x in out.items()}, batch, cfg)
    l1 = lambda a, b: np.mean(np.abs(a.astype(np.float64) - b))
    sr_terms = [l1(out["sr"][t], batch["hr"]) for t in range(2)]
    if name == "danv1":
        target = batch["kernel"].reshape(3, -1).astype(np.float64) @ random_pca()
        k_terms, k_name = [l1(out["code"][t], target) for t in range(2)], "l1_code"
    else:
        k_terms, k_name = [l1(out["kernel"][t], batch["kernel"]) for t in range(2)], "l1_kernel"
    want_sr, want_k = 0.5 * sr_terms[0] + sr_terms[1], 0.5 * k_terms[0] + k_terms[1]
    np.testing.assert_allclose(metrics["l1_sr"], want_sr, rtol=1e-5)
    np.testing.assert_allclose(metrics[k_name], want_k, rtol=1e-5)
    np.testing.assert_allclose(loss, want_sr + 2.0 * want_k, rtol=1e-5)
    np.testing.assert_allclose(metrics[f"{k_name}_iter0"], k_terms[0], rtol=1e-5)
    # default weights: the last iteration only
    cfg.loss.iter_weights = None
    loss, _ = dan.compute_loss({k: jnp.asarray(x) for k, x in out.items()}, batch, cfg)
    np.testing.assert_allclose(loss, sr_terms[1] + 2.0 * k_terms[1], rtol=1e-5)
    cfg.loss.iter_weights = (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="iter_weights"):
        dan.compute_loss({k: jnp.asarray(x) for k, x in out.items()}, batch, cfg)


def test_create_model_validates_config(tmp_path):
    cfg = make_cfg("danv1", tmp_path)
    model = dan.create_model(cfg)
    # every config field reaches the module, and scale comes from cfg.scale
    assert {key: getattr(model, key) for key in TINY["danv1"]} == TINY["danv1"]
    assert (model.scale, model.kernel_size) == (2, K)
    np.testing.assert_array_equal(model.pca_matrix.array, random_pca())
    # the name picks the model: danv2's fields would not exist on DANv1
    assert type(dan.create_model(make_cfg("danv2", tmp_path))).__name__ == "DANv2"
    cfg.model.name = "danv3"
    with pytest.raises(ValueError, match="danv3"):
        dan.create_model(cfg)
    cfg.model.name = "danv2"
    cfg.model.bogus_width = 3
    with pytest.raises(ValueError, match="bogus_width"):
        dan.create_model(cfg)
    del cfg.model["bogus_width"]
    cfg.model.pca_path = ""
    with pytest.raises(ValueError, match="pca"):
        dan.create_model(cfg)


@pytest.mark.parametrize("name", ["danv1", "danv2"])
def test_tiny_model_fits_a_fixed_batch(name, tmp_path):
    cfg = make_cfg(name, tmp_path)
    model = dan.create_model(cfg)
    # smooth HR content, blurred and 2x decimated: a learnable fixed batch
    yy, xx = np.meshgrid(np.linspace(0, 1, 12), np.linspace(0, 1, 12), indexing="ij")
    hr = np.stack([0.5 + 0.3 * np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)], -1)[None].repeat(2, 0)
    hr[1] = hr[1, ::-1]
    batch = {"hr": jnp.asarray(hr, jnp.float32), "lr": jnp.asarray(hr[:, ::2, ::2], jnp.float32),
             "kernel": jnp.asarray(gaussian_kernels([0.8, 1.6]))}
    params = torch_like_params(model)["params"]
    opt = optax.adam(2e-3, b1=0.9, b2=0.99)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        def loss_fn(p):
            return dan.compute_loss(model.apply({"params": p}, batch["lr"], num_iters=2), batch, cfg)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(40):
        params, state, loss = step(params, state, batch)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert min(losses[-5:]) < 0.5 * losses[0], losses
