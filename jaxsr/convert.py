"""Command line: convert an official PyTorch checkpoint into jaxsr's Flax parameters.

    python -m jaxsr.convert --arch danv1 --scale 4 --input DANx4.pth --output DIR

writes `params.msgpack` (`flax.serialization`), the PCA as `pca.npz` (key `matrix`) when the
checkpoint carries one, and the model settings as `model.json`. Each model file declares how
its official keys map (`OfficialMap`); `jaxsr.torch_import` does the generic reading and
checking, and `jaxsr.predict.load_official` builds the model. torch is needed only here.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from jaxsr import models, predict



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
    parser.add_argument("--arch", required=True, choices=models.with_official_checkpoints())
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
    model, params, extras = predict.load_official(args.input, models.get(args.arch), cfg)
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
