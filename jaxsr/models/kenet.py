"""KENet (Cao et al., ICASSP): a supervised kernel estimator, paired with USRNet for blind SR.

Built from the paper (there is no public code), §2.2:
  f0 = RB(ReLU(Conv(LR)));  f_i = RB(ReLU(Conv(MaxPool(f_{i-1})))), i = 1, 2, 3;
  k  = Softmax(FC(ReLU(FC(ReLU(FC(GAP(f3)))))))  over the l x l taps.
Every conv is 3x3 with 64·s output channels for the s-th conv (64, 128, 192, 256); a residual
block is conv3x3 -> ReLU -> conv3x3 plus the skip, at the width of its input; max pooling is
2x2 with stride 2 (the paper does not state it; the common choice); the FC layers have 1024,
1024 and l² outputs.

Training minimises the adaptive attention loss (§2.3, `adaptive_attention_loss`) between the
estimated and the true kernel; no image loss. `apply(variables, lr)` returns
{"kernel": (1, N, l, l)} (a T = 1 axis, like the unfolded models).

Blind SR: KENet's kernel is fed to a USRNet (its spec's `restorer`), either a jaxsr-trained
one (`cfg.pipeline.usrnet_workdir`) or an official checkpoint (`cfg.pipeline.usrnet_official`);
`jaxsr.predict` composes the two.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsr.models import ModelSpec, module_from_config
from jaxsr.models.layers import TORCH_KERNEL_INIT, compute_dtype, conv2d, torch_default_bias_init
from jaxsr.ops import _checks

Array = jax.Array

# The paper's λ1, λ2 and ρ0, ρ1, ρ2.
ATTENTION_THRESHOLDS = (0.01, 0.1)
ATTENTION_WEIGHTS = (0.01, 0.1, 1.0)


# ----------------------------------------------------------------------------- loss
def adaptive_attention_loss(estimate: Array, target: Array,
                            thresholds: Sequence[float] = ATTENTION_THRESHOLDS,
                            weights: Sequence[float] = ATTENTION_WEIGHTS) -> Array:
    """L_att = ρ0 ||k* - k||₁ + Σ_t ρ_t ||k*_λt - k||₁ (KENet eq. 7-8).

    k*_λ keeps the estimate at the taps where the true kernel exceeds λ · max(k) and copies the
    true kernel elsewhere, so the t-th term only sees the taps above its threshold (a tap equal
    to the threshold is excluded: the paper's condition is a strict >). Each ||.||₁ is the mean
    absolute error over all taps and kernels (`torch.nn.L1Loss`), masked taps counting as 0.
    estimate, target: (N, l, l); weights has one more entry than thresholds.
    """
    if estimate.shape != target.shape or estimate.ndim != 3:
        raise ValueError(f"estimate and target must both be (N, l, l); got {estimate.shape} and {target.shape}")
    thresholds, weights = tuple(float(t) for t in thresholds), tuple(float(w) for w in weights)
    if len(weights) != len(thresholds) + 1:
        raise ValueError(f"weights needs len(thresholds) + 1 = {len(thresholds) + 1} entries, got {weights}")
    diff = jnp.abs(estimate - target)
    peak = jnp.max(target, axis=(1, 2), keepdims=True)
    loss = weights[0] * jnp.mean(diff)
    for lam, rho in zip(thresholds, weights[1:]):
        loss = loss + rho * jnp.mean(jnp.where(target > lam * peak, diff, 0.0))
    return loss


def kernel_psnr(estimate: Array, target: Array) -> Array:
    """Per-kernel 10 log10(1 / MSE) on the raw sum-to-one kernels (the FKP/KENet kernel PSNR)."""
    mse = jnp.mean((estimate - target) ** 2, axis=(1, 2))
    return -10.0 * jnp.log10(jnp.maximum(mse, 1e-20))


# ----------------------------------------------------------------------------- network
class ResBlock(nn.Module):
    """x + conv3x3(ReLU(conv3x3(x))), with biases."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        return x + conv2d(nn.relu(conv2d(x, width, 3, name="conv1")), width, 3, name="conv2")


def dense(x: Array, features: int, name: str) -> Array:
    """`torch.nn.Linear` with PyTorch's default initialisation."""
    return nn.Dense(features, kernel_init=TORCH_KERNEL_INIT,
                    bias_init=torch_default_bias_init(x.shape[-1]), name=name)(x)


class KENet(nn.Module):
    """Conv/ResBlock/max-pool pyramid -> global average pool -> 3 FC -> softmax over l x l."""
    kernel_size: int = 21
    channels: int = 3
    features: int = 64      # the s-th conv has features * s outputs
    num_levels: int = 4     # conv + RB stages (the first without pooling)
    fc_features: int = 1024
    dtype: str = "float32"  # compute dtype of the conv pyramid; the FC head and the kernel are float32

    @nn.compact
    def __call__(self, lr: Array, num_iters: int | None = None) -> dict[str, Array]:
        """lr (N, h, w, C) -> {"kernel": (1, N, l, l)}. `num_iters` is accepted and ignored
        (one pass), so generic callers of the unfolded models work unchanged."""
        _checks.check_odd_size("kernel_size", self.kernel_size)
        with jax.ensure_compile_time_eval():
            _checks.check_images("lr", lr, channels=(self.channels,))
        min_size = 2 ** (self.num_levels - 1)
        if min(lr.shape[1:3]) < min_size:
            raise ValueError(f"lr must be at least {min_size}x{min_size} for {self.num_levels - 1} "
                             f"max-pool levels, got shape {tuple(lr.shape)}")
        f = lr.astype(compute_dtype(self.dtype))
        for level in range(self.num_levels):
            if level > 0:
                f = nn.max_pool(f, (2, 2), strides=(2, 2), padding="VALID")
            f = nn.relu(conv2d(f, self.features * (level + 1), 3, name=f"conv_{level}"))
            f = ResBlock(name=f"block_{level}")(f)
        f = jnp.mean(f, axis=(1, 2)).astype(jnp.float32)
        f = nn.relu(dense(f, self.fc_features, "fc_0"))
        f = nn.relu(dense(f, self.fc_features, "fc_1"))
        logits = dense(f, self.kernel_size ** 2, "fc_2")
        kernel = jax.nn.softmax(logits, axis=-1).reshape(-1, self.kernel_size, self.kernel_size)
        return {"kernel": kernel[None]}


# ----------------------------------------------------------------------------- training-loop API
def create_model(cfg, pca_matrix=None) -> KENet:
    """KENet from `cfg.model` (its kernel size fixes the output; no scale field)."""
    del pca_matrix
    return module_from_config(KENet, cfg, names=("kenet",))


def predict(model: KENet, variables, lr: Array, *, num_iters: int | None = None, kernel: Array | None = None,
            noise_sigma=None):
    """(None, kernel (N, l, l)): KENet alone estimates the kernel and returns no image."""
    del num_iters, noise_sigma
    if kernel is not None:
        raise ValueError("KENet estimates kernels; a given kernel goes to its restorer (cfg.pipeline)")
    return None, model.apply(variables, lr)["kernel"][-1]


def compute_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], cfg) -> tuple[Array, dict]:
    """The adaptive attention loss (`cfg.loss.type="attention"`, thresholds / weights from
    `cfg.loss`) or the plain L1 of the paper's ablation (`cfg.loss.type="l1"`)."""
    loss_cfg = cfg.get("loss", None) or {}
    kind = loss_cfg.get("type", "attention")
    estimate, target = outputs["kernel"][-1], batch["kernel"]
    l1 = jnp.mean(jnp.abs(estimate - target))
    if kind == "attention":
        loss = adaptive_attention_loss(estimate, target, loss_cfg.get("thresholds", ATTENTION_THRESHOLDS),
                                       loss_cfg.get("weights", ATTENTION_WEIGHTS))
    elif kind == "l1":
        loss = l1
    else:
        raise ValueError(f"cfg.loss.type must be 'attention' or 'l1', got {kind!r}")
    metrics = {"loss": loss, "l1_kernel": l1,
               "kernel_psnr": jnp.mean(kernel_psnr(estimate, target))}
    return loss, metrics


SPEC = ModelSpec(name="kenet", create=create_model, loss=compute_loss, predict=predict, restorer="usrnet")
