"""KENet (Cao et al., ICASSP). Variants: `--config=configs/kenet.py:VARIANT`.

Paper settings (§3.1): DIV2K + Flickr2K, LR patches 96x96, batch 64, Adam, 600k iterations,
lr 1e-2 divided by 10 every 200k; anisotropic Gaussians σ1, σ2 ∈ [0.2, 4], θ ∈ [0, π] (preset
"kenet", s-fold downsampler); adaptive attention loss with λ1, λ2 = 0.01, 0.1 and
ρ0, ρ1, ρ2 = 0.01, 0.1, 1 (`loss.type="l1"` is the paper's ablation).
  x2 | x4     11x11 | 21x21 kernels
  tiny        seconds on a CPU; for tests
  cpu         a few minutes on 2 CPU cores: the kernel error falls visibly
KENet only estimates kernels: training validates the kernel error. Blind SR (`--mode=eval`,
`--mode=infer`) feeds its kernel to a USRNet named in `cfg.pipeline`: `usrnet_workdir` (a run of
configs/usrnet.py at the same scale) or `usrnet_official` (an official USRNet/USRGAN .pth;
`usrnet_official_variant="usrnet_tiny"` for the tiny ones). `--config.eval.oracle_kernel=True`
gives the "GT kernel + USRNet" upper bound with the same USRNet. Evaluation uses KXNet's 8
anisotropic s-fold test kernels (protocol "kxnet"; the paper samples random test kernels).
"""
import ml_collections

from jaxsr import config_lib


def model_config(**overrides) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict(dict(name="kenet", kernel_size=21, features=64, num_levels=4,
                                       fc_features=1024,
                                       dtype="float32"))  # compute dtype: "float32", or "bfloat16" on GPU/TPU (README)
    m.update(overrides)
    return m


def paper(cfg, scale: int):
    config_lib.use_preset(cfg, scale, "kenet")
    cfg.train.update(dict(steps=600_000, learning_rate=1e-2, lr_milestones=(200_000, 400_000), lr_gamma=0.1,
                          b1=0.9, b2=0.999))
    return config_lib.paper_data(cfg, patch_size=96, batch_size=64)


def tiny(cfg):
    config_lib.use_preset(cfg, 2, "kenet")
    cfg.model.update(dict(features=4, fc_features=16))
    return config_lib.small_run(cfg, "tiny", data=dict(patch_size=16))


def cpu(cfg):
    config_lib.use_preset(cfg, 2, "kenet")
    cfg.model.update(dict(features=16, fc_features=256))
    return config_lib.small_run(cfg, "cpu", data=dict(patch_size=48, batch_size=16),
                                train=dict(learning_rate=1e-3, lr_gamma=0.1, b2=0.999))


VARIANTS = {"x2": lambda c: paper(c, 2), "x4": lambda c: paper(c, 4), "tiny": tiny, "cpu": cpu}


def get_config(arg=None):
    cfg = config_lib.base_config()
    cfg.model = model_config()
    cfg.loss = ml_collections.ConfigDict(dict(type="attention", thresholds=(0.01, 0.1), weights=(0.01, 0.1, 1.0)))
    cfg.eval.protocol = "kxnet"
    cfg.eval.oracle_kernel = False
    cfg.pipeline = ml_collections.ConfigDict(dict(usrnet_workdir="", usrnet_official="",
                                                  usrnet_official_variant="usrnet", usrnet_num_iters=-1))
    _, variant = config_lib.select_variant(VARIANTS, arg, __file__)
    return variant(cfg)
