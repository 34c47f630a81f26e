"""Config validation fails before compilation and names the key."""
import pathlib

import pytest

from jaxsr import config_lib, experiment, predict, train

REPO = pathlib.Path(__file__).resolve().parents[2]


def module(name):
    return config_lib.load_module(REPO / "configs" / f"{name}.py")


def load(name, variant):
    return module(name).get_config(variant)


CONFIG_FILES = sorted(p.stem for p in (REPO / "configs").glob("*.py"))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_variant_of_every_config_validates(name):
    mod = module(name)
    variants = mod.VARIANTS
    assert {"tiny", "cpu"} <= set(variants), f"configs/{name}.py needs tiny and cpu variants"
    for variant in variants:
        cfg = mod.get_config(variant)
        config_lib.validate(cfg)
        if "kernel_size" in cfg.model:
            assert config_lib.degradation_spec(cfg).kernel_size == cfg.model.kernel_size, variant


def test_paper_settings_are_the_papers():
    cfg = load("dan", "setting1_x4")
    assert (cfg.data.batch_size, cfg.data.patch_size, cfg.train.steps) == (64, 64, 400_000)
    assert (cfg.train.b1, cfg.train.b2, cfg.train.learning_rate) == (0.9, 0.99, 2e-4)
    assert tuple(cfg.train.lr_milestones) == (100_000, 200_000, 300_000) and cfg.train.lr_gamma == 0.5
    assert config_lib.degradation_spec(cfg).sigma_range == (0.2, 4.0)
    assert config_lib.degradation_spec(load("dan", "setting1_x2")).sigma_range == (0.2, 2.0)
    assert config_lib.degradation_spec(load("dan", "setting2_x2")).kernel_size == 11


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown config variant 'x9'.*setting1_x4"):
        load("dan", "x9")


@pytest.mark.parametrize("key, value, match", [
    ("scale", 5, "config key scale"),
    ("data.patch_size", 0, "data.patch_size"),
    ("degradation.preset", "setting9", "degradation.preset"),
    ("model.kernel_size", 15, "model.kernel_size"),
    ("model.name", "srcnn", "model.name"),
    ("train.steps", 0, "train.steps"),
])
def test_invalid_values_name_the_key(key, value, match):
    """`experiment.resolve`, the one check train, eval, infer and aot run, names the key."""
    check = experiment.resolve
    cfg = load("dan", "tiny")
    section, _, field = key.rpartition(".")
    (cfg[section] if section else cfg)[field] = value
    with pytest.raises(ValueError, match=match):
        check(cfg, num_devices=4)


def test_missing_data_folder_names_key(tmp_path):
    cfg = load("dan", "tiny")
    cfg.data.train_dirs = (str(tmp_path / "nope"),)
    with pytest.raises(ValueError, match="data.train_dirs.*nope"):
        train.train_and_evaluate(cfg, str(tmp_path / "wd"))


# ----------------------------------------------------------------------------- CPU-backend guard
PAPER_VARIANTS = [("dan", "setting1_x4"), ("danv2", "setting2_x2"), ("kxnet", "setting2_x4"), ("dssr", "setting1_x3"),
                  ("kenet", "x4"), ("usrnet", "kenet_x4")]


@pytest.mark.parametrize("name, variant", PAPER_VARIANTS)
def test_paper_variant_refuses_to_train_on_cpu(name, variant):
    from jaxsr import cli
    cfg = load(name, variant)
    with pytest.raises(SystemExit, match=r"(?s)paper-scale run.*pip install -e '\.\[cuda12\]'.*"
                                         r"pip install -e '\.\[tpu\]'.*require_accelerator=False"):
        cli.check_backend(cfg, "train", backend="cpu")
    for mode in ("eval", "infer"):  # CPU is fine for these
        cli.check_backend(cfg, mode, backend="cpu")
    cli.check_backend(cfg, "train", backend="gpu")
    cfg.train.require_accelerator = False  # the explicit override
    cli.check_backend(cfg, "train", backend="cpu")


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_small_variants_train_on_cpu(name):
    from jaxsr import cli
    for variant in ("tiny", "cpu"):
        cfg = load(name, variant)
        cli.check_backend(cfg, "train", backend="cpu")
        cfg.train.require_accelerator = True  # the same config marked as a paper run is refused
        with pytest.raises(SystemExit, match="paper-scale run"):
            cli.check_backend(cfg, "train", backend="cpu")


def test_main_stops_a_paper_run_on_cpu_before_any_work(tmp_path):
    import os
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "jaxsr.main", "--config=configs/dan.py:setting1_x4",
                          f"--workdir={tmp_path / 'wd'}"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert res.returncode == 1
    assert "paper-scale run (400,000 steps at batch 64)" in res.stderr and "'.[cuda12]'" in res.stderr
    assert not (tmp_path / "wd").exists()  # nothing written
