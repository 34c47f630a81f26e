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
import math
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class ConfigMismatchError(ValueError):
    """The checkpoint was written by a different config (not damage: never skipped)."""


class NoCheckpointError(FileNotFoundError):
    """The directory holds no checkpoint at all."""


def fingerprint(cfg, params) -> dict[str, Any]:
    shapes = {jax.tree_util.keystr(path): list(leaf.shape)
              for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    return {
        "model": json.loads(cfg.model.to_json_best_effort()),
        "scale": int(cfg.scale),
        "degradation": json.loads(cfg.degradation.to_json_best_effort()),
        "num_params": int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))),
        "param_shapes_digest": hashlib.sha1(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16],
        "param_shapes": shapes,
    }


# Config keys added after checkpoints were written, with the value that does what a checkpoint
# without the key did: such a checkpoint matches a config that has that value.
ADDED_KEYS = {"degradation.round_lr": False, "degradation.kernel_noise_mode": "symmetric"}


def _diff(saved: dict, current: dict, prefix="") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a == "<absent>" and f"{prefix}{key}" in ADDED_KEYS and ADDED_KEYS[f"{prefix}{key}"] == b:
            continue
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint has {a!r}, config has {b!r}")
    return out


def check_fingerprint(where: str, saved: dict, current: dict | None) -> None:
    """Raise `ConfigMismatchError` naming what differs between a checkpoint's fingerprint and
    the current config's (nothing to check when `current` is None)."""
    if current is None:
        return
    diffs = _diff({k: v for k, v in saved.items() if k != "param_shapes"},
                  {k: v for k, v in current.items() if k != "param_shapes"})
    if diffs:
        raise ConfigMismatchError(
            f"checkpoint {where} was written by a different config:\n  "
            + "\n  ".join(diffs[:20]) + "\nUse a new --workdir or the matching config.")


def restore_params(directory: str, abstract_params, current_meta: dict | None = None, step: int | None = None):
    """(params, step): only the `params` of the training state saved at `step` (default: the
    latest) in `directory`, for eval and infer. No optimizer is built and the optimizer state,
    data position and PRNG key are not read (a partial restore of the saved tree).

    `current_meta` (`fingerprint(cfg, abstract_params)`) is checked against the checkpoint's
    before the parameters are read. Raises `NoCheckpointError` (a FileNotFoundError) when the
    directory holds no checkpoint."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise NoCheckpointError(f"no checkpoint found in {directory}")
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise NoCheckpointError(f"no checkpoint found in {directory}")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        check_fingerprint(f"{directory}/{step}", meta, current_meta)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                         abstract_params)}
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
    finally:
        manager.close()
    return restored["state"]["params"], step


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
        check_fingerprint(f"{self.directory}/{step}", meta, current_meta)
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
