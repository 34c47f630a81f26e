"""`train.profile_steps`: an XLA profiler trace of a window of training steps in WORKDIR/profile."""
import pathlib

import pytest

from jaxsr import config_lib, train

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value, window", [("", None), ("3,2", (3, 2)), (" 0 , 1 ", (0, 1))])
def test_profile_window_parses(value, window):
    cfg = config_lib.load(REPO / "configs" / "dan.py:tiny")
    cfg.train.profile_steps = value
    assert train.profile_window(cfg) == window


@pytest.mark.parametrize("value", ["3", "a,b", "3,0", "-1,2", "1,2,3"])
def test_bad_profile_window_names_the_key(value):
    cfg = config_lib.load(REPO / "configs" / "dan.py:tiny")
    cfg.train.profile_steps = value
    with pytest.raises(ValueError, match="train.profile_steps"):
        train.profile_window(cfg)


def test_training_writes_a_profile_of_the_window(tmp_path):
    cfg = config_lib.load(REPO / "configs" / "dan.py:tiny")
    cfg.train.update(dict(steps=4, log_every=2, checkpoint_every=4, eval_every=100, async_checkpoints=False,
                          profile_steps="1,2"))
    train.train_and_evaluate(cfg, str(tmp_path))
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
