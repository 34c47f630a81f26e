"""USRNet (Zhang, Van Gool, Timofte, CVPR'20): the non-blind deep unfolding SR network.

Each of the T stages alternates
  * a data step D: the closed-form minimiser of ||y - (x ⊗ k)↓s||² + α_t ||x - x_prev||²
    for circular convolution and the s-fold downsampler, solved with FFTs
    (`jaxsr.ops.unfolding.data_step`);
  * a prior step P: a ResUNet denoiser fed the data step's output and a constant map β_t.
A small hyper-parameter MLP maps (noise level, scale) to the 2T values (α_1..α_T, β_1..β_T).
As in the official code there is ONE ResUNet shared by all stages (`nn.scan`, params
broadcast) and the data step has no parameters.

Conventions (jaxsr's, not the official script's):
  * `kernel` (N, k, k) is the kernel of `jaxsr.ops.degrade.blur`, i.e. a *correlation*
    kernel; it is flipped here before the FFT, which models a convolution. The Gaussians of
    the jaxsr presets are point-symmetric, so for them this changes nothing.
  * `noise_sigma` (N,) is in [0, 255] units; the hyper-network sees it divided by 255, as the
    official model (trained on noise levels in [0, 1] units) expects.

`apply(variables, lr, kernel, noise_sigma, num_iters=None)` returns {"sr": (T, N, sH, sW, C)},
the HR estimate after every stage; the last one is the model's output.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import losses
from jaxsr.models import ModelSpec, module_from_config
from jaxsr.models.layers import compute_dtype, conv2d, param, remat_cell, run_blocks, scan_unroll
from jaxsr.ops import _checks
from jaxsr.ops.unfolding import data_precompute, data_step
from jaxsr.torch_import import OfficialMap

Array = jax.Array

# Parameter count of the official USRNet (and USRGAN): n_iter 8, h_nc 64, nc 64-128-256-512, nb 2.
OFFICIAL_NUM_PARAMS = 17_016_016
# Official model variants (module fields); "usrnet" also fits the USRGAN weights.
OFFICIAL_VARIANTS: dict[str, dict[str, Any]] = {
    "usrnet": dict(num_iters=8, hyper_features=64, features=(64, 128, 256, 512), num_blocks=2),
    "usrnet_tiny": dict(num_iters=6, hyper_features=32, features=(16, 32, 64, 64), num_blocks=2),
}

# ----------------------------------------------------------------------------- prior (ResUNet)
def conv_nobias(x: Array, features: int, kernel_size: int, *, stride: int = 1, padding: int | None = None,
                name: str | None = None) -> Array:
    """`torch.nn.Conv2d(..., bias=False)` on NHWC input (PyTorch's default weight init)."""
    return conv2d(x, features, kernel_size, stride=stride, padding=padding, use_bias=False, name=name)


class ConvTranspose2x2(nn.Module):
    """`torch.nn.ConvTranspose2d(in, out, 2, stride=2, bias=False)`: every input pixel becomes a
    2x2 output block, out[2i+a, 2j+b, o] = Σ_c x[i, j, c] W[c, o, a, b].

    The parameter `kernel` is stored as (a, b, out, in): PyTorch's (in, out, a, b) weight after
    the same (2, 3, 1, 0) transposition that turns a Conv2d weight into HWIO, so the importer
    treats it like a convolution weight.
    """
    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = self.features * 4  # what PyTorch's init computes from the (in, out, 2, 2) weight
        bound = 1.0 / math.sqrt(fan_in)
        kernel = param(self, "kernel", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound),
                       (2, 2, self.features, x.shape[-1]))
        return transposed_conv_2x2(x, kernel.astype(x.dtype))


def transposed_conv_2x2(x: Array, kernel: Array) -> Array:
    """out[n, 2i+a, 2j+b, o] = Σ_c x[n, i, j, c] kernel[a, b, o, c]: one (pixels x C) @ (C x 4·out)
    product, then the 2x2 blocks interleaved. The same sums as einsum("nhwc,aboc->nhawbo"), for
    which XLA:CPU transposes the cotangent element by element in the backward pass (2x slower for
    up1 at paper width)."""
    n, h, w, c = x.shape
    out = kernel.shape[2]
    y = x.reshape(n * h * w, c) @ kernel.reshape(4 * out, c).T
    y = y.reshape(n, h, w, 2, 2, out).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * w, out)


