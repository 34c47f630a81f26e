"""Kernel PCA: a linear projection from flattened k×k kernels to a short code (DANv1, IKC).

Convention: `matrix` has shape (k*k, n) with orthonormal columns; code = flat(kernel) @ matrix
and kernel ≈ code @ matrix.T. As in the official DAN code, encoding projects the raw kernel (no mean
is subtracted), so a code also carries the kernel's overall mass. The fit itself is uncentred by
default (jaxsr's shipped per-setting matrices); the official DAN matrices are centred fits
(`fit(..., centred=True)`, `fit_official_dan`; docs/recipes.md says which variant uses which).

The fitted matrices for the standard settings ship in `jaxsr/assets/`; regenerate them with

    python -m jaxsr.ops.pca --out jaxsr/assets
"""
from __future__ import annotations

import argparse
import os
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import cache, files
from jaxsr.ops import _checks

ASSET_PACKAGE = "jaxsr.assets"


def fit(kernels: jax.Array, dim: int = 10, centred: bool = False) -> jax.Array:
    """Top-`dim` right singular vectors of the (N, k*k) kernel matrix, as a (k*k, dim) matrix.

    centred=False: of the kernels as they are (jaxsr's shipped matrices, `default_matrix_path`).
    centred=True: of the kernels minus their mean, i.e. the principal axes, as the official DAN
    code fits its matrices (greatlog/DAN codes/utils/deg_utils.py `PCA`, called by creat_PCA.py);
    encoding still projects the raw kernel, without subtracting the mean, in both conventions."""
    kernels = jnp.asarray(kernels)
    _checks.check_kernels("kernels", kernels)
    flat = kernels.reshape(kernels.shape[0], -1)
    if not 1 <= dim <= flat.shape[1]:
        raise ValueError(f"dim must be in [1, {flat.shape[1]}] for {kernels.shape[1]}x{kernels.shape[2]} "
                         f"kernels, got {dim}")
    if centred:
        flat = flat - jnp.mean(flat, axis=0, keepdims=True)
    _, _, vt = jnp.linalg.svd(flat, full_matrices=False)
    basis = vt[:dim].T
    # SVD signs are arbitrary: make the largest-magnitude entry of each component positive
    # so a regenerated matrix is identical, not merely equivalent.
    idx = jnp.argmax(jnp.abs(basis), axis=0)
    signs = jnp.sign(basis[idx, jnp.arange(dim)])
    return basis * signs


def _check_matrix(matrix, size: int) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != size:
        raise ValueError(f"PCA matrix must have shape ({size}, code_len) for these kernels, "
                         f"got {matrix.shape}")


def encode(kernels: jax.Array, matrix: jax.Array) -> jax.Array:
    """(N, k, k) kernels -> (N, n) codes."""
    _checks.check_kernels("kernels", kernels)
    _check_matrix(matrix, kernels.shape[1] * kernels.shape[2])
    return kernels.reshape(kernels.shape[0], -1) @ matrix


def decode(codes: jax.Array, matrix: jax.Array) -> jax.Array:
    """(N, n) codes -> (N, k, k) kernels (not renormalised)."""
    if codes.ndim != 2 or codes.shape[1] != matrix.shape[1]:
        raise ValueError(f"codes must have shape (N, {matrix.shape[1]}) for this matrix, got {codes.shape}")
    size = int(round(np.sqrt(matrix.shape[0])))
    _check_matrix(matrix, size * size)
    return (codes @ matrix.T).reshape(codes.shape[0], size, size)


def save(path: str, matrix, **meta) -> None:
    """Write `matrix` (and `meta` arrays) as an .npz that appears only complete."""
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, matrix=np.asarray(matrix, np.float32), **{k: np.asarray(v) for k, v in meta.items()})


