"""A non-finite loss stops training with a clear error and leaves the last checkpoint good."""
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
                          async_checkpoints=False))
    with pytest.raises(train.NonFiniteLossError, match=r"non-finite loss at step 2.*step 1\) is intact"):
        train.train_and_evaluate(cfg, str(tmp_path))
    ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    assert ckpt.latest_step() == 1
    abstract = train.build_program(experiment.resolve(cfg)).abstract_state
    state, data_state, _ = ckpt.restore(1, abstract)
    ckpt.close()
    assert int(state.step) == 1 and data_state
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
