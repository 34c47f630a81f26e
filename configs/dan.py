"""DANv1 (Luo et al., NeurIPS 2020). Variants: `--config=configs/dan.py:VARIANT`.

Paper settings (§4): DIV2K + Flickr2K, LR patch 64, batch 64, 400k iterations, Adam(0.9, 0.99),
lr 2e-4 halved every 100k (the official repository's yml uses 4e-4 halved at 200k instead).
  setting1_x2 | setting1_x3 | setting1_x4   isotropic Gaussian, 21x21, σ ~ U[0.2, 2 | 3 | 4]
  setting2_x2 | setting2_x4                 anisotropic + multiplicative noise (11x11 at x2, 21x21 at x4)
  tiny                                      seconds on a CPU; for tests
  cpu                                       ~6.5 minutes on 2 CPU cores: a visible PSNR gain over bicubic
                                            (x2 setting 1, 3000 steps of batch 8)
For the paper settings, point `data.train_dirs` at a store of your DIV2K/Flickr2K HR images, made once with
`python -m jaxsr.data.prepare --output STORE DIV2K_train_HR Flickr2K_HR` (folders work too, decoding every patch).
"""
import ml_collections

from jaxsr import config_lib


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


VARIANTS = {**config_lib.setting_variants(), "tiny": tiny, "cpu": cpu}


def get_config(arg=None):
    cfg = config_lib.base_config()
    cfg.model = model_config()
    cfg.loss = ml_collections.ConfigDict(dict(iter_weights=None, kernel_weight=1.0))
    _, variant = config_lib.select_variant(VARIANTS, arg, __file__)
    return variant(cfg)
