"""Validation during training: an evaluator handed the model's predict function.

`Validator(exp, predict)` holds a fixed, small held-out set degraded like the training data;
`validator(params)` runs `predict(params, lr, kernel=None)` (`jaxsr.predict.predictor`: the
program `jaxsr.predict.bind` fixes the parameters of for eval and infer) and scores it with
`jaxsr.evaluate`'s scores (PSNR / SSIM on Y, border = scale; the kernel MAE) against bicubic.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import evaluate, predict as predict_lib
from jaxsr.data import datasets, pipeline
from jaxsr.ops import degrade


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The validation images: HR, its LR and true kernels, the bicubic baseline and its scores."""
    hr: jax.Array
    lr: jax.Array
    kernel: jax.Array
    bicubic: jax.Array
    baseline: dict[str, float]


class Validator:
    """The same LR images (fixed kernels) every time, so numbers are comparable across steps;
    one compiled shape. A non-blind model restores with the true kernels. The HR images are read
    (and checked) when it is built; they are degraded at the first validation, so building it
    costs the first training step no time."""

    def __init__(self, exp, predict):
        cfg = exp.cfg
        paths = datasets.resolve_image_paths(cfg.data.val_dirs, key="data.val_dirs")
        self.hr = pipeline.load_validation_set(paths, size=cfg.data.val_size, scale=cfg.scale,
                                               max_images=cfg.data.val_images)
        self.scale, self.seed = cfg.scale, cfg.seed + 12345
        self.spec = dataclasses.replace(exp.degradation, quantize=True)
        self.predict = predict
        self.non_blind = exp.model_spec.non_blind

    @functools.cached_property
    def held_out(self) -> HeldOut:
        """The degraded set, made at the first use and kept (the same LR every validation)."""
        hr = jnp.asarray(self.hr)
        lr, kernel, _ = degrade.degrade(jax.random.PRNGKey(self.seed), hr, self.spec)
        bicubic = jnp.clip(evaluate.bicubic(lr, self.scale), 0, 1)
        psnr, ssim = evaluate.scores(bicubic, hr, self.scale)
        return HeldOut(hr, lr, kernel, bicubic, {"val_bicubic_psnr": float(jnp.mean(psnr)),
                                                 "val_bicubic_ssim": float(jnp.mean(ssim))})

    @classmethod
    def for_model(cls, exp, model) -> "Validator":
        """The validator of `model` (the training program's module) for the experiment `exp`."""
        return cls(exp, predict_lib.predictor(exp.model_spec, model))

    def __call__(self, params) -> tuple[dict[str, float], np.ndarray]:
        data = self.held_out
        sr, kernel = self.predict(params, data.lr, data.kernel if self.non_blind else None)
        result = dict(data.baseline)
        if sr is not None:  # a pure kernel estimator returns no image
            sr = jnp.clip(sr, 0, 1)
            psnr, ssim = evaluate.scores(sr, data.hr, self.scale)
            result["val_psnr"], result["val_ssim"] = float(jnp.mean(psnr)), float(jnp.mean(ssim))
        if kernel is not None:
            kernel = np.asarray(kernel)
            errors = [evaluate.kernel_errors(k, truth)["kernel_mae"] for k, truth in zip(kernel, np.asarray(data.kernel))]
            result["val_kernel_l1"] = float(np.mean(errors))
        sr_np = np.asarray(data.bicubic if sr is None else sr)
        return result, self.grid(sr_np, kernel)

    def grid(self, sr: np.ndarray, kernel: np.ndarray | None) -> np.ndarray:
        """Rows of LR (nearest-upsampled) | bicubic | SR | HR | true kernel | estimated kernel."""
        s, data, hr = self.scale, self.held_out, np.asarray(self.hr)
        size = hr.shape[1]
        lr_up = np.repeat(np.repeat(np.asarray(data.lr), s, axis=1), s, axis=2)

        def kernel_tile(k):
            k = k / max(k.max(), 1e-8)
            rep = max(size // k.shape[0], 1)
            tile = np.zeros((size, size), np.float32)
            big = np.kron(k, np.ones((rep, rep)))
            tile[:big.shape[0], :big.shape[1]] = big
            return np.repeat(tile[..., None], 3, axis=-1)

        rows = []
        for i in range(hr.shape[0]):
            cols = [lr_up[i], np.asarray(data.bicubic[i]), sr[i], hr[i], kernel_tile(np.asarray(data.kernel[i]))]
            if kernel is not None:
                cols.append(kernel_tile(kernel[i]))
            rows.append(np.concatenate(cols, axis=1))
        return np.clip(np.concatenate(rows, axis=0), 0, 1)
