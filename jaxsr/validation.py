"""Validation during training: a fixed held-out set scored against bicubic, and the image grid."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import models
from jaxsr.data import datasets, pipeline
from jaxsr.ops import degrade, imresize, metrics


class Validator:
    """A fixed, small held-out set: the same LR images (fixed kernels) every time, so numbers
    are comparable across steps; one compiled shape."""

    def __init__(self, exp, model):
        cfg, spec, model_spec = exp.cfg, exp.degradation, exp.model_spec
        paths = datasets.resolve_image_paths(cfg.data.val_dirs, key="data.val_dirs")
        hr = pipeline.load_validation_set(paths, size=cfg.data.val_size, scale=cfg.scale,
                                          max_images=cfg.data.val_images)
        self.scale = cfg.scale
        self.hr = jnp.asarray(hr)
        val_spec = degrade.DegradationSpec(**{**spec.__dict__, "quantize": True})
        self.lr, self.kernel, _ = degrade.degrade(jax.random.PRNGKey(cfg.seed + 12345), self.hr, val_spec)
        self.bicubic = jnp.clip(imresize.imresize(self.lr, float(cfg.scale)), 0, 1)
        self.bicubic_psnr = float(jnp.mean(metrics.psnr(self.bicubic, self.hr, cfg.scale)))
        self.bicubic_ssim = float(jnp.mean(metrics.ssim(self.bicubic, self.hr, cfg.scale)))
        self.predict = model_spec.jit_predict(model)
        self.non_blind = model_spec.non_blind  # restores with the true kernel

    def __call__(self, params) -> tuple[dict[str, float], np.ndarray]:
        sr, kernel = self.predict(params, self.lr, self.kernel if self.non_blind else None)
        result = {"val_bicubic_psnr": self.bicubic_psnr, "val_bicubic_ssim": self.bicubic_ssim}
        if sr is not None:  # a pure kernel estimator returns no image
            sr = jnp.clip(sr, 0, 1)
            result["val_psnr"] = float(jnp.mean(metrics.psnr(sr, self.hr, self.scale)))
            result["val_ssim"] = float(jnp.mean(metrics.ssim(sr, self.hr, self.scale)))
        if kernel is not None:
            result["val_kernel_l1"] = float(jnp.mean(jnp.abs(kernel - self.kernel)))
        sr_np = np.asarray(self.bicubic if sr is None else sr)
        return result, self.grid(sr_np, None if kernel is None else np.asarray(kernel))

    def grid(self, sr: np.ndarray, kernel: np.ndarray | None) -> np.ndarray:
        """Rows of LR (nearest-upsampled) | bicubic | SR | HR | true kernel | estimated kernel."""
        s, hr = self.scale, np.asarray(self.hr)
        size = hr.shape[1]
        lr_up = np.repeat(np.repeat(np.asarray(self.lr), s, axis=1), s, axis=2)

        def kernel_tile(k):
            k = k / max(k.max(), 1e-8)
            rep = max(size // k.shape[0], 1)
            tile = np.zeros((size, size), np.float32)
            big = np.kron(k, np.ones((rep, rep)))
            tile[:big.shape[0], :big.shape[1]] = big
            return np.repeat(tile[..., None], 3, axis=-1)

        rows = []
        for i in range(hr.shape[0]):
            cols = [lr_up[i], np.asarray(self.bicubic[i]), sr[i], hr[i], kernel_tile(np.asarray(self.kernel[i]))]
            if kernel is not None:
                cols.append(kernel_tile(kernel[i]))
            rows.append(np.concatenate(cols, axis=1))
        return np.clip(np.concatenate(rows, axis=0), 0, 1)
