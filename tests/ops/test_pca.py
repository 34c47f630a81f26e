import os
import pathlib

import jax
import numpy as np
import pytest

import jaxsr.ops.degrade as D
import jaxsr.ops.pca as pca


def test_fit_matches_numpy_svd_and_reconstructs():
    spec = D.setting1(4)
    k = D.sample_kernels(jax.random.key(0), 3000, spec)
    m = np.asarray(pca.fit(k, 10))
    assert m.shape == (441, 10)
    np.testing.assert_allclose(m.T @ m, np.eye(10), atol=1e-4)
    # Same subspace as NumPy's SVD of the same data (signs may differ per component).
    _, _, vt = np.linalg.svd(np.asarray(k, np.float64).reshape(3000, -1), full_matrices=False)
    np.testing.assert_allclose(np.abs(m.T @ vt[:10].T), np.eye(10), atol=2e-3)
    held_out = D.sample_kernels(jax.random.key(1), 200, spec)
    rec = pca.decode(pca.encode(held_out, m), m)
    rel = np.linalg.norm(rec - held_out) / np.linalg.norm(held_out)
    assert rel < 0.02, rel


def test_fit_is_deterministic_in_sign():
    k = D.sample_kernels(jax.random.key(0), 500, D.setting2(2))
    np.testing.assert_allclose(pca.fit(k, 6), pca.fit(k[::-1], 6), atol=1e-4)


def test_save_load_roundtrip(tmp_path):
    m = np.random.default_rng(0).random((121, 10)).astype(np.float32)
    pca.save(str(tmp_path / "m.npz"), m, scale=2)
    np.testing.assert_array_equal(pca.load(str(tmp_path / "m.npz")), m)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        pca.load(str(tmp_path / "nope.npz"))


def test_shipped_matrices_present_and_valid():
    for spec in pca.standard_specs():
        m = pca.default_matrix(spec)
        assert m.shape == (spec.kernel_size ** 2, 10)
        np.testing.assert_allclose(m.T @ m, np.eye(10), atol=1e-3)


def test_shape_errors():
    m = np.zeros((441, 10), np.float32)
    with pytest.raises(ValueError, match="PCA matrix"):
        pca.encode(np.zeros((2, 11, 11), np.float32), m)
    with pytest.raises(ValueError, match="codes"):
        pca.decode(np.zeros((2, 9), np.float32), m)
    with pytest.raises(ValueError, match="dim"):
        pca.fit(np.ones((5, 3, 3), np.float32), 10)


def _unshipped_cfg():
    """dan:tiny at a kernel size no shipped matrix covers."""
    from jaxsr import config_lib
    cfg = config_lib.load(pathlib.Path(__file__).resolve().parents[2] / "configs" / "dan.py:tiny")
    cfg.degradation.kernel_size = 9
    cfg.model.kernel_size = 9
    return cfg


def _files(*roots):
    return sorted(str(p) for root in roots for p in pathlib.Path(root).rglob("*"))


def test_prepare_writes_nothing(tmp_path, monkeypatch):
    from jaxsr import config_lib
    cache, home = tmp_path / "cache", tmp_path / "home"
    cache.mkdir(), home.mkdir()
    monkeypatch.setenv("JAXSR_CACHE_DIR", str(cache))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    cfg = _unshipped_cfg()
    prepared = config_lib.prepare(cfg)
    assert pathlib.Path(prepared.model.pca_path).parent == cache  # where ensure_pca would write it
    assert not cfg.model.pca_path  # a new config, the given one untouched
    assert _files(cache, home) == []


