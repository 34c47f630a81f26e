"""USRNet (Zhang et al., CVPR 2020), non-blind. Variants: `--config=configs/usrnet.py:VARIANT`.

Trained through the common loop with the ground-truth kernel and noise level of every batch.
Official training (KAIR options/train_usrnet.json): HR patches 96x96, batch 48, Adam lr 1e-4
halved at 100k, 200k, 300k, 400k, L1 loss; its kernels mix anisotropic Gaussians and motion
blur over scales 1-4 with AWGN up to 25. jaxsr trains one scale per run on a preset:
  kenet_x2 | kenet_x4              KENet's degradations (aniso σ ∈ [0.2, 4], noise-free): the
                                   restorer for configs/kenet.py's pipeline
  kxnet2_x2 | kxnet2_x3 | kxnet2_x4  aniso σ ∈ [0.6, 5] with AWGN σ ∈ [0, 25] (the closest preset
                                   to the official noisy training)
  tiny                             seconds on a CPU; for tests
  cpu                              a few minutes on 2 CPU cores
USRNet needs the kernel: `--mode=eval` gives it the true one (`eval.oracle_kernel=True`, the
"GT kernel + USRNet" upper bound); training validation shows only the bicubic baseline.
"""
import ml_collections

from jaxsr import config_lib


def model_config(**overrides) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict(dict(name="usrnet", num_iters=8, features=(64, 128, 256, 512), num_blocks=2,
                                       hyper_features=64, remat=False,
                                       dtype="float32"))  # compute dtype: "float32", or "bfloat16" on GPU/TPU (README)
    m.update(overrides)
    return m


def paper(cfg, scale: int, preset: str):
    config_lib.use_preset(cfg, scale, preset)
    cfg.train.update(dict(steps=500_000, learning_rate=1e-4, lr_milestones=(100_000, 200_000, 300_000, 400_000),
                          lr_gamma=0.5, b1=0.9, b2=0.999))
    return config_lib.paper_data(cfg, patch_size=96 // scale, batch_size=48)


def tiny(cfg):
    cfg.scale = 2
    cfg.degradation.preset = "kenet"
    cfg.degradation.kernel_size = 11
    cfg.model.update(dict(num_iters=2, features=(4, 4, 8, 8), num_blocks=1, hyper_features=8))
    return config_lib.small_run(cfg, "tiny")


def cpu(cfg):
    cfg.scale = 2
    cfg.degradation.preset = "kenet"
    cfg.degradation.kernel_size = 11
    cfg.model.update(dict(num_iters=4, features=(16, 32, 64, 64), num_blocks=1, hyper_features=32))
    return config_lib.small_run(cfg, "cpu", train=dict(b2=0.999))


VARIANTS = {
    "kenet_x2": lambda c: paper(c, 2, "kenet"),
    "kenet_x4": lambda c: paper(c, 4, "kenet"),
    **{f"kxnet2_x{s}": (lambda c, s=s: paper(c, s, "kxnet2")) for s in (2, 3, 4)},
    "tiny": tiny,
    "cpu": cpu,
}


def get_config(arg=None):
    cfg = config_lib.base_config()
    cfg.model = model_config()
    cfg.loss = ml_collections.ConfigDict(dict(iter_weights=None))
    cfg.eval.protocol = "kxnet"
    cfg.eval.oracle_kernel = True
    _, variant = config_lib.select_variant(VARIANTS, arg, __file__)
    return variant(cfg)
