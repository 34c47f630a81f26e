"""A non-finite step rolls training back to the last good checkpoint (train.nan_rollbacks times);
past that it stops with a clear error and leaves the last checkpoint good."""
import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest

from jaxsr import checkpoints, config_lib, experiment, train

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    cfg = config_lib.load(REPO / "configs" / "dan.py:tiny")
    # Adam moves every weight by ~lr on the first step: 1e30 overflows the next forward pass.
    cfg.train.update(dict(learning_rate=1e30, steps=5, log_every=1, checkpoint_every=1, eval_every=100,
                          async_checkpoints=False, nan_rollbacks=1))
    # rolled back once to step 1, step 2 fails again: the error stands
    with pytest.raises(train.NonFiniteLossError,
                       match=r"non-finite loss at step 2.*step 1\) is intact.*1 of train.nan_rollbacks=1"):
        train.train_and_evaluate(cfg, str(tmp_path))
    ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    assert ckpt.latest_step() == 1
    abstract = train.build_program(experiment.resolve(cfg)).abstract_state
    state, data_state, _ = ckpt.restore(1, abstract)
    ckpt.close()
    assert int(state.step) == 1 and data_state
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_nonfinite_step_rolls_back_and_training_finishes(tmp_path, monkeypatch, capsys):
    """A step that goes non-finite (its parameters poisoned with NaN, as an overflow would leave
    them) rolls the run back to the last good checkpoint; the data moves on, the run finishes, the
    metrics name the rollback, and the final checkpoint is finite."""
    cfg = config_lib.load(REPO / "configs" / "dan.py:tiny")
    cfg.train.update(dict(steps=8, log_every=1, checkpoint_every=2, eval_every=100, async_checkpoints=False,
                          nan_rollbacks=1))
    build_program, calls = train.build_program, []

    def poisoning_build_program(exp, devices=None, **kwargs):
        program = build_program(exp, devices, **kwargs)
        step = program.jitted

        def run(state, hr):
            calls.append(int(state.step))
            if len(calls) == 5:  # the fifth step runs from NaN parameters
                state = state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
            return step(state, hr)

        return dataclasses.replace(program, jitted=run)

    monkeypatch.setattr(train, "build_program", poisoning_build_program)
    train.train_and_evaluate(cfg, str(tmp_path))
    assert "Rolled back to step 4 (rollback 1 of 1)" in capsys.readouterr().out
    assert calls == [0, 1, 2, 3, 4, 4, 5, 6, 7]  # step 5 again from the step-4 checkpoint
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if line.strip()]
    assert any(r.get("nan_rollbacks") == 1 and r.get("nan_rollback_from_step") == 5 for r in rows)
    ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    abstract = train.build_program(experiment.resolve(cfg)).abstract_state
    state, data_state, _ = ckpt.restore(8, abstract)
    ckpt.close()
    assert int(state.step) == 8 and data_state["next_index"] == 9  # 9 batches drawn: none replayed
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
