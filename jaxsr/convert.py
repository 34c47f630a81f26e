"""Import official PyTorch checkpoints into jaxsr's Flax parameter trees.

Each architecture registers a key map: official state-dict key -> (Flax parameter path,
transform), built from the Flax module's own fields, plus a handler for the non-parameter
buffers the checkpoint carries (DAN: the PCA `encoder`). `convert_state_dict` checks the
checkpoint against that map and fails with one `ValueError` naming every missing,
unexpected and mis-shaped key.

CLI (writes `params.msgpack` with `flax.serialization`, the PCA as `pca.npz` with key
`matrix` and the model settings as `model.json`):

    python -m jaxsr.convert --arch danv1 --scale 4 --input DANx4.pth --output DIR

torch is needed only to read .pth files and is imported lazily.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.models import dan, dssr, kxnet, usrnet

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


def _conv(torch_module: str, flax_path: tuple[str, ...]) -> KeyMap:
    return {f"{torch_module}.weight": (flax_path + ("kernel",), "conv"),
            f"{torch_module}.bias": (flax_path + ("bias",), "identity")}


# ----------------------------------------------------------------------------- DAN key maps
def _upsampler_map(torch_prefix: str, flax_prefix: tuple[str, ...], scale: int,
                   sequential_at_x1: bool) -> KeyMap:
    up = flax_prefix + ("upsampler",)
    if scale == 1 and not sequential_at_x1:          # DANv2 x1: a bare conv
        return _conv(torch_prefix, up + ("tail",))
    stages = 2 if scale == 4 else 1                  # conv, shuffle[, conv, shuffle], conv
    out: KeyMap = {}
    for i in range(stages):
        out |= _conv(f"{torch_prefix}.{2 * i}", up + (f"up_{i}",))
    return out | _conv(f"{torch_prefix}.{2 * stages}", up + ("tail",))


def _crb_map(torch_prefix: str, flax_path: tuple[str, ...]) -> KeyMap:
    # official CRB body: [conv, LReLU, conv, CA]; CA body: [conv, LReLU, conv, Sigmoid]
    return (_conv(f"{torch_prefix}.body.0", flax_path + ("conv1",))
            | _conv(f"{torch_prefix}.body.2", flax_path + ("conv2",))
            | _conv(f"{torch_prefix}.body.3.body.0", flax_path + ("ca", "squeeze"))
            | _conv(f"{torch_prefix}.body.3.body.2", flax_path + ("ca", "excite")))


def _dpcg_map(torch_prefix: str, flax_path: tuple[str, ...], num_blocks: int) -> KeyMap:
    out: KeyMap = {}
    for b in range(num_blocks):
        t, f = f"{torch_prefix}.body.{b}", flax_path + (f"block_{b}",)
        out |= (_conv(f"{t}.body1.0", f + ("main_conv1",)) | _conv(f"{t}.body1.2", f + ("main_conv2",))
                | _conv(f"{t}.body2.0", f + ("cond_conv1",)) | _conv(f"{t}.body2.2", f + ("cond_conv2",)))
    return out


def danv1_key_map(model: dan.DANv1) -> KeyMap:
    r, e = ("restorer",), ("estimator",)
    out = _conv("Restorer.head", r + ("head",))
    for i in range(model.restorer_blocks):
        out |= _crb_map(f"Restorer.body.{i}", r + (f"block_{i}",))
    out |= _conv("Restorer.fusion", r + ("fusion",))
    out |= _upsampler_map("Restorer.upscale", r, model.scale, sequential_at_x1=True)
    out |= _conv("Estimator.head_LR", e + ("head_lr",)) | _conv("Estimator.head_HR", e + ("head_hr",))
    for i in range(model.estimator_blocks):
        out |= _crb_map(f"Estimator.body.{i}", e + (f"block_{i}",))
    return out | _conv("Estimator.out", e + ("out",))


def danv2_key_map(model: dan.DANv2) -> KeyMap:
    r, e = ("restorer",), ("estimator",)
    out = _conv("Restorer.head1", r + ("head_image",)) | _conv("Restorer.head2", r + ("head_code",))
    for g in range(model.restorer_groups):
        out |= _dpcg_map(f"Restorer.body.{g}", r + (f"group_{g}",), model.restorer_blocks)
    out |= _conv("Restorer.fusion", r + ("fusion",))
    out |= _upsampler_map("Restorer.upscale", r, model.scale, sequential_at_x1=False)
    out |= _conv("Estimator.head_LR.0", e + ("head_lr",)) | _conv("Estimator.head_HR.0", e + ("head_hr",))
    out |= _dpcg_map("Estimator.body", e + ("body",), model.estimator_blocks)
    return out | _conv("Estimator.tail.0", e + ("tail_conv",)) | _conv("Estimator.tail.2", e + ("tail_kernel",))


def dan_buffers(model: dan._DAN) -> dict[str, tuple[int, ...]]:
    """Buffers the official DAN checkpoints store, with their expected shapes."""
    k, n = model.kernel_size, model.code_length
    return {"encoder": (1, k * k, n), "init_kernel": (1, k, k), "init_ker_map": (1, n)}


def dan_extras(buffers: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The PCA projection: the official `encoder` is (1, k*k, n) with code = flat(k) @ encoder,
    i.e. already jaxsr's (k*k, n) orientation; no transpose needed."""
    return {"pca_matrix": np.asarray(buffers["encoder"][0], np.float32)} if "encoder" in buffers else {}


