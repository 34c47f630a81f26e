"""DANv2 (Luo et al., TPAMI): DANv1's alternating loop with dual-path conditional blocks and an
Estimator that outputs the kernel itself. Same variants and training recipe as configs/dan.py
(`setting1_x2|x3|x4`, `setting2_x2|x4`, `tiny`, `cpu`; the TPAMI paper's training section is not in
the project's paper set, so the paper variants follow the DANv1 paper); the loss is L1 on SR + L1 on
the kernel. `<variant>_official` twins train as greatlog/DAN codes/config/DANv2/options/*/train/*.yml
do: setting 1 800k iterations, lr 4e-4 halved at 200k/400k/600k; setting 2 as DANv1's yml (400k,
halved at 200k) with its `nb: 40` restorer (5 groups of 40 blocks; the test yml has 5 x 10).
"""
import os

import ml_collections

from jaxsr import config_lib

dan = config_lib.load_module(os.path.join(os.path.dirname(__file__), "dan.py"))
VARIANTS = dan.VARIANTS


def model_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="danv2", kernel_size=21, code_length=10, num_iters=4,
        restorer_features=64, restorer_blocks=10, restorer_groups=5,
        estimator_features=32, estimator_blocks=5, remat=False, pca_path="",
        dtype="float32"))  # compute dtype: "float32", or "bfloat16" on GPU/TPU (README)


def official(cfg, name: str):
    """DANv2 as its train_<name>.yml and train.py run it, on top of DANv1's twin (degradation, PCA)."""
    if name.startswith("setting1"):
        cfg.train.update(dict(steps=800_000, lr_milestones=(200_000, 400_000, 600_000)))
    else:  # the setting-2 ymls are DANv1's: 400k, halved at 200k, nb: 40 (ng defaults to 5)
        cfg.model.restorer_blocks = 40
    return cfg


def get_config(arg=None):
    cfg = dan.get_config(arg)
    tiny_or_cpu = {k: cfg.model[k] for k in ("restorer_features", "estimator_features", "estimator_blocks", "num_iters")}
    variant_blocks = cfg.model.restorer_blocks
    kernel_size, pca_path = cfg.model.kernel_size, cfg.model.pca_path
    cfg.model = model_config()
    cfg.model.update(dict(kernel_size=kernel_size, pca_path=pca_path))
    if (arg or "cpu") in ("tiny", "cpu"):  # small widths from the DANv1 variant; 2 groups of half the blocks
        cfg.model.update(tiny_or_cpu)
        cfg.model.update(dict(restorer_groups=2, restorer_blocks=max(1, variant_blocks // 2)))
    if (arg or "").endswith("_official"):
        official(cfg, arg[: -len("_official")])
    return cfg
