"""Training and validation data: image lists (``datasets``), the grain pipeline
(``pipeline``), prepared HR stores (``store``, ``python -m jaxsr.data.prepare``) and the
start-up file checks (``filecheck``).

Names are imported on first use, so that the decoding processes of ``prepare`` (which
import ``jaxsr.data.prepare``) load neither grain nor JAX.
"""
import importlib

_EXPORTS = {
    "BUNDLED": "datasets",
    "bundled_photo_paths": "datasets",
    "image_size": "datasets",
    "read_rgb_uint8": "datasets",
    "resolve_image_paths": "datasets",
    "load_validation_set": "pipeline",
    "make_train_dataset": "pipeline",
    "restore_iterator_state": "pipeline",
    "save_iterator_state": "pipeline",
    "shard_paths": "pipeline",
    "is_store": "store",
    "prepare_store": "prepare",
}

_SUBMODULES = ("datasets", "filecheck", "pipeline", "prepare", "store")

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxsr.data.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jaxsr.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxsr.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
