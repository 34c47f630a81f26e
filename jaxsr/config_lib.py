"""Shared pieces of the experiment configs in `configs/`.

A config is an `ml_collections.ConfigDict`; `configs/<model>.py:get_config("variant")` starts from
`base_config()` and overrides what the paper or the variant changes (big_vision style: named
variants, no copied files). `load("configs/dan.py:tiny")` is the one way to read a config file
outside absl's `--config` flag. `validate(cfg)` runs before anything is compiled and names the
key that is wrong; `prepare(cfg)` fills the derived fields every entry point needs.
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import os
import types

import ml_collections

from jaxsr.ops import degrade, pca

DEGRADATION_PRESETS = ("setting1", "setting2", "kxnet1", "kxnet2", "kenet", "custom")
EVAL_PROTOCOLS = ("gaussian8", "setting2", "kxnet", "paired")  # jaxsr.evaluate.PROTOCOLS + PAIRED
PAIRED_KEYS = ("lr_dir", "hr_dir", "kernel_dir")


def base_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.scale = 4

    # What the training step does to HR patches (see jaxsr.ops.degrade). `preset` picks the paper's
    # protocol for cfg.scale; "custom" uses the fields below as they are.
    cfg.degradation = ml_collections.ConfigDict(dict(
        preset="setting1", kernel_size=21, kernel_type="iso", sigma_range=(0.2, 4.0),
        theta_range=(-3.141592653589793, 3.141592653589793), kernel_noise=0.0,
        downsampler="bicubic", noise_range=(0.0, 0.0),
        kernel_noise_mode="symmetric",  # "positive": the official DAN code's k + U(0, a)·k (docs/recipes.md)
        round_lr=False))                # round each training LR batch to 8 bits, as the official loops do

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
        async_checkpoints=True,
        nan_rollbacks=3,        # a non-finite step rolls back to the last good checkpoint, this many times
        profile_steps="",       # "START,COUNT": an XLA profiler trace of those steps in WORKDIR/profile
        require_accelerator=False))  # True for paper-scale runs: training refuses the CPU backend

    # protocol: gaussian8 | setting2 | kxnet degrade the HR images of `dirs`; "paired" reads published
    # LR files: `lr_dir` + `hr_dir` (+ `kernel_dir`, ground-truth kernels), or else every entry of
    # `dirs` is a root in DIV2KRK's layout (gt/, lr_x<s>/, gt_k_x<s>/). See jaxsr.paired.
    # bucket=1, max_batch=1: exact, every LR image alone at its own size (one compile per distinct
    # size). Opt-in, faster, reported as not exact: max_batch > 1 batches images of one size (XLA
    # may round differently), bucket > 1 mirror-pads each LR to a multiple of it (scores move).
    cfg.eval = ml_collections.ConfigDict(dict(
        protocol="gaussian8", dirs=("benchmark:Set5",), noise=0.0, bucket=1, max_batch=1,
        num_iters=-1,  # -1: the model's own T
        lr_dir="", hr_dir="", kernel_dir=""))
    cfg.infer = ml_collections.ConfigDict(dict(tile=256, overlap=16))
    return cfg


def degradation_spec(cfg: ml_collections.ConfigDict) -> degrade.DegradationSpec:
    """The `DegradationSpec` that `cfg.degradation` describes for `cfg.scale`: the preset's, with
    `round_lr` and `kernel_noise_mode` from the config whatever the preset."""
    spec = _preset_spec(cfg)
    d = cfg.degradation
    round_lr, mode = d.get("round_lr", False), d.get("kernel_noise_mode", "symmetric")
    if not isinstance(round_lr, bool):
        raise ValueError(f"config key degradation.round_lr must be True or False, got {round_lr!r}")
    return dataclasses.replace(spec, round_lr=round_lr, kernel_noise_mode=mode)


def _preset_spec(cfg: ml_collections.ConfigDict) -> degrade.DegradationSpec:
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


def use_preset(cfg: ml_collections.ConfigDict, scale: int, preset: str) -> ml_collections.ConfigDict:
    """cfg.scale and a degradation preset with the preset's own kernel size (and model.kernel_size
    when the model has one); "kxnet2" adds its AWGN σ ∈ [0, 25]."""
    cfg.scale = scale
    cfg.degradation.preset = preset
    cfg.degradation.noise_range = (0.0, 25.0 if preset == "kxnet2" else 0.0)
    size = degradation_spec(cfg).kernel_size
    cfg.degradation.kernel_size = size
    if "kernel_size" in cfg.model:
        cfg.model.kernel_size = size
    return cfg


PAPER_TRAIN_DIRS = ("/path/to/DIV2K_Flickr2K_store",)  # python -m jaxsr.data.prepare --output STORE DIV2K_train_HR Flickr2K_HR


def paper_data(cfg: ml_collections.ConfigDict, **data) -> ml_collections.ConfigDict:
    """The data settings every paper variant shares: DIV2K + Flickr2K, Set5 for validation,
    Set5 + Set14 for evaluation (under the data root, see `jaxsr.data.datasets.resolve_benchmark`),
    decoded on access; `data` overrides fields of cfg.data."""
    cfg.data.update(dict(train_dirs=PAPER_TRAIN_DIRS, val_dirs=("benchmark:Set5",), cache=False,
                         num_threads=16, **data))
    cfg.train.require_accelerator = True
    cfg.eval.dirs = ("benchmark:Set5", "benchmark:Set14")
    return cfg


def paper_setting(cfg: ml_collections.ConfigDict, scale: int, preset: str, kernel_size: int = 21):
    """One of the IKC/DAN settings (setting1: isotropic, Gaussian8 test on Set5 + Set14; setting2:
    anisotropic, tested on DIV2KRK's published files with the paired protocol) at `scale`, with the
    paper data; sets model.kernel_size when the model has one."""
    cfg.scale = scale
    cfg.degradation.preset = preset
    cfg.degradation.kernel_size = kernel_size
    if "kernel_size" in cfg.model:
        cfg.model.kernel_size = kernel_size
    paper_data(cfg)
    cfg.degradation.round_lr = True  # the papers are silent; the official training loops round (docs/recipes.md)
    cfg.eval.protocol = "gaussian8" if preset == "setting1" else "paired"
    if preset != "setting1":
        cfg.eval.dirs = ("benchmark:DIV2KRK",)  # gt/, lr_x<s>/, gt_k_x<s>/
    return cfg


def official_dan_degradation(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The training degradation of the official DAN v1/v2 (and DSSR) option files for the paper
    setting `cfg` already has (`paper_setting`): setting 1 samples σ ~ U[0.2, 4.0] at every scale
    (train_setting1_x2|x3|x4.yml: sig_max 4.0); setting 2 draws the tap noise as k + U(0, 0.25)·k
    (utils/deg_utils.py, random_disturb: true); both round each LR batch to 8 bits (train.py).
    Written out as a "custom" degradation so every field is in the config."""
    spec = degradation_spec(cfg)
    iso = spec.kernel_type == "iso"
    cfg.degradation.update(dict(
        preset="custom", kernel_size=spec.kernel_size, kernel_type=spec.kernel_type,
        sigma_range=(0.2, 4.0) if iso else (0.6, 5.0), theta_range=(-3.141592653589793, 3.141592653589793),
        kernel_noise=0.0 if iso else 0.25, kernel_noise_mode="symmetric" if iso else "positive",
        downsampler="bicubic", noise_range=(0.0, 0.0), round_lr=True))
    return cfg


def official_twins(variants: dict, official) -> dict:
    """`variants` plus a `<name>_official` twin of each paper variant: the paper variant, then
    `official(cfg, name)` applies what the official repository's option files and code do instead."""
    twins = {f"{name}_official": (lambda c, name=name, make=make: official(make(c), name))
             for name, make in variants.items()}
    return {**variants, **twins}


def setting_variants() -> dict:
    """The five paper variants DAN and DSSR train: setting1_x2|x3|x4 (21x21) and setting2_x2 (11x11)
    | setting2_x4 (21x21), each applying `paper_setting`."""
    variants = {f"setting1_x{s}": (lambda c, s=s: paper_setting(c, s, "setting1")) for s in (2, 3, 4)}
    variants.update({f"setting2_x{s}": (lambda c, s=s, k=k: paper_setting(c, s, "setting2", kernel_size=k))
                     for s, k in ((2, 11), (4, 21))})
    return variants


def select_variant(variants: dict, arg: str | None, file: str):
    """Look up `--config=<file>:<arg>`; an unknown name lists the valid ones."""
    name = arg or "cpu"
    if name not in variants:
        raise ValueError(f"unknown config variant {name!r} for {file}; choose one of {sorted(variants)}")
    return name, variants[name]


def load_module(path: str | os.PathLike) -> types.ModuleType:
    """The config file at `path` as a module (e.g. for its VARIANTS)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    name = "jaxsr_config_" + os.path.splitext(os.path.basename(path))[0]
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module


def load(path: str | os.PathLike, variant: str | None = None) -> ml_collections.ConfigDict:
    """`load("configs/dan.py:tiny")` or `load("configs/dan.py", "tiny")`: what `--config=` reads."""
    path = os.fspath(path)
    if variant is None and ":" in os.path.basename(path):
        path, _, variant = path.rpartition(":")
    return load_module(path).get_config(variant)


def prepare(cfg: ml_collections.ConfigDict, spec: degrade.DegradationSpec | None = None) -> ml_collections.ConfigDict:
    """A copy with the derived fields filled (the PCA matrix path for the DAN models), so
    training, eval, infer and conversion build the same model. Pure: reads no file and writes
    none; a matrix that is neither shipped nor cached yet is fitted by `ensure_pca`. `spec`: the
    config's degradation when the caller has it (`jaxsr.experiment.resolve`)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if "pca_path" in cfg.model and not cfg.model.pca_path:
        spec = spec or degradation_spec(cfg)
        cfg.model.pca_path = pca.default_matrix_path(spec, cfg.model.get("code_length", 10))
    return cfg


def ensure_pca(cfg: ml_collections.ConfigDict, spec: degrade.DegradationSpec | None = None) -> str | None:
    """The explicit side effect `prepare` leaves out: when the config's PCA matrix is the
    default one for its degradation and not shipped, fit and cache it once (atomically, in
    `jaxsr.cache.cache_dir()`). Returns the matrix path, or None for a model without one. A
    path the config names itself is left alone (a missing one fails where it is loaded)."""
    if "pca_path" not in cfg.model:
        return None
    spec, dim = spec or degradation_spec(cfg), cfg.model.get("code_length", 10)
    default = pca.default_matrix_path(spec, dim)
    if cfg.model.pca_path and cfg.model.pca_path != default:
        return cfg.model.pca_path
    return pca.fit_cached(spec, dim)


INT_KEYS = ("seed", "scale", "data.patch_size", "data.batch_size", "data.num_threads", "data.val_size",
            "data.val_images", "train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
            "train.keep_checkpoints", "eval.bucket", "eval.max_batch", "infer.overlap")
NUMBER_KEYS = ("train.learning_rate", "train.lr_gamma", "train.b1", "train.b2", "train.weight_decay",
               "train.grad_clip", "eval.noise")
PATH_LIST_KEYS = ("data.train_dirs", "data.val_dirs", "eval.dirs")


def _get(cfg: ml_collections.ConfigDict, key: str):
    section, _, field = key.rpartition(".")
    return (cfg[section] if section else cfg).get(field)


def _check_types(cfg: ml_collections.ConfigDict) -> None:
    """The type of every key the loop uses, so `--config.data.batch_size=2.5`-like mistakes
    (or a config file's `steps=1e5`) name the key instead of failing deep inside."""
    for key in INT_KEYS:
        value = _get(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key} must be an integer, got {value!r} ({type(value).__name__})")
    for key in NUMBER_KEYS:
        value = _get(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key} must be a number, got {value!r} ({type(value).__name__})")
    for key in PATH_LIST_KEYS:
        value = _get(cfg, key)
        entries = [value] if isinstance(value, str) else value
        if not isinstance(entries, (list, tuple)) or not all(isinstance(e, str) for e in entries):
            raise ValueError(f"config key {key} must be a folder, glob or file name, or a tuple of them, "
                             f"e.g. \"--config.{key}=('benchmark:Set5',)\"; got {value!r}")
    tile = cfg.infer.get("tile")
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int)):
        raise ValueError(f"config key infer.tile must be an integer or None, got {tile!r}")


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None,
             devices_per_host: int | None = None) -> degrade.DegradationSpec:
    """Fail fast, before compilation, naming the offending key; returns the degradation spec.
    (`jaxsr.experiment.resolve`, the one check every entry point runs, also checks model.name
    against the model registry, which this module may not import.)"""
    _check_types(cfg)
    if cfg.scale not in (1, 2, 3, 4):
        raise ValueError(f"config key scale must be 1, 2, 3 or 4, got {cfg.scale!r}")
    try:
        spec = degradation_spec(cfg)
    except ValueError as e:
        raise ValueError(f"config section degradation is invalid for scale {cfg.scale}: {e}") from None
    if "kernel_size" in cfg.model and cfg.model.kernel_size != spec.kernel_size:
        raise ValueError(f"config key model.kernel_size ({cfg.model.kernel_size}) must equal the degradation's "
                         f"kernel size ({spec.kernel_size})")
    for key in ("patch_size", "batch_size"):
        if int(cfg.data[key]) < 1:
            raise ValueError(f"config key data.{key} must be positive, got {cfg.data[key]}")
    if num_devices:
        from jaxsr import sharding  # jax-dependent; this module stays importable without it
        sharding.data_parallelism(cfg.data.batch_size, num_devices, devices_per_host)
    if cfg.data.val_size % max(cfg.scale, 1):
        raise ValueError(f"config key data.val_size ({cfg.data.val_size}) must be a multiple of scale {cfg.scale}")
    if cfg.train.steps < 1:
        raise ValueError(f"config key train.steps must be >= 1, got {cfg.train.steps}")
    for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(cfg.train[key]) < 1:
            raise ValueError(f"config key train.{key} must be >= 1, got {cfg.train[key]}")
    validate_eval(cfg)
    return spec