def dan_prepare(model: dan._DAN, extras: Mapping[str, Any]) -> dan._DAN:
    """The model to trace parameter shapes with: it gets the checkpoint's PCA when there is one."""
    matrix = extras.get("pca_matrix")
    if matrix is not None and matrix.shape == (model.kernel_size ** 2, model.code_length):
        if model.pca_matrix is not None and not np.allclose(model.pca_matrix.array, matrix, atol=1e-6):
            warnings.warn("the model's pca_matrix differs from the checkpoint's encoder buffer; its outputs "
                          "will not match the official model unless it is rebuilt with extras['pca_matrix']")
        return model.clone(pca_matrix=matrix)
    if model.pca_matrix is None:  # any matrix of the right shape will do for tracing shapes
        return model.clone(pca_matrix=np.zeros((model.kernel_size ** 2, model.code_length), np.float32))
    return model


def traced_param_shapes(model):
    """The params shape tree from `model.init` on a small LR, traced without computing anything.
    The LR is large enough for the model's kernel at its scale (KXNet pads by k // 2 in HR)."""
    side = max(8, getattr(model, "kernel_size", 0) // (2 * getattr(model, "scale", 1)) + 1)
    lr = jax.ShapeDtypeStruct((1, side, side, model.channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), lr)["params"]


def unchanged(model, extras):
    """`Arch.prepare` for models whose structure the checkpoint's buffers do not change."""
    del extras
    return model


@dataclasses.dataclass(frozen=True)
class Arch:
    """What the converter needs to know about one architecture."""
    model_type: type
    key_map: Callable[[Any], KeyMap]                                  # model -> torch key -> Flax leaf
    buffers: Callable[[Any], dict[str, tuple[int, ...]]]              # model -> buffer key -> shape
    extras: Callable[[Mapping[str, np.ndarray]], dict[str, Any]]      # buffers -> extras
    prepare: Callable[[Any, Mapping[str, Any]], Any] = unchanged      # (model, extras) -> model to trace
    param_shapes: Callable[[Any], Any] = traced_param_shapes          # model -> params shape tree
    # (state dict, model) -> state dict in the key map's layout (e.g. KXNet's per-stage keys stacked)
    prepare_state_dict: Callable[[Mapping[str, np.ndarray], Any], Mapping[str, np.ndarray]] | None = None


ARCHS: dict[str, Arch] = {
    "danv1": Arch(dan.DANv1, danv1_key_map, dan_buffers, dan_extras, dan_prepare),
    "danv2": Arch(dan.DANv2, danv2_key_map, dan_buffers, dan_extras, dan_prepare),
    "kxnet": Arch(kxnet.KXNet, kxnet.official_key_map, kxnet.official_buffers, kxnet.official_extras,
                  prepare_state_dict=kxnet.stack_official_stages),
    "dssr": Arch(dssr.DSSR, dssr.official_key_map, dssr.official_buffers, dssr.official_extras),
    "usrnet": Arch(usrnet.USRNet, usrnet.official_key_map, usrnet.official_buffers, usrnet.official_extras),
}


# ----------------------------------------------------------------------------- generic part
def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, np.ndarray]:
    """Numpy copy of `state_dict` with a DataParallel `module.` prefix removed."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): _to_numpy(v) for k, v in state_dict.items()}


def arch_of(model) -> str:
    for name, arch in ARCHS.items():
        if type(model) is arch.model_type:
            return name
    raise ValueError(f"no checkpoint key map for {type(model).__name__}; known: {sorted(ARCHS)}")


def _flat_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def convert_state_dict(state_dict: Mapping[str, Any], model, arch: str | None = None
                       ) -> tuple[dict, dict[str, Any]]:
    """Official state dict -> (Flax `params` tree for `model`, extras such as `pca_matrix`).

    `model` fixes the structure (widths, block counts, scale). Raises `ValueError` listing
    every missing, unexpected and mis-shaped key.
    """
    spec = ARCHS[arch or arch_of(model)]
    sd = strip_prefix(state_dict)
    if spec.prepare_state_dict is not None:
        sd = dict(spec.prepare_state_dict(sd, model))
    key_map = spec.key_map(model)
    buffer_shapes = spec.buffers(model)
    extras = spec.extras({k: v for k, v in sd.items() if k in buffer_shapes})

    shapes = _flat_shapes(spec.param_shapes(spec.prepare(model, extras)))

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
        lines = [f"checkpoint does not match {type(model).__name__}(scale={model.scale}):"]
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


def _expected_torch_shape(flax_shape: tuple[int, ...], how: str) -> tuple[int, ...]:
    if how == "conv":
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if how == "linear":
        return tuple(reversed(flax_shape))
    return flax_shape


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


def load_official_checkpoint(path: str, cfg):
    """Reads an official .pth and returns (model, params, extras).

    The model comes from the registry's `create_model(cfg)`; a DAN model uses the checkpoint's
    PCA matrix when it carries one (so cfg needs no pca_path for DAN checkpoints).
    """
    from jaxsr import models

    sd = read_torch_checkpoint(path)
    name = cfg.model.name
    if name not in ARCHS:
        raise ValueError(f"cfg.model.name must be one of {sorted(ARCHS)} to import a checkpoint, got {name!r}")
    matrix = ARCHS[name].extras(strip_prefix(sd)).get("pca_matrix")
    lib = models.get(name)
    model = lib.create_model(cfg, pca_matrix=matrix) if matrix is not None else lib.create_model(cfg)
    params, extras = convert_state_dict(sd, model, name)
    return model, params, extras


# ----------------------------------------------------------------------------- CLI
def _parse_fields(items: list[str]) -> dict[str, Any]:
    fields = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--field expects name=value, got {item!r}")
        name, raw = item.split("=", 1)
        try:
            fields[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            fields[name] = raw
    return fields


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert an official PyTorch checkpoint to Flax params.")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--input", required=True, help="official .pth state dict")
    parser.add_argument("--output", required=True, help="directory to write params.msgpack, pca.npz, model.json")
    parser.add_argument("--field", action="append", default=[],
                        help="model field override, e.g. --field restorer_blocks=40 (repeatable)")
    args = parser.parse_args(argv)

    import flax.serialization
    import ml_collections

    fields = _parse_fields(args.field)
    cfg = ml_collections.ConfigDict({"scale": args.scale, "model": {"name": args.arch, **fields}})
    model, params, extras = load_official_checkpoint(args.input, cfg)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "params.msgpack"), "wb") as f:
        f.write(flax.serialization.to_bytes({"params": params}))
    if "pca_matrix" in extras:
        np.savez(os.path.join(args.output, "pca.npz"), matrix=extras["pca_matrix"])
    settings = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                if f.name not in ("parent", "name", "pca_matrix")}
    with open(os.path.join(args.output, "model.json"), "w") as f:
        json.dump({"name": args.arch, **settings}, f, indent=2)
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    print(f"wrote {args.output}: {count:,} parameters ({args.arch} x{args.scale})")


if __name__ == "__main__":
    main()
