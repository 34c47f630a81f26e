"""KXNet (Fu et al., ECCV 2022). Variants: `--config=configs/kxnet.py:VARIANT`.

Paper settings (§5.1): DIV2K + Flickr2K, LR patch 64, batch 12, Adam(0.9, 0.99), lr 2e-4 halved
every 200k iterations until it reaches 1.25e-5; T = 19 stages; loss weights 0.1 on the middle
stages and 1 on the last. The official yml files train 1M iterations (milestones 200k ... 800k),
which is used here; each LR batch is rounded to 8 bits (the paper is silent: the official train.py).
Degradations use the s-fold downsampler (presets "kxnet1", "kxnet2"):
  setting1_x2 | setting1_x3 | setting1_x4   isotropic Gaussian, noise-free; A_K initialised with the
                                            isotropic map; Gaussian8 test kernels
  setting2_x2 | setting2_x3 | setting2_x4   anisotropic σ ∈ [0.6, 5], AWGN σ ∈ [0, 25]; 11/15/21 kernels;
                                            test protocol "kxnet" (8 kernels; add noise with
                                            --config.eval.noise=15)
  <any of the six>_official                 as jiahong-fu/KXNet trains: Adam's β2 is 0.999 (blind_model.py
                                            builds Adam without the yml's betas); docs/recipes.md
  tiny                                      seconds on a CPU; for tests
  cpu                                       ~7 minutes on 2 CPU cores (x2, setting 2, 4 small stages)
The kernel size always follows the degradation preset. Point `data.train_dirs` at a
store of your DIV2K/Flickr2K HR images (`python -m jaxsr.data.prepare`) for the paper settings.
"""
import ml_collections

from jaxsr import config_lib


def model_config(**overrides) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict(dict(
        name="kxnet", kernel_size=21, num_stages=19, aux_x_features=32, aux_k_features=24, kernel_replicas=3,
        prox_blocks=4, aux_kernel_init="aniso", remat=False, scan_unroll=-1,
        dtype="float32"))  # compute dtype: "float32", or "bfloat16" on GPU/TPU (README)
    m.update(overrides)
    return m


def _degradation(cfg, scale: int, preset: str):
    config_lib.use_preset(cfg, scale, preset)
    cfg.model.aux_kernel_init = "iso" if preset == "kxnet1" else "aniso"  # the official auxi_batch_*.pth
    cfg.eval.protocol = "gaussian8" if preset == "kxnet1" else "kxnet"
    return cfg


def paper(cfg, scale: int, preset: str):
    _degradation(cfg, scale, preset)
    cfg.degradation.round_lr = True  # train.py: (LR_img * 255).round() / 255
    return config_lib.paper_data(cfg)


def official(cfg, name: str):
    """KXNet as train_<name>.yml and blind_model.py run it, where they differ from the paper: Adam
    with PyTorch's default betas (0.9, 0.999), the yml's milestones (its last, 1M, is the end)."""
    cfg.train.update(dict(b1=0.9, b2=0.999, lr_milestones=(200_000, 400_000, 600_000, 800_000, 1_000_000)))
    return cfg


def tiny(cfg):
    _degradation(cfg, 2, "kxnet2")
    cfg.model.update(dict(num_stages=2, aux_x_features=4, aux_k_features=4, prox_blocks=1))
    return config_lib.small_run(cfg, "tiny")


def cpu(cfg):
    _degradation(cfg, 2, "kxnet2")
    cfg.model.update(dict(num_stages=4, aux_x_features=16, aux_k_features=8, prox_blocks=2))
    return config_lib.small_run(cfg, "cpu")


PAPER_VARIANTS = {
    **{f"setting1_x{s}": (lambda c, s=s: paper(c, s, "kxnet1")) for s in (2, 3, 4)},
    **{f"setting2_x{s}": (lambda c, s=s: paper(c, s, "kxnet2")) for s in (2, 3, 4)},
}
VARIANTS = {
    **config_lib.official_twins(PAPER_VARIANTS, official),
    "tiny": tiny,
    "cpu": cpu,
}


def get_config(arg=None):
    cfg = config_lib.base_config()
    cfg.model = model_config()
    # iter_weights None: the paper's 0.1 on stages 1..T-1 and 1 on stage T, for both terms
    cfg.loss = ml_collections.ConfigDict(dict(iter_weights=None, middle_weight=0.1, last_weight=1.0,
                                              kernel_weight=1.0))
    cfg.data.update(dict(patch_size=64, batch_size=12))
    cfg.train.update(dict(steps=1_000_000, learning_rate=2e-4, b1=0.9, b2=0.99, lr_gamma=0.5,
                          lr_milestones=(200_000, 400_000, 600_000, 800_000)))
    _, variant = config_lib.select_variant(VARIANTS, arg, __file__)
    return variant(cfg)