def test_ensure_pca_writes_atomically_into_the_cache_dir(tmp_path, monkeypatch):
    from jaxsr import config_lib
    monkeypatch.setenv("JAXSR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst))[1])
    monkeypatch.setattr(pca, "fit_for_spec", lambda spec, dim=10, **kw: np.eye(spec.kernel_size ** 2, dim))
    cfg = config_lib.prepare(_unshipped_cfg())
    path = config_lib.ensure_pca(cfg)
    assert path == cfg.model.pca_path and pathlib.Path(path).parent == tmp_path / "cache"
    [(src, dst)] = replaced  # written under a temporary name in the same folder, then renamed
    assert os.fspath(dst) == path and pathlib.Path(src).parent == tmp_path / "cache" and src != dst
    assert _files(tmp_path) == [str(tmp_path / "cache"), path]  # no temporary file left behind
    np.testing.assert_array_equal(pca.load(path), np.eye(81, 10))
    assert config_lib.ensure_pca(cfg) == path and len(replaced) == 1  # cached: not fitted again


def test_ensure_pca_leaves_shipped_and_named_matrices_alone(tmp_path, monkeypatch):
    from jaxsr import config_lib
    monkeypatch.setenv("JAXSR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(pca, "fit_for_spec", lambda *a, **k: pytest.fail("fitted a matrix"))
    cfg = config_lib.prepare(config_lib.load(pathlib.Path(__file__).resolve().parents[2] / "configs" / "dan.py:tiny"))
    assert config_lib.ensure_pca(cfg) == cfg.model.pca_path  # the shipped one
    cfg.model.pca_path = str(tmp_path / "mine.npz")
    assert config_lib.ensure_pca(cfg) == str(tmp_path / "mine.npz")
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- the official convention (issue 37)

def _official_kernels(n, l, rng, iso, sig_min, sig_max, disturb=False):
    """greatlog/DAN codes/utils/deg_utils.py random_batch_kernel, written from its definition in NumPy:
    axis np.arange(-l // 2 + 1, l // 2 + 1); isotropic exp(-(x² + y²) / 2σ²); anisotropic
    exp(-½ pᵀ Σ⁻¹ p), Σ = U diag(σx², σy²) Uᵀ, θ ~ U[-π, π]; tap noise k + U(0, 0.25)·k; k / Σk."""
    ax = np.arange(-l // 2 + 1.0, l // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    if iso:
        s = rng.uniform(sig_min, sig_max, (n, 1, 1))
        k = np.exp(-(xx ** 2 + yy ** 2) / (2.0 * s ** 2))
    else:
        sx, sy, th = rng.uniform(sig_min, sig_max, n), rng.uniform(sig_min, sig_max, n), rng.uniform(-np.pi, np.pi, n)
        u = np.stack([np.stack([np.cos(th), -np.sin(th)], -1), np.stack([np.sin(th), np.cos(th)], -1)], 1)
        cov = u @ (np.eye(2) * np.stack([sx ** 2, sy ** 2], -1)[:, None, :]) @ u.transpose(0, 2, 1)
        p = np.stack([xx, yy], -1)
        k = np.exp(-0.5 * np.einsum("hwi,nij,hwj->nhw", p, np.linalg.inv(cov), p))
        if disturb:
            k = k + rng.uniform(0, 0.25, k.shape) * k
    return k / np.sum(k, (1, 2), keepdims=True)


def _official_pca(kernels, k=10):
    """deg_utils.PCA: X − mean(X), torch.svd(Xᵀ), the first k columns of U; computed here as the
    eigenvectors of (X − mean)ᵀ(X − mean) with the k largest eigenvalues (the same columns, cheaper)."""
    x = kernels.reshape(len(kernels), -1)
    x = x - x.mean(0)
    w, v = np.linalg.eigh(x.T @ x)
    return v[:, np.argsort(w)[::-1][:k]]


def _cosines(a, b):
    """Cosines of the principal angles between the column spans of a and b (1 = same direction)."""
    qa, _ = np.linalg.qr(np.asarray(a, np.float64))
    qb, _ = np.linalg.qr(np.asarray(b, np.float64))
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


@pytest.mark.parametrize("name, family, size, atol", [
    ("official_iso_k21", dict(iso=True, sig_min=0.2, sig_max=4.0), 21, 1e-3),
    ("official_aniso_x2_k11", dict(iso=False, sig_min=0.6, sig_max=5.0, disturb=True), 11, 1e-2),
])
def test_centred_fit_spans_the_official_basis(name, family, size, atol):
    """jaxsr's centred fit (shipped, and fitted afresh on jaxsr's own sampler) spans the basis the
    official construction gives (all principal angles near 0); the uncentred fit does not."""
    official = _official_pca(_official_kernels(10000, size, np.random.default_rng(7), **family))
    shipped = pca.load(pca.official_dan_matrix_path(name))
    assert shipped.shape == (size * size, 10)
    assert _cosines(shipped, official).min() > 1 - atol
    spec = pca.official_dan_specs()[name]
    kernels = D.sample_kernels(jax.random.key(11), 10000, spec)
    assert _cosines(pca.fit(kernels, 10, centred=True), official).min() > 1 - atol
    assert _cosines(pca.fit(kernels, 10), official).min() < 0.5  # jaxsr's default convention: another basis


def test_centred_fit_is_numpys_centred_svd():
    k = D.sample_kernels(jax.random.key(2), 2000, D.setting2(2))
    m = np.asarray(pca.fit(k, 8, centred=True))
    np.testing.assert_allclose(m.T @ m, np.eye(8), atol=1e-4)
    np.testing.assert_allclose(np.abs(m.T @ _official_pca(np.asarray(k, np.float64), 8)), np.eye(8), atol=2e-3)


def test_official_matrix_names():
    with pytest.raises(ValueError, match="official_iso_k21"):
        pca.official_dan_matrix_path("iso")
