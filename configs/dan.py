"""DANv1 (Luo et al., NeurIPS 2020). Variants: `--config=configs/dan.py:VARIANT`.

Paper settings (§4.1.1): DIV2K + Flickr2K, LR patch 64, batch 64, 400k iterations, Adam(0.9, 0.99),
lr 2e-4 halved every 100k; each LR batch rounded to 8 bits and the kernel code from the centred PCA of the
official kernel family (the paper is silent on both: the official train.py and creat_PCA.py).
  setting1_x2 | setting1_x3 | setting1_x4   isotropic Gaussian, 21x21, σ ~ U[0.2, 2 | 3 | 4]
  setting2_x2 | setting2_x4                 anisotropic + multiplicative noise (11x11 at x2, 21x21 at x4)
  <any of the five>_official                as the official repository trains it (greatlog/DAN
                                            codes/config/DANv1/options/*/train/*.yml and code): lr 4e-4
                                            halved at 200k, σ ~ U[0.2, 4] at every setting-1 scale, tap
                                            noise k + U(0, 0.25)·k (docs/recipes.md has every value
                                            side by side)
  tiny                                      seconds on a CPU; for tests
  cpu                                       ~6.5 minutes on 2 CPU cores: a visible PSNR gain over bicubic
                                            (x2 setting 1, 3000 steps of batch 8)
For the paper settings, point `data.train_dirs` at a store of your DIV2K/Flickr2K HR images, made once with
`python -m jaxsr.data.prepare --output STORE DIV2K_train_HR Flickr2K_HR` (folders work too, decoding every patch).
"""
import ml_collections

from jaxsr import config_lib
from jaxsr.ops import pca


def model_config(**overrides) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict(dict(
        name="danv1", kernel_size=21, code_length=10, num_iters=4,
        restorer_features=64, restorer_blocks=40, estimator_features=32, estimator_blocks=5,
        remat=False, pca_path="",  # "" = the shipped PCA matrix for the degradation setting
        dtype="float32"))  # compute dtype: "float32", or "bfloat16" on GPU/TPU (README)
    m.update(overrides)
    return m


def tiny(cfg):
    cfg.scale = 2
    cfg.degradation.preset = "setting1"
    cfg.model.update(dict(restorer_features=8, restorer_blocks=2, estimator_features=8, estimator_blocks=1,
                          num_iters=2))
    return config_lib.small_run(cfg, "tiny")


def cpu(cfg):
    cfg.scale = 2
    cfg.degradation.preset = "setting1"
    cfg.model.update(dict(restorer_features=32, restorer_blocks=4, estimator_features=16, estimator_blocks=2,
                          num_iters=2))
    return config_lib.small_run(cfg, "cpu", train=dict(steps=3000, lr_milestones=(2000, 2500)))


def official_pca(name: str) -> str:
    """The PCA matrix an official option file names, as jaxsr's centred fit of its kernel family:
    pca_matrix.pth (isotropic σ ∈ [0.2, 4]) for setting 1 at every scale and for setting 2 x4, whose
    pca_aniso_matrix_x4.pth is the same file; pca_aniso_matrix_x2.pth for setting 2 x2."""
    return pca.official_dan_matrix_path("official_aniso_x2_k11" if name == "setting2_x2" else "official_iso_k21")


def official(cfg, name: str):
    """DANv1 as train_<name>.yml and train.py run it (where they differ from the paper)."""
    config_lib.official_dan_degradation(cfg)
    cfg.train.update(dict(learning_rate=4e-4, lr_milestones=(200_000,), lr_gamma=0.5, steps=400_000))
    cfg.model.pca_path = official_pca(name)
    return cfg


def paper(make, name: str):
    """A paper variant with the kernel PCA the official code fits, as the paper says nothing of it
    (centred, on the official kernel family: docs/recipes.md, choice 4)."""
    def variant(cfg):
        cfg = make(cfg)
        cfg.model.pca_path = official_pca(name)
        return cfg
    return variant


PAPER_VARIANTS = {name: paper(make, name) for name, make in config_lib.setting_variants().items()}
VARIANTS = {**config_lib.official_twins(PAPER_VARIANTS, official), "tiny": tiny, "cpu": cpu}


def get_config(arg=None):
    cfg = config_lib.base_config()
    cfg.model = model_config()
    cfg.loss = ml_collections.ConfigDict(dict(iter_weights=None, kernel_weight=1.0))
    _, variant = config_lib.select_variant(VARIANTS, arg, __file__)
    return variant(cfg)
