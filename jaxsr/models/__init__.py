"""Flax models, one file per system; shared blocks in `layers.py`.

`REGISTRY` maps `cfg.model.name` to the module that implements it. Each such module exposes
`create_model(cfg, pca_matrix=None) -> flax.linen.Module` and
`compute_loss(outputs, batch, cfg) -> (loss, metrics)`; the single training loop in
`jaxsr.train` needs nothing else.
"""
from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY: dict[str, str] = {
    "danv1": "jaxsr.models.dan",
    "danv2": "jaxsr.models.dan",
    "dssr": "jaxsr.models.dssr",
    "kxnet": "jaxsr.models.kxnet",
    "kenet": "jaxsr.models.kenet",
    "usrnet": "jaxsr.models.usrnet",
}


def get(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise ValueError(f"unknown model name {name!r}; known: {sorted(REGISTRY)}")
    return importlib.import_module(REGISTRY[name])


def module_from_config(cls, cfg, *, names: tuple[str, ...], drop: tuple[str, ...] = (), **fixed):
    """`cls(**cfg.model fields, **fixed)` for the training-loop API's `create_model`.

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
    if "scale" in cls.__dataclass_fields__:
        fixed.setdefault("scale", int(cfg.scale))
    allowed = {f for f in cls.__dataclass_fields__ if f not in ("parent", "name", *fixed)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"unknown cfg.model fields for {name}: {unknown}; valid: {sorted(allowed)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return cls(**fields, **fixed)
