"""The generic half of importing official PyTorch checkpoints; each model file owns its half.

A model file describes its official checkpoint layout with an `OfficialMap`: a key map
(official state-dict key -> (Flax parameter path, transform)) built from the module's own
fields, the non-parameter buffers the checkpoint carries and what they mean. This module
knows nothing about any architecture: it reads `.pth` files, applies the transforms and
checks a state dict against a map, failing with one `ValueError` that names every missing,
unexpected and mis-shaped key.

It imports no model file (the models import it), and torch only inside `read_torch_checkpoint`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import platform

# How an official tensor becomes a Flax leaf.
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: np.transpose(w, (2, 3, 1, 0)),   # OIHW -> HWIO
    "linear": lambda w: np.transpose(w, (1, 0)),       # (out, in) -> (in, out)
    "identity": lambda w: w,
}
_SHAPE_TRANSFORMS: dict[str, Callable[[tuple], tuple]] = {
    "conv": lambda s: (s[2], s[3], s[1], s[0]) if len(s) == 4 else None,
    "linear": lambda s: (s[1], s[0]) if len(s) == 2 else None,
    "identity": lambda s: tuple(s),
}

KeyMap = dict[str, tuple[tuple[str, ...], str]]


def conv_keys(torch_module: str, flax_path: tuple[str, ...]) -> KeyMap:
    """The weight and bias of one official `nn.Conv2d` -> the Flax conv at `flax_path`."""
    return {f"{torch_module}.weight": (flax_path + ("kernel",), "conv"),
            f"{torch_module}.bias": (flax_path + ("bias",), "identity")}


def traced_param_shapes(model):
    """The params shape tree from `model.init` on a small LR, traced without computing anything.
    The LR is large enough for the model's kernel at its scale (KXNet pads by k // 2 in HR)."""
    side = max(8, getattr(model, "kernel_size", 0) // (2 * getattr(model, "scale", 1)) + 1)
    return platform.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, model.channels), jnp.float32)))["params"]


def no_buffers(model) -> dict[str, tuple[int, ...]]:
    del model
    return {}


def no_extras(buffers: Mapping[str, np.ndarray]) -> dict[str, Any]:
    del buffers
    return {}


def unchanged(model, extras):
    """`OfficialMap.prepare` for models whose structure the checkpoint's buffers do not change."""
    del extras
    return model


@dataclasses.dataclass(frozen=True)
class OfficialMap:
    """How one architecture's official checkpoints map onto its Flax module."""
    key_map: Callable[[Any], KeyMap]                                              # model -> key map
    buffers: Callable[[Any], dict[str, tuple[int, ...]]] = no_buffers             # model -> buffer shapes
    extras: Callable[[Mapping[str, np.ndarray]], dict[str, Any]] = no_extras      # buffers -> extras
    prepare: Callable[[Any, Mapping[str, Any]], Any] = unchanged                  # (model, extras) -> model
    param_shapes: Callable[[Any], Any] = traced_param_shapes                      # model -> shape tree
    # (state dict, model) -> state dict in the key map's layout (e.g. KXNet's per-stage keys stacked)
    prepare_state_dict: Callable[[Mapping[str, np.ndarray], Any], Mapping[str, np.ndarray]] | None = None


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, np.ndarray]:
    """Numpy copy of `state_dict` with a DataParallel `module.` prefix removed."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): _to_numpy(v) for k, v in state_dict.items()}


def _flat_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def _expected_torch_shape(flax_shape: tuple[int, ...], how: str) -> tuple[int, ...]:
    if how == "conv":
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if how == "linear":
        return tuple(reversed(flax_shape))
    return flax_shape


def convert_state_dict(state_dict: Mapping[str, Any], model, official: OfficialMap
                       ) -> tuple[dict, dict[str, Any]]:
    """Official state dict -> (Flax `params` tree for `model`, extras such as `pca_matrix`).

    `model` fixes the structure (widths, block counts, scale); `official` is its file's map
    (`jaxsr.models.get(name).official`). Raises `ValueError` listing every missing,
    unexpected and mis-shaped key.
    """
    sd = strip_prefix(state_dict)
    if official.prepare_state_dict is not None:
        sd = dict(official.prepare_state_dict(sd, model))
    key_map = official.key_map(model)
    buffer_shapes = official.buffers(model)
    extras = official.extras({k: v for k, v in sd.items() if k in buffer_shapes})

    shapes = _flat_shapes(official.param_shapes(official.prepare(model, extras)))

    mapped = {path for path, _ in key_map.values()}
    if mapped != set(shapes):  # a bug in the key map, not in the checkpoint
        raise RuntimeError(f"key map for {type(model).__name__} out of sync with the module: "
                           f"unmapped {sorted(set(shapes) - mapped)}, stale {sorted(mapped - set(shapes))}")

    missing = sorted(set(key_map) - set(sd))
    unexpected = sorted(set(sd) - set(key_map) - set(buffer_shapes))
    misshaped = []
    for key, value in sd.items():
        if key in key_map:
            path, how = key_map[key]
            got = _SHAPE_TRANSFORMS[how](value.shape)
            if got != shapes[path]:
                misshaped.append(f"{key}: checkpoint {tuple(value.shape)}, expected "
                                 f"{_expected_torch_shape(shapes[path], how)}")
        elif key in buffer_shapes and tuple(value.shape) != buffer_shapes[key]:
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)}, expected {buffer_shapes[key]}")
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not match {type(model).__name__}(scale={getattr(model, 'scale', '-')}):"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise ValueError("\n".join(lines))

    params: dict = {}
    for key, (path, how) in key_map.items():
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.asarray(TRANSFORMS[how](sd[key]), np.float32)
    return params, extras


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """A .pth state dict as NumPy arrays (torch imported here only)."""
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading .pth checkpoints needs PyTorch: pip install 'jaxsr[torch]'") from err
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    return strip_prefix(obj)