def validate_eval(cfg: ml_collections.ConfigDict) -> None:
    """The eval section: a known protocol, and the paired protocol's folders given consistently."""
    e = cfg.get("eval") or ml_collections.ConfigDict()
    protocol = e.get("protocol", "gaussian8")
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"config key eval.protocol must be one of {EVAL_PROTOCOLS}, got {protocol!r}")
    for key in ("bucket", "max_batch"):
        if int(e.get(key, 1)) < 1:
            raise ValueError(f"config key eval.{key} must be >= 1 (1: exact, each image alone at its own size), "
                             f"got {e.get(key)!r}")
    given = {}
    for key in PAIRED_KEYS:
        value = e.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ValueError(f"config key eval.{key} must be a folder path (a string), got {value!r}")
        given[key] = value
    set_keys = [k for k, v in given.items() if v]
    if protocol != "paired":
        if set_keys:
            raise ValueError(f"config key eval.{set_keys[0]} is only read by eval.protocol='paired' (got protocol "
                             f"{protocol!r}); add --config.eval.protocol=paired or leave it empty")
        return
    if bool(given["lr_dir"]) != bool(given["hr_dir"]):
        missing = "hr_dir" if given["lr_dir"] else "lr_dir"
        raise ValueError(f"config key eval.{missing} is empty: eval.protocol='paired' needs both eval.lr_dir and "
                         f"eval.hr_dir, or neither (then every entry of eval.dirs is a DIV2KRK-style root)")
    if given["kernel_dir"] and not given["lr_dir"]:
        raise ValueError("config key eval.kernel_dir needs eval.lr_dir and eval.hr_dir (a DIV2KRK root in "
                         "eval.dirs brings its own gt_k_x<s>/ kernels)")


SMALL_RUNS = {
    # seconds on a CPU: what the tests train
    "tiny": (dict(patch_size=12, batch_size=4, val_size=48, val_images=2, num_threads=1),
             dict(steps=6, learning_rate=1e-3, lr_milestones=(4,), log_every=2, eval_every=3,
                  checkpoint_every=3, keep_checkpoints=2)),
    # minutes on 2 CPU cores (see the README's results table): enough for a visible gain over bicubic
    "cpu": (dict(patch_size=24, batch_size=8, val_size=192, val_images=3, num_threads=2),
            dict(steps=1500, learning_rate=5e-4, lr_milestones=(1000,), log_every=50, eval_every=500,
                 checkpoint_every=250)),
}


def small_run(cfg: ml_collections.ConfigDict, kind: str, data=None, train=None) -> ml_collections.ConfigDict:
    """The data/train/eval settings every config's `tiny` and `cpu` variants share (bundled photos,
    Set5 under the data root for eval), with per-model `data` / `train` overrides."""
    base_data, base_train = SMALL_RUNS[kind]
    cfg.data.update({**base_data, **(data or {})})
    cfg.train.update({**base_train, **(train or {})})
    cfg.eval.dirs = ("benchmark:Set5",)
    return cfg
