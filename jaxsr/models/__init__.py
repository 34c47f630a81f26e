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
