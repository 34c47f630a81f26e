"""Shared pieces of the experiment configs in `configs/`.

A config is an `ml_collections.ConfigDict`; `configs/<model>.py:get_config("variant")` starts from
`base_config()` and overrides what the paper or the variant changes (big_vision style: named
variants, no copied files). `validate(cfg)` runs before anything is compiled and names the key
that is wrong.
"""
from __future__ import annotations

import ml_collections

from jaxsr.ops import degrade

DEGRADATION_PRESETS = ("setting1", "setting2", "kxnet1", "kxnet2", "kenet", "custom")


def base_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.scale = 4

    # What the training step does to HR patches (see jaxsr.ops.degrade). `preset` picks the paper's
    # protocol for cfg.scale; "custom" uses the fields below as they are.
    cfg.degradation = ml_collections.ConfigDict(dict(
        preset="setting1", kernel_size=21, kernel_type="iso", sigma_range=(0.2, 4.0),
        theta_range=(-3.141592653589793, 3.141592653589793), kernel_noise=0.0,
        downsampler="bicubic", noise_range=(0.0, 0.0)))

    cfg.model = ml_collections.ConfigDict()  # filled by each configs/<model>.py (cfg.model.name selects the file)
    cfg.loss = ml_collections.ConfigDict()

    cfg.data = ml_collections.ConfigDict(dict(
        train_dirs=("bundled",),        # folders, globs, files, or "bundled" (scikit-image's photos)
        val_dirs=("bundled:val",),
        patch_size=64,                  # LR patch; the HR crop is patch_size * scale
        batch_size=64,                  # global batch, split over all devices and hosts
        cache=True,                     # keep decoded images in RAM (False: decode per patch, or map a store)
        num_threads=4,
        num_workers=0,                  # grain worker processes (0: threads only); same stream either way
        val_size=192,                   # HR centre crop of each validation image
        val_images=4))

    cfg.train = ml_collections.ConfigDict(dict(
        steps=400_000, learning_rate=2e-4, lr_milestones=(100_000, 200_000, 300_000), lr_gamma=0.5,
        b1=0.9, b2=0.99, weight_decay=0.0, grad_clip=0.0,
        log_every=100, eval_every=5_000, checkpoint_every=5_000, keep_checkpoints=3,
        async_checkpoints=True))

    cfg.eval = ml_collections.ConfigDict(dict(
        protocol="gaussian8", dirs=("../shared/data/Set5",), noise=0.0, bucket=16, max_batch=8,
        num_iters=-1))  # -1: the model's own T
    cfg.infer = ml_collections.ConfigDict(dict(tile=256, overlap=16))
    return cfg


def degradation_spec(cfg: ml_collections.ConfigDict) -> degrade.DegradationSpec:
    """The `DegradationSpec` that `cfg.degradation` describes for `cfg.scale`."""
    d, s = cfg.degradation, cfg.scale
    preset = d.preset
    if preset == "setting1":
        return degrade.setting1(s, d.kernel_size)
    if preset == "setting2":
        return degrade.setting2(s, d.kernel_size)
    if preset in ("kxnet1", "kxnet2"):
        return degrade.kxnet_setting(s, int(preset[-1]), noise_max=float(d.noise_range[1]) or 25.0)
    if preset == "kenet":
        return degrade.kenet_setting(s)
    if preset == "custom":
        return degrade.DegradationSpec(
            scale=s, kernel_size=d.kernel_size, kernel_type=d.kernel_type, sigma_range=tuple(d.sigma_range),
            theta_range=tuple(d.theta_range), kernel_noise=d.kernel_noise, downsampler=d.downsampler,
            noise_range=tuple(d.noise_range))
    raise ValueError(f"config key degradation.preset must be one of {DEGRADATION_PRESETS}, got {preset!r}")


def setting_variants(paper) -> dict:
    """The five paper variants DAN and DSSR train: setting1_x2|x3|x4 (21x21) and setting2_x2 (11x11)
    | setting2_x4 (21x21); `paper(cfg, scale, preset, kernel_size=21)` applies one."""
    variants = {f"setting1_x{s}": (lambda c, s=s: paper(c, s, "setting1")) for s in (2, 3, 4)}
    variants.update({f"setting2_x{s}": (lambda c, s=s, k=k: paper(c, s, "setting2", kernel_size=k))
                     for s, k in ((2, 11), (4, 21))})
    return variants


def select_variant(variants: dict, arg: str | None, file: str):
    """Look up `--config=<file>:<arg>`; an unknown name lists the valid ones."""
    name = arg or "cpu"
    if name not in variants:
        raise ValueError(f"unknown config variant {name!r} for {file}; choose one of {sorted(variants)}")
    return name, variants[name]


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Fail fast, before compilation, naming the offending key."""
    from jaxsr import models  # the registry; imported here to keep config files light

    if cfg.scale not in (1, 2, 3, 4):
        raise ValueError(f"config key scale must be 1, 2, 3 or 4, got {cfg.scale!r}")
    try:
        spec = degradation_spec(cfg)
    except ValueError as e:
        raise ValueError(f"config section degradation is invalid for scale {cfg.scale}: {e}") from None
    if "kernel_size" in cfg.model and cfg.model.kernel_size != spec.kernel_size:
        raise ValueError(f"config key model.kernel_size ({cfg.model.kernel_size}) must equal the degradation's "
                         f"kernel size ({spec.kernel_size})")
    if cfg.model.get("name") not in models.REGISTRY:
        raise ValueError(f"config key model.name must be one of {sorted(models.REGISTRY)}, got {cfg.model.get('name')!r}")
    for key in ("patch_size", "batch_size"):
        if int(cfg.data[key]) < 1:
            raise ValueError(f"config key data.{key} must be positive, got {cfg.data[key]}")
    if num_devices and cfg.data.batch_size % num_devices:
        raise ValueError(f"config key data.batch_size ({cfg.data.batch_size}) must be divisible by the number of "
                         f"devices ({num_devices})")
    if cfg.data.val_size % max(cfg.scale, 1):
        raise ValueError(f"config key data.val_size ({cfg.data.val_size}) must be a multiple of scale {cfg.scale}")
    if cfg.train.steps < 1:
        raise ValueError(f"config key train.steps must be >= 1, got {cfg.train.steps}")
    for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(cfg.train[key]) < 1:
            raise ValueError(f"config key train.{key} must be >= 1, got {cfg.train[key]}")


SMALL_RUNS = {
    # seconds on a CPU: what the tests train
    "tiny": (dict(patch_size=12, batch_size=4, val_size=48, val_images=2, num_threads=1),
             dict(steps=6, learning_rate=1e-3, lr_milestones=(4,), log_every=2, eval_every=3,
                  checkpoint_every=3, keep_checkpoints=2)),
    # about 10 minutes on 2 CPU cores: enough for a visible gain over bicubic
    "cpu": (dict(patch_size=24, batch_size=8, val_size=192, val_images=3, num_threads=2),
            dict(steps=1500, learning_rate=5e-4, lr_milestones=(1000,), log_every=50, eval_every=500,
                 checkpoint_every=250)),
}


def small_run(cfg: ml_collections.ConfigDict, kind: str, data=None, train=None) -> ml_collections.ConfigDict:
    """The data/train/eval settings every config's `tiny` and `cpu` variants share (bundled photos,
    Set5 for eval), with per-model `data` / `train` overrides."""
    base_data, base_train = SMALL_RUNS[kind]
    cfg.data.update({**base_data, **(data or {})})
    cfg.train.update({**base_train, **(train or {})})
    cfg.eval.dirs = ("../shared/data/Set5",)
    return cfg
