"""Orbax checkpoints of the whole training state: params, optimizer, step, PRNG key, and the
data iterator's position, so a resumed run continues exactly where it stopped.

Orbax writes each step into a temporary directory and renames it only when complete, so a
crash or SIGKILL mid-save leaves the previous checkpoints intact (the partial one is ignored).
A fingerprint of the config (model, scale, degradation, parameter shapes) is saved beside the
state; restoring under a different config fails with a message naming what differs.

A checkpoint damaged after it was written (a disk fault, a half-synced copy) is not trusted:
`restore_latest` falls back to the newest one that restores, moves the damaged ones aside into
`<directory>.damaged/` (nothing is deleted) and says so; with checkpoints present it never
silently starts from step 0.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class ConfigMismatchError(ValueError):
    """The checkpoint was written by a different config (not damage: never skipped)."""


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
                raise ConfigMismatchError(
                    f"checkpoint {self.directory}/{step} was written by a different config:\n  "
                    + "\n  ".join(diffs[:20]) + "\nUse a new --workdir or the matching config.")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"], meta

    def restore_latest(self, abstract_state, current_meta: dict | None = None, log=print):
        """(state, data_state, meta, step) of the newest checkpoint that restores, or None when
        there is none. Damaged newer ones are moved to `<directory>.damaged/` with a message."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                return (*self.restore(step, abstract_state, current_meta), step)
            except ConfigMismatchError:
                raise
            except Exception as err:  # noqa: BLE001 - any read/parse/shape error means "damaged"
                reason = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
                failures.append(f"step {step}: {reason}")
                log(f"checkpoint {self.directory}/{step} cannot be restored ({reason}); "
                    f"moving it to {self.directory}.damaged/ and trying the previous one")
                self._set_aside(step)
        if failures:
            raise RuntimeError(
                f"no checkpoint in {self.directory} can be restored, so training will not silently restart "
                f"from step 0. The damaged ones are in {self.directory}.damaged/:\n  " + "\n  ".join(failures)
                + "\nRestore a good copy, or use a new --workdir to start over.")
        return None

    def _set_aside(self, step: int) -> None:
        """Move a damaged step out of Orbax's view (a later save may reuse the step number)."""
        multihost_utils.sync_global_devices(f"jaxsr damaged checkpoint {step}")  # every host done reading
        if jax.process_index() == 0:
            target = f"{self.directory}.damaged"
            os.makedirs(target, exist_ok=True)
            name, n = os.path.join(target, str(step)), 1
            while os.path.exists(name):
                name, n = os.path.join(target, f"{step}.{n}"), n + 1
            os.replace(os.path.join(self.directory, str(step)), name)
        multihost_utils.sync_global_devices(f"jaxsr damaged checkpoint {step} moved")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
