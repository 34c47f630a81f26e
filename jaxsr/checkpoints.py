"""Orbax checkpoints of the whole training state: params, optimizer, step, PRNG key, and the
data iterator's position, so a resumed run continues exactly where it stopped.

Orbax writes each step into a temporary directory and renames it only when complete, so a
crash or SIGKILL mid-save leaves the previous checkpoints intact (the partial one is ignored).
A fingerprint of the config (model, scale, degradation, parameter shapes) is saved beside the
state; restoring under a different config fails with a message naming what differs.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def fingerprint(cfg, params) -> dict[str, Any]:
    shapes = {jax.tree_util.keystr(path): list(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    return {
        "model": json.loads(cfg.model.to_json_best_effort()),
        "scale": int(cfg.scale),
        "degradation": json.loads(cfg.degradation.to_json_best_effort()),
        "num_params": int(sum(int(jax.numpy.size(x)) for x in jax.tree.leaves(params))),
        "param_shapes_digest": hashlib.sha1(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16],
        "param_shapes": shapes,
    }


def _diff(saved: dict, current: dict, prefix="") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint has {a!r}, config has {b!r}")
    return out


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the three items jaxsr saves."""

    def __init__(self, directory: str, *, keep: int = 3, save_every: int = 1000, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every, enable_async_checkpointing=async_save,
            create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict, *, force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, step: int, abstract_state, current_meta: dict | None = None):
        """Returns (state, data_state, meta); checks the fingerprint first when given."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if current_meta is not None:
            diffs = _diff({k: v for k, v in meta.items() if k != "param_shapes"},
                          {k: v for k, v in current_meta.items() if k != "param_shapes"})
            if diffs:
                raise ValueError(
                    f"checkpoint {self.directory}/{step} was written by a different config:\n  "
                    + "\n  ".join(diffs[:20]) + "\nUse a new --workdir or the matching config.")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"], meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