def load(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(f"PCA matrix file not found: {path}")
    with np.load(path) as f:
        if "matrix" not in f:
            raise ValueError(f"{path} has no 'matrix' array (keys: {sorted(f.keys())})")
        return np.asarray(f["matrix"], np.float32)


def asset_name(kernel_type: str, scale: int, kernel_size: int, dim: int) -> str:
    return f"pca_{kernel_type}_x{scale}_k{kernel_size}_d{dim}.npz"


def fit_for_spec(spec, dim: int = 10, num_kernels: int = 20000, seed: int = 0,
                 centred: bool = False) -> np.ndarray:
    """Fit a projection on kernels sampled as `spec` samples them for training."""
    from jaxsr.ops import degrade  # local import: degrade does not depend on pca
    kernels = degrade.sample_kernels(jax.random.key(seed), num_kernels, spec)
    return np.asarray(fit(kernels, dim, centred=centred))


def official_dan_specs() -> dict:
    """The kernel families the official DAN matrices are fitted on (greatlog/DAN creat_PCA.py run on
    an option file: 30000 kernels, centred PCA), by the name of jaxsr's fit of each in jaxsr/assets/:
      "official_iso_k21"       isotropic 21x21, σ ~ U[0.2, 4.0] (train_setting1_x4.yml, the script's
                               default): the repository's pca_matrix.pth, which its option files use at
                               every setting-1 scale, and which it also ships as
                               DANv1/pca_aniso_matrix_x4.pth (the same bytes), used for setting 2 x4
      "official_aniso_x2_k11"  anisotropic 11x11, σ ~ U[0.6, 5], θ ~ U[-π, π], tap noise k + U(0, 0.25)·k
                               (train_setting2_x2.yml): pca_aniso_matrix_x2.pth."""
    from jaxsr.ops import degrade
    return {
        "official_iso_k21": degrade.DegradationSpec(scale=4, kernel_size=21, kernel_type="iso",
                                                    sigma_range=(0.2, 4.0)),
        "official_aniso_x2_k11": degrade.DegradationSpec(
            scale=2, kernel_size=11, kernel_type="aniso", sigma_range=(0.6, 5.0), theta_range=(-np.pi, np.pi),
            kernel_noise=0.25, kernel_noise_mode="positive"),
    }


def fit_official_dan(name: str, dim: int = 10, num_kernels: int = 30000, seed: int = 0) -> np.ndarray:
    """jaxsr's fit of one official DAN matrix (`official_dan_specs`): centred, on that family."""
    return fit_for_spec(official_dan_specs()[name], dim, num_kernels, seed, centred=True)


def official_dan_matrix_path(name: str, dim: int = 10) -> str:
    """Path of the shipped `fit_official_dan(name)` (jaxsr/assets/pca_<name>_d<dim>.npz)."""
    if name not in official_dan_specs():
        raise ValueError(f"unknown official DAN matrix {name!r}; choose one of {sorted(official_dan_specs())}")
    return str(resources.files(ASSET_PACKAGE) / f"pca_{name}_d{dim}.npz")


def default_matrix_path(spec, dim: int = 10) -> str:
    """Path of the matrix for `spec` (a `DegradationSpec`): the shipped one, else where
    `fit_cached` keeps a fitted one in the jaxsr cache directory (`jaxsr.cache.cache_dir()`,
    which honours $JAXSR_CACHE_DIR). Pure: reads and writes nothing but the package listing;
    the cached file may not exist yet."""
    name = asset_name(spec.kernel_type, spec.scale, spec.kernel_size, dim)
    shipped = resources.files(ASSET_PACKAGE) / name
    if shipped.is_file():
        return str(shipped)
    return str(cache.cache_dir() / name)


def fit_cached(spec, dim: int = 10) -> str:
    """The explicit step behind `default_matrix_path`: when `spec` has no shipped matrix and
    none is cached yet, fit one and write it atomically (`save`: a temporary file in the cache
    directory, then a rename), so a concurrent reader sees either no file or a whole one.
    Returns the path."""
    path = default_matrix_path(spec, dim)
    if os.path.exists(path):
        return path
    save(path, fit_for_spec(spec, dim), scale=spec.scale, kernel_size=spec.kernel_size)
    return path


def default_matrix(spec, dim: int = 10) -> np.ndarray:
    """The shipped (or cached, fitted on first use) matrix for `spec`."""
    return load(fit_cached(spec, dim))


def standard_specs():
    from jaxsr.ops import degrade
    specs = [degrade.setting1(s) for s in (1, 2, 3, 4)] + [degrade.setting2(s) for s in (2, 3, 4)]
    return specs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Fit and save the kernel PCA matrices for the standard settings.")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "assets"))
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--num-kernels", type=int, default=20000)
    args = parser.parse_args(argv)
    for spec in standard_specs():
        matrix = fit_for_spec(spec, args.dim, args.num_kernels)
        path = os.path.join(args.out, asset_name(spec.kernel_type, spec.scale, spec.kernel_size, args.dim))
        save(path, matrix, scale=spec.scale, kernel_size=spec.kernel_size)
        print(f"wrote {path}  {matrix.shape}")


if __name__ == "__main__":
    main()
