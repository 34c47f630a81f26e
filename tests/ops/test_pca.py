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
