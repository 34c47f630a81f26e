"""Flax models, one file per system; shared blocks in `layers.py`.

Every model file ends with one `ModelSpec` per model name it implements (`SPEC`, or `SPECS`
for DANv1/DANv2). The spec is the whole contract between a model and the rest of jaxsr:

    create(cfg, pca_matrix=None) -> flax.linen.Module
    init(model, rng, lr) -> variables                  default: model.init(rng, lr)
    forward(model, variables, batch, cfg) -> outputs    default: model.apply(variables, batch["lr"])
        the training forward; `cfg` (its loss settings) says which outputs the loss weights
    loss(outputs, batch, cfg) -> (loss, metrics)
    predict(model, variables, lr, *, num_iters=None, kernel=None, noise_sigma=None)
        -> (sr or None, kernel or None)                  default: the last iteration's sr/kernel
    non_blind: the model restores with a given kernel (validation passes the true one)
    official: the `jaxsr.torch_import.OfficialMap` of its official PyTorch checkpoints, or None
    restorer: the name of the non-blind model that turns its kernels into images (KENet)

`jaxsr.train`, `jaxsr.predict` and the converter read specs through `get(name)` and build
modules through `create(cfg, platform)`, which settles the one choice that depends on the
platform a program is compiled for (`scan_unroll`, `scan_blocks`); nothing probes a model module for optional
functions. Model files import only `jaxsr.ops`,
`jaxsr.losses`, `jaxsr.torch_import` and each other's layers, never the trainer.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from jaxsr import cpu, platform as platform_lib

# cfg.model.name -> the file that implements it
REGISTRY: dict[str, str] = {
    "danv1": "jaxsr.models.dan",
    "danv2": "jaxsr.models.dan",
    "dssr": "jaxsr.models.dssr",
    "kxnet": "jaxsr.models.kxnet",
    "kenet": "jaxsr.models.kenet",
    "usrnet": "jaxsr.models.usrnet",
}


def default_init(model, rng, lr):
    return model.init(rng, lr)


def default_forward(model, variables, batch, cfg=None):
    del cfg  # every output may be weighted
    return model.apply(variables, batch["lr"])


def default_predict(model, variables, lr, *, num_iters=None, kernel=None, noise_sigma=None):
    """The last iteration's SR and kernel of a blind model that returns {"sr", "kernel"?}."""
    del noise_sigma  # a blind model estimates what it needs
    if kernel is not None:
        raise ValueError(f"{type(model).__name__} is a blind model and cannot restore with a given kernel; "
                         f"the true-kernel bound (eval.oracle_kernel=True) needs a non-blind model such as usrnet")
    out = model.apply(variables, lr, num_iters=num_iters)
    return out["sr"][-1], (out["kernel"][-1] if "kernel" in out else None)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the training loop, eval, infer and the converter know about one model."""
    name: str
    create: Callable[..., Any]
    loss: Callable[..., Any]
    init: Callable[..., Any] = default_init
    forward: Callable[..., Any] = default_forward
    predict: Callable[..., Any] = default_predict
    non_blind: bool = False
    official: Any = None          # jaxsr.torch_import.OfficialMap | None
    # module fields of the published model variants, by name; the first is the default
    official_variants: dict = dataclasses.field(default_factory=dict)
    restorer: str | None = None   # a kernel estimator's non-blind partner (cfg.pipeline)

    def jit_predict(self, model, num_iters: int | None = None):
        """predict(params, lr, kernel=None, noise_sigma=None) -> (sr, kernel), jitted. The
        parameters are an argument: closed over, XLA would embed them as constants."""
        return platform_lib.jit(lambda params, lr, kernel=None, noise_sigma=None: self.predict(
            model, {"params": params}, lr, num_iters=num_iters, kernel=kernel, noise_sigma=noise_sigma))


def create(cfg, platform: str, **kwargs):
    """The Flax module of `cfg.model` for programs compiled for `platform` ("cpu", "gpu", "tpu").

    `cfg.model.scan_unroll` -1 (or absent: the default) becomes `jaxsr.cpu.scan_unroll(platform)`
    (unrolled on the CPU, a rolled loop elsewhere); any other value is kept. Likewise
    `scan_blocks` (a model's repeated blocks as one scanned body): rolled wherever that rule rolls
    loops (GPU/TPU), unrolled on the CPU. `kwargs` go to the spec's `create` (e.g. `pca_matrix`)."""
    if platform not in platform_lib.PLATFORMS:
        raise ValueError(f"platform must be one of {platform_lib.PLATFORMS}, got {platform!r}")
    model = get(cfg.model.get("name")).create(cfg, **kwargs)
    fields = type(model).__dataclass_fields__
    if "scan_unroll" in fields and int(cfg.model.get("scan_unroll", -1)) == -1:
        model = model.clone(scan_unroll=cpu.scan_unroll(platform))
    if "scan_blocks" in fields and int(cfg.model.get("scan_blocks", -1)) == -1:
        model = model.clone(scan_blocks=cpu.scan_unroll(platform) != 0)
    return model


def get(name: str) -> ModelSpec:
    """The spec of `cfg.model.name`; an unknown name lists the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"config key model.name must be one of {sorted(REGISTRY)}, got {name!r}")
    module = importlib.import_module(REGISTRY[name])
    specs = getattr(module, "SPECS", None) or {module.SPEC.name: module.SPEC}
    return specs[name]


def with_official_checkpoints() -> list[str]:
    """Model names whose official PyTorch checkpoints can be imported."""
    return sorted(name for name in REGISTRY if get(name).official is not None)


def module_from_config(cls, cfg, *, names: tuple[str, ...], drop: tuple[str, ...] = (), **fixed):
    """`cls(**cfg.model fields, **fixed)` for a spec's `create`.

    `cfg.model.name` must be one of `names`; keys in `drop` are config-only (e.g. a PCA path);
    an unknown field fails with a message listing the valid ones; lists become tuples so the
    module stays hashable. `scale=cfg.scale` is passed when the module has that field.
    """
    fields = dict(cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else cfg.model)
    name = fields.pop("name", None)
    if name not in names:
        raise ValueError(f"cfg.model.name must be one of {sorted(names)} for {cls.__name__}, got {name!r}")
    for key in drop:
        fields.pop(key, None)
    if fields.get("scan_unroll") == -1:  # "auto": settled per platform by `create`
        fields.pop("scan_unroll")
    if "scale" in cls.__dataclass_fields__:
        fixed.setdefault("scale", int(cfg.scale))
    allowed = {f for f in cls.__dataclass_fields__ if f not in ("parent", "name", *fixed)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"unknown cfg.model fields for {name}: {unknown}; valid: {sorted(allowed)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return cls(**fields, **fixed)
