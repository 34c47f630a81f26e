"""DSSR (Li et al., IEEE TMM 2022). Variants: `--config=configs/dssr.py:VARIANT`.

Paper settings (§IV-A): DIV2K + Flickr2K, LR patch 64, batch 8, 480k iterations, Adam(0.9, 0.99),
lr 2e-4 halved every 80k; 128 channels, 15 Stru-FE + 5 reconstruction blocks, T = 4; loss
Σₜ α‖M − M̃ᵗ‖₁ + ‖I − Iᵗ‖₁ with α = 1; each LR batch rounded to 8 bits (the paper is silent: the
official train.py).
  setting1_x2 | setting1_x3 | setting1_x4   isotropic Gaussian, 21x21, σ ~ U[0.2, 2 | 3 | 4]; Gaussian8 test
  setting2_x2 | setting2_x4                 anisotropic σ ∈ [0.6, 5], θ ∈ [-π, π], 25% tap noise
                                            (11x11 at x2; 21x21 at x4, the official x4 PCA's size); DIV2KRK
  <any of the five>_official                as Arcananana/DSSR trains: options/train_setting.yml (batch 1;
                                            σ ~ U[0.2, 4]; the only released option file, x4 setting 1)
                                            and the DAN degradation code it shares (tap noise
                                            k + U(0, 0.25)·k at setting 2); see docs/recipes.md
  tiny                                      seconds on a CPU; for tests
  cpu                                       ~7 minutes on 2 CPU cores: a visible PSNR gain over bicubic
DSSR is kernel-free, so any other protocol is one override away, e.g.
`--config.degradation.preset=kxnet2`. Point `data.train_dirs` at a store of your DIV2K/Flickr2K HR images (`python -m jaxsr.data.prepare`).
"""
import ml_collections

from jaxsr import config_lib


def model_config(**overrides) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict(dict(
        name="dssr", features=128, structure_blocks=15, refine_blocks=5, num_iters=4, remat=False,
        scan_unroll=-1,  # -1: unrolled on CPU, a rolled loop on GPU/TPU
        dtype="float32"))  # compute dtype: "float32", or "bfloat16" on GPU/TPU (README)
    m.update(overrides)
    return m


def tiny(cfg):
    cfg.scale = 2
    cfg.degradation.preset = "setting1"
    cfg.model.update(dict(features=8, structure_blocks=1, refine_blocks=1, num_iters=2))
    return config_lib.small_run(cfg, "tiny")


def cpu(cfg):
    cfg.scale = 2
    cfg.degradation.preset = "setting1"
    cfg.model.update(dict(features=32, structure_blocks=3, refine_blocks=2, num_iters=2))
    return config_lib.small_run(cfg, "cpu")


def official(cfg, name: str):
    """DSSR as train_setting.yml and train.py run it, where they differ from the paper."""
    config_lib.official_dan_degradation(cfg)
    cfg.data.batch_size = 1
    return cfg


VARIANTS = {**config_lib.official_twins(config_lib.setting_variants(), official), "tiny": tiny, "cpu": cpu}


def get_config(arg=None):
    cfg = config_lib.base_config()
    cfg.model = model_config()
    cfg.loss = ml_collections.ConfigDict(dict(detail_weight=1.0, iter_weights=None))  # None: every step weight 1
    cfg.data.update(dict(patch_size=64, batch_size=8))
    cfg.train.update(dict(steps=480_000, learning_rate=2e-4, b1=0.9, b2=0.99, lr_gamma=0.5,
                          lr_milestones=(80_000, 160_000, 240_000, 320_000, 400_000)))
    _, variant = config_lib.select_variant(VARIANTS, arg, __file__)
    return variant(cfg)
