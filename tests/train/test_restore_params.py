"""Eval / infer restore only the parameters of a training checkpoint (`predict.restore_params`):
no optimizer is built, and a checkpoint of another config still fails with the fingerprint's
clear message."""
import pathlib

import jax
import numpy as np
import pytest

from jaxsr import checkpoints, config_lib, experiment, predict, train

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A dan:tiny training state (params, Adam state, step 3) saved as training saves it."""
    workdir = tmp_path_factory.mktemp("run")
    exp = experiment.resolve(config_lib.load(REPO / "configs" / "dan.py:tiny"))
    cfg = exp.cfg
    state = train.build_program(exp).init_state()
    state = state.replace(params=jax.tree.map(lambda x: x + 0.25, state.params))  # not the init values
    ckpt = checkpoints.Checkpointer(str(workdir / "checkpoints"), async_save=False)
    ckpt.save(3, state, {"pos": 0}, checkpoints.fingerprint(cfg, state.params), force=True)
    ckpt.close()
    return cfg, workdir, state


def test_restores_the_saved_params_without_building_an_optimizer(saved, monkeypatch):
    cfg, workdir, state = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("restoring for eval/infer built an optimizer or a train state")

    monkeypatch.setattr(train, "make_optimizer", forbidden)
    monkeypatch.setattr(train, "create_train_state", forbidden)
    _, params, step = predict.restore_params(cfg, str(workdir))
    assert step == 3
    assert jax.tree.structure(params) == jax.tree.structure(state.params)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        assert isinstance(got, jax.Array)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_checkpoint_of_another_config_fails_clearly(saved):
    cfg, workdir, _ = saved
    other = config_lib.load(REPO / "configs" / "dan.py:tiny")
    other.model.restorer_features = other.model.restorer_features * 2
    with pytest.raises(checkpoints.ConfigMismatchError, match="(?s)different config.*restorer_features"):
        predict.restore_params(other, str(workdir))


def test_no_checkpoint_says_train_first(tmp_path):
    cfg = config_lib.load(REPO / "configs" / "dan.py:tiny")
    with pytest.raises(FileNotFoundError, match="no checkpoint found .*train first"):
        predict.restore_params(cfg, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # looking created nothing


def test_a_checkpoint_from_before_an_added_key_matches_its_old_behaviour():
    """degradation.round_lr / kernel_noise_mode came after checkpoints were written: a fingerprint
    without them matches a config with their old behaviour (False / "symmetric"), and only that."""
    cfg = config_lib.load(REPO / "configs" / "dan.py:tiny")
    params = {"w": np.zeros((2, 3), np.float32)}
    old = checkpoints.fingerprint(cfg, params)
    del old["degradation"]["round_lr"], old["degradation"]["kernel_noise_mode"]
    checkpoints.check_fingerprint("old", old, checkpoints.fingerprint(cfg, params))
    cfg.degradation.round_lr = True
    with pytest.raises(checkpoints.ConfigMismatchError, match="degradation.round_lr: checkpoint has '<absent>'"):
        checkpoints.check_fingerprint("old", old, checkpoints.fingerprint(cfg, params))