class ResBlock(nn.Module):
    """x + conv(ReLU(conv(x))), 3x3, no bias."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        y = conv_nobias(nn.relu(conv_nobias(x, width, 3, name="conv1")), width, 3, name="conv2")
        return x + y


class ResUNet(nn.Module):
    """Four-level U-Net of residual blocks: stride-2 2x2 convs down, 2x2 transposed convs up,
    additive skips. The input is edge-padded on the bottom/right to a multiple of 8 and the
    output cropped back."""
    out_channels: int = 3
    features: Sequence[int] = (64, 128, 256, 512)
    num_blocks: int = 2
    scan_blocks: bool = False  # each level's blocks as one `lax.scan` body (`layers.run_blocks`)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        nc, nb = tuple(self.features), self.num_blocks
        if len(nc) != 4:
            raise ValueError(f"features must list 4 widths, got {nc}")
        n, h, w, _ = x.shape
        x = jnp.pad(x, ((0, 0), (0, -h % 8), (0, -w % 8), (0, 0)), mode="edge")

        def blocks(y, prefix):
            return run_blocks(self, ResBlock, [f"{prefix}_block_{i}" for i in range(nb)], y, scan=self.scan_blocks)

        x1 = conv_nobias(x, nc[0], 3, name="head")
        x2 = conv_nobias(blocks(x1, "down1"), nc[1], 2, stride=2, padding=0, name="down1_conv")
        x3 = conv_nobias(blocks(x2, "down2"), nc[2], 2, stride=2, padding=0, name="down2_conv")
        x4 = conv_nobias(blocks(x3, "down3"), nc[3], 2, stride=2, padding=0, name="down3_conv")
        y = blocks(x4, "body")
        y = blocks(ConvTranspose2x2(nc[2], name="up3_conv")(y + x4), "up3")
        y = blocks(ConvTranspose2x2(nc[1], name="up2_conv")(y + x3), "up2")
        y = blocks(ConvTranspose2x2(nc[0], name="up1_conv")(y + x2), "up1")
        y = conv_nobias(y + x1, self.out_channels, 3, name="tail")
        return y[:, :h, :w, :]


class HyperNet(nn.Module):
    """(noise level in [0, 1] units, scale) -> 2T positive values: 1x1 convs 2 -> c -> c -> 2T with
    ReLUs, then softplus + 1e-6."""
    num_outputs: int
    features: int = 64

    @nn.compact
    def __call__(self, sigma: Array, scale: Array) -> Array:
        x = jnp.stack([sigma, scale], axis=-1)[:, None, None, :]  # (N, 1, 1, 2)
        x = nn.relu(conv2d(x, self.features, 1, name="conv0"))
        x = nn.relu(conv2d(x, self.features, 1, name="conv1"))
        x = conv2d(x, self.num_outputs, 1, name="conv2")
        return (nn.softplus(x) + 1e-6)[:, 0, 0, :]


# ----------------------------------------------------------------------------- the network
class USRNet(nn.Module):
    """USRNet with the official defaults (8 stages, ResUNet 64-128-256-512, 2 blocks per level)."""
    scale: int = 4
    num_iters: int = 8
    channels: int = 3
    features: Sequence[int] = (64, 128, 256, 512)
    num_blocks: int = 2
    hyper_features: int = 64
    remat: bool = False
    scan_unroll: int = 1  # iterations per loop trip; 0 = all (unrolled). Configs: -1 = per platform (models.create)
    scan_blocks: bool = False  # the ResUNet's blocks per level as one scanned body (GPU/TPU; models.create)
    dtype: str = "float32"  # compute dtype of the ResUNet prior; the FFT data step stays float32

    def setup(self):
        _checks.check_scale("scale", self.scale)
        if not isinstance(self.num_iters, (int, np.integer)) or self.num_iters < 1:
            raise ValueError(f"num_iters must be a positive int, got {self.num_iters!r}")
        self.prior = ResUNet(self.channels, tuple(self.features), self.num_blocks, self.scan_blocks)
        self.hyper = HyperNet(2 * self.num_iters, self.hyper_features)

    def __call__(self, lr: Array, kernel: Array | None = None, noise_sigma: Array | float | None = None,
                 num_iters: int | None = None) -> dict[str, Array]:
        """lr (N, h, w, C) in [0, 1]; kernel (N, k, k) (None: a Dirac, i.e. no blur); noise_sigma
        (N,) or a scalar in [0, 255] units (None: 0); num_iters <= self.num_iters runs only the
        first stages. Returns {"sr": (T, N, s*h, s*w, C)}."""
        with jax.ensure_compile_time_eval():
            _checks.check_images("lr", lr, channels=(self.channels,))
        n, h, w, _ = lr.shape
        s = self.scale
        if kernel is None:
            kernel = jnp.ones((n, 1, 1), lr.dtype)
        with jax.ensure_compile_time_eval():
            _checks.check_kernels("kernel", kernel, batch=n)
        sigma = jnp.zeros((n,), lr.dtype) if noise_sigma is None else jnp.asarray(noise_sigma, lr.dtype)
        if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] != n):
            raise ValueError(f"noise_sigma must be a scalar or have shape ({n},), got {sigma.shape}")
        sigma = jnp.broadcast_to(sigma, (n,))
        iters = self.num_iters if num_iters is None else num_iters
        if not isinstance(iters, (int, np.integer)) or not 1 <= iters <= self.num_iters:
            raise ValueError(f"num_iters must be an int in [1, {self.num_iters}], got {iters!r}")

        fb, fbfy = data_precompute(lr, kernel, s)
        hyper = self.hyper(sigma / 255.0, jnp.full((n,), float(s), lr.dtype))
        alphas = hyper[:, :self.num_iters].T[:iters]  # (T, N)
        betas = hyper[:, self.num_iters:].T[:iters]
        x0 = jnp.repeat(jnp.repeat(lr, s, axis=1), s, axis=2)  # nearest-neighbour start

        dtype = compute_dtype(self.dtype)

        def stage(mdl, x, alpha_beta, fb, fbfy):
            alpha, beta = alpha_beta
            z = data_step(x, fb, fbfy, alpha, s)
            beta_map = jnp.broadcast_to(beta.astype(z.dtype)[:, None, None, None], (*z.shape[:3], 1))
            x = mdl.prior(jnp.concatenate([z, beta_map], axis=-1).astype(dtype)).astype(z.dtype)
            return x, x

        unroll = scan_unroll(self.scan_unroll, int(iters))
        if self.remat:
            stage = remat_cell(stage, unroll)
        loop = nn.scan(stage, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=(0, nn.broadcast, nn.broadcast), length=int(iters), unroll=unroll)
        _, srs = loop(self, x0, (alphas, betas), fb, fbfy)
        return {"sr": srs}


# ----------------------------------------------------------------------------- training-loop API
def create_model(cfg, pca_matrix=None) -> USRNet:
    """USRNet from `cfg.scale` and `cfg.model`."""
    del pca_matrix
    return module_from_config(USRNet, cfg, names=("usrnet",))


def forward(model: USRNet, variables, batch: Mapping[str, Array], cfg=None) -> dict[str, Array]:
    """Non-blind training: the ground-truth kernel and noise level go in with the LR batch. The
    loss (on the last SR) reaches every iteration through the unfolded data steps."""
    del cfg
    return model.apply(variables, batch["lr"], batch["kernel"], batch["noise_sigma"])


def predict(model: USRNet, variables, lr: Array, *, num_iters: int | None = None,
            kernel: Array | None = None, noise_sigma: Array | float | None = None):
    """(last SR, None): the restoration with the given kernel and noise level ([0, 255] units)."""
    if kernel is None:
        raise ValueError("USRNet is non-blind and needs the kernel: evaluate it with "
                         "cfg.eval.oracle_kernel=True, or pair it with a kernel estimator "
                         "(configs/kenet.py, cfg.pipeline)")
    return model.apply(variables, lr, kernel, noise_sigma, num_iters=num_iters)["sr"][-1], None


def compute_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], cfg) -> tuple[Array, dict]:
    """L1 on the SR of the last stage (the official training loss); `cfg.loss.iter_weights`
    may weight every stage instead."""
    loss_cfg = cfg.get("loss", None) or {}
    total, per_iter = losses.iterated_l1(outputs["sr"], batch["hr"], loss_cfg.get("iter_weights", None))
    metrics = {"loss": total, "l1_sr": total}
    for t in range(per_iter.shape[0]):
        metrics[f"l1_sr_iter{t}"] = per_iter[t]
    return total, metrics


# ----------------------------------------------------------------------------- official checkpoints
def official_key_map(model: USRNet) -> dict[str, tuple[tuple[str, ...], str]]:
    """Official state-dict key -> (Flax path, transform). The prior is `p`, the hyper-net `h`;
    the data module has no parameters. Transposed convs map with the "conv" transform (see
    `ConvTranspose2x2`)."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    prior, nb = ("prior",), model.num_blocks

    def weight(key, path):
        out[f"{key}.weight"] = (path + ("kernel",), "conv")

    def blocks(torch_seq, flax_prefix, first):
        for i in range(nb):
            weight(f"p.{torch_seq}.{first + i}.res.0", prior + (f"{flax_prefix}_block_{i}", "conv1"))
            weight(f"p.{torch_seq}.{first + i}.res.2", prior + (f"{flax_prefix}_block_{i}", "conv2"))

    weight("p.m_head", prior + ("head",))
    for level in (1, 2, 3):  # [ResBlock x nb, strided conv]
        blocks(f"m_down{level}", f"down{level}", 0)
        weight(f"p.m_down{level}.{nb}", prior + (f"down{level}_conv",))
    blocks("m_body", "body", 0)
    for level in (3, 2, 1):  # [transposed conv, ResBlock x nb]
        weight(f"p.m_up{level}.0", prior + (f"up{level}_conv",))
        blocks(f"m_up{level}", f"up{level}", 1)
    weight("p.m_tail", prior + ("tail",))
    for i, torch_index in enumerate((0, 2, 4)):  # mlp: conv, ReLU, conv, ReLU, conv, Softplus
        out[f"h.mlp.{torch_index}.weight"] = (("hyper", f"conv{i}", "kernel"), "conv")
        out[f"h.mlp.{torch_index}.bias"] = (("hyper", f"conv{i}", "bias"), "identity")
    return out


OFFICIAL = OfficialMap(official_key_map)  # the official checkpoints carry no buffers
SPEC = ModelSpec(name="usrnet", create=create_model, loss=compute_loss, forward=forward, predict=predict,
                 non_blind=True, official=OFFICIAL, official_variants=OFFICIAL_VARIANTS)
