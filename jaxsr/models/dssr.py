"""DSSR (Li et al., IEEE TMM 2022): kernel-free detail-structure alternating optimisation.

One recurrent step (parameters shared by all T steps, a single `nn.scan`):

  x       = compress(concat(x, hidden))              1x1 conv; x and hidden start as head(lr)
  feat    = structure(x)                             Stru-FE: cascaded residual blocks (LR)
  up      = up(feat)                                 transposed conv to HR: S_HR
  detail  = hr_image(up) - bicubic(lr)               the detail map M~ (detail restoration unit)
  d       = detail_embed(detail)                     3 -> F channels at HR
  up'     = up * γ_HR + β_HR + up                    (γ, β) = affine_hr(d)    } structure
  hidden  = down(up') * γ_LR + β_LR + feat           (γ, β) = affine_lr(↓d)   } modulation unit
  sr      = upsampler(refine(hidden)) + bicubic(lr)

and the test-time output is the mean of the T SR images. The layout follows the released
code (`Arcananana/DSSR`), which differs from the paper's text in three places, kept here so
that imported weights reproduce the official outputs: the compressed feature `x` (not the
shallow feature) is what the next step concatenates with the hidden state; the LR
modulation adds the Stru-FE output `feat`; and the LR branch sees the bicubic-downsampled
(align_corners=True) *embedded* detail map, the HR features being taken to LR by a strided
conv. Every bicubic resize is PyTorch's (`resize_bicubic_torch`), as in the official code.

`apply(variables, lr, num_iters=None)` returns `sr` (T, N, sH, sW, C), `detail`
(T, N, sH, sW, C) and `sr_mean` (N, sH, sW, C), the averaged output that `predict` returns.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import losses
from jaxsr.models import ModelSpec, module_from_config
from jaxsr.models.layers import (TORCH_KERNEL_INIT, param, remat_cell, run_blocks, scan_unroll, Upsampler, compute_dtype,
                                 conv2d, leaky_relu, pixel_shuffle, torch_default_bias_init)
from jaxsr.ops import _checks
from jaxsr.ops.imresize import resize_bicubic_torch
from jaxsr.torch_import import KeyMap, OfficialMap, conv_keys

Array = jax.Array

# (kernel, padding) of the official HR <-> LR feature resamplers, stride = scale.
RESAMPLER_GEOMETRY = {2: (4, 1), 3: (5, 1), 4: (4, 0)}
RESIDUAL_SCALE = 0.2  # each residual block adds 0.2 * its body to its input


# ----------------------------------------------------------------------------- blocks
class ResBlock(nn.Module):
    """x + 0.2 * conv(LReLU(conv(x)))."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = conv2d(leaky_relu(conv2d(x, x.shape[-1], 3, name="conv1")), x.shape[-1], 3, name="conv2")
        return x + RESIDUAL_SCALE * y


class CascadedResBlocks(nn.Module):
    """`num_blocks` ResBlocks in series with one skip around the whole chain."""
    num_blocks: int
    scan_blocks: bool = False  # the blocks as one `lax.scan` body (`layers.run_blocks`)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        names = [f"block_{i}" for i in range(self.num_blocks)]
        return run_blocks(self, ResBlock, names, x, scan=self.scan_blocks) + x


class AffineFromDetail(nn.Module):
    """Detail-FE (4 x conv3x3 + LReLU) then 1x1 heads: γ = sigmoid(conv), β = conv."""
    num_convs: int = 4

    @nn.compact
    def __call__(self, d: Array) -> tuple[Array, Array]:
        width = d.shape[-1]
        for i in range(self.num_convs):
            d = leaky_relu(conv2d(d, width, 3, name=f"conv_{i}"))
        return nn.sigmoid(conv2d(d, width, 1, name="gamma")), conv2d(d, width, 1, name="beta")


def _phase_taps(kernel_size: int, stride: int, padding: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Sub-pixel view of a 1-D transposed conv with output length stride * input length.

    Output sample s*q + r is sum_e x[q + e] * w[r + padding - s*e]: a plain correlation per
    phase r. Returns the (D, s) tap table u[e - e_lo, r] (clipped), its validity mask, and
    the input offsets e_lo <= e <= e_hi, D = e_hi - e_lo + 1.
    """
    k, s, p = kernel_size, stride, padding
    if k - 2 * p != s:
        raise ValueError(f"transposed conv (kernel {k}, stride {s}, padding {p}) does not scale by exactly {s}")
    e_lo, e_hi = -((k - 1 - p) // s), (s - 1 + p) // s
    taps = np.arange(s)[None, :] + p - s * np.arange(e_lo, e_hi + 1)[:, None]
    valid = (taps >= 0) & (taps < k)
    return np.clip(taps, 0, k - 1), valid, e_lo, e_hi


class ConvTranspose(nn.Module):
    """`torch.nn.ConvTranspose2d(in, features, k, stride, padding)` on NHWC input, for the
    geometries where the output is exactly stride x the input (k - 2 * padding = stride).

    The kernel is stored (k, k, out, in), PyTorch's (in, out, k, k) weight with its axes
    reversed, and initialised like PyTorch (whose fan-in for this layer is out * k * k).
    It runs as one stride-1 conv to stride² * out channels and a pixel shuffle: the same
    sums as the dilated form, and far cheaper to differentiate (notably on XLA:CPU).
    """
    features: int
    kernel_size: int
    stride: int
    padding: int = 0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s, cin = self.kernel_size, self.stride, x.shape[-1]
        kernel = param(self, "kernel", TORCH_KERNEL_INIT, (k, k, self.features, cin))
        bias = param(self, "bias", torch_default_bias_init(self.features * k * k), (self.features,))
        taps, valid, e_lo, e_hi = _phase_taps(k, s, self.padding)
        d = taps.shape[0]
        # (D, D, s, s, out, in): phase (ry, rx) weights at input offset (ey, ex); zero where no tap
        w = kernel[taps[:, None, :, None], taps[None, :, None, :]]
        w = w * jnp.asarray(valid[:, None, :, None] & valid[None, :, None, :], w.dtype)[..., None, None]
        # channel order out * s * s + ry * s + rx, which `pixel_shuffle` expects
        w = w.transpose(0, 1, 5, 4, 2, 3).reshape(d, d, cin, self.features * s * s)
        y = jax.lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), ((-e_lo, e_hi), (-e_lo, e_hi)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return pixel_shuffle(y, s) + bias.astype(x.dtype)


class RecurrentStep(nn.Module):
    """One unrolling step: DSMM (detail restoration + structure modulation) and reconstruction."""
    scale: int
    channels: int = 3
    features: int = 128
    structure_blocks: int = 15
    refine_blocks: int = 5
    scan_blocks: bool = False

    @nn.compact
    def __call__(self, carry: tuple[Array, Array], bicubic: Array) -> tuple[tuple[Array, Array], dict[str, Array]]:
        x, hidden = carry
        f, s = self.features, self.scale
        k, pad = RESAMPLER_GEOMETRY[s]
        lr_hw = x.shape[1:3]

        x = conv2d(jnp.concatenate([x, hidden], axis=-1), f, 1, name="compress")
        feat = CascadedResBlocks(self.structure_blocks, self.scan_blocks, name="structure")(x)
        up = ConvTranspose(f, k, s, pad, name="up")(feat)
        detail = conv2d(up, self.channels, 3, name="hr_image") - bicubic.astype(up.dtype)
        detail_feat = conv2d(detail, f, 3, name="detail_embed")

        gamma_hr, beta_hr = AffineFromDetail(name="affine_hr")(detail_feat)
        up = up * gamma_hr + beta_hr + up
        detail_lr = resize_bicubic_torch(detail_feat, output_size=lr_hw, align_corners=True)
        gamma_lr, beta_lr = AffineFromDetail(name="affine_lr")(detail_lr)
        hidden = conv2d(up, f, k, stride=s, padding=pad, name="down") * gamma_lr + beta_lr + feat

        y = CascadedResBlocks(self.refine_blocks, self.scan_blocks, name="refine")(hidden)
        sr = Upsampler(s, self.channels, name="upsampler")(y).astype(bicubic.dtype) + bicubic
        return (x, hidden), {"sr": sr, "detail": detail.astype(bicubic.dtype)}


# ----------------------------------------------------------------------------- the model
class DSSR(nn.Module):
    """Shallow conv, then T shared-parameter recurrent steps; outputs every step and their mean."""
    scale: int = 4
    channels: int = 3
    features: int = 128
    structure_blocks: int = 15
    refine_blocks: int = 5
    num_iters: int = 4
    remat: bool = False
    # Steps per compiled loop iteration (results unchanged).
    scan_unroll: int = 1  # iterations per loop trip; 0 = all (unrolled). Configs: -1 = per platform (models.create)
    # The residual blocks of each cascade as one `lax.scan` body (GPU/TPU programs; models.create).
    scan_blocks: bool = False
    dtype: str = "float32"  # compute dtype of the features; the bicubic skip and the outputs stay float32

    @nn.compact
    def __call__(self, lr: Array, num_iters: int | None = None) -> dict[str, Array]:
        _checks.check_scale("scale", self.scale, allowed=tuple(RESAMPLER_GEOMETRY))
        _checks.check_images("lr", lr, channels=(self.channels,))
        iters = self.num_iters if num_iters is None else num_iters
        if not isinstance(iters, (int, np.integer)) or isinstance(iters, bool) or iters < 1:
            raise ValueError(f"num_iters must be a positive int, got {iters!r}")
        if not isinstance(self.scan_unroll, (int, np.integer)) or self.scan_unroll < 0:
            raise ValueError(f"scan_unroll must be a non-negative int, got {self.scan_unroll!r}")

        bicubic = resize_bicubic_torch(lr, scale=self.scale)
        x = conv2d(lr.astype(compute_dtype(self.dtype)), self.features, 3, name="head")

        unroll = scan_unroll(self.scan_unroll, int(iters))
        step = remat_cell(RecurrentStep, unroll) if self.remat else RecurrentStep
        loop = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=nn.broadcast, length=int(iters), unroll=unroll)
        _, outputs = loop(self.scale, self.channels, self.features, self.structure_blocks,
                          self.refine_blocks, self.scan_blocks, name="step")((x, x), bicubic)
        outputs["sr_mean"] = jnp.mean(outputs["sr"], axis=0)
        return outputs


# ----------------------------------------------------------------------------- training-loop API
def create_model(cfg, pca_matrix=None) -> DSSR:
    """DSSR from `cfg.scale` and `cfg.model`. Kernel-free: `pca_matrix` is accepted for the
    loop's uniform call and ignored."""
    del pca_matrix
    return module_from_config(DSSR, cfg, names=("dssr",))


def predict(model: DSSR, variables, lr: Array, *, num_iters: int | None = None, kernel: Array | None = None,
            noise_sigma=None) -> tuple[Array, None]:
    """The averaged SR image over the T steps (the official test output); no kernel."""
    del noise_sigma
    if kernel is not None:
        raise ValueError("DSSR is kernel-free and cannot restore with a given kernel (eval.oracle_kernel=True)")
    return model.apply(variables, lr, num_iters=num_iters)["sr_mean"], None


def compute_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], cfg) -> tuple[Array, dict]:
    """Eq. (14): Σ_t w_t (α‖M − M~ᵗ‖₁ + ‖I − Iᵗ‖₁), M = HR − bicubic-up(LR), mean-reduced L1.

    `cfg.loss.detail_weight` is α (default 1); `cfg.loss.iter_weights` the w_t (default: all
    ones, the paper's plain sum over steps).
    """
    loss_cfg = cfg.get("loss", None) or {}
    alpha = float(loss_cfg.get("detail_weight", 1.0))
    num_iters = outputs["sr"].shape[0]
    weights = loss_cfg.get("iter_weights", None)
    weights = (1.0,) * num_iters if weights is None else weights

    bicubic = resize_bicubic_torch(batch["lr"], scale=int(cfg.scale))
    target_detail = batch["hr"] - bicubic
    sr_total, sr_per_iter = losses.iterated_l1(outputs["sr"], batch["hr"], weights)
    d_total, d_per_iter = losses.iterated_l1(outputs["detail"], target_detail, weights)

    loss = sr_total + alpha * d_total
    metrics = {"loss": loss, "l1_sr": sr_total, "l1_detail": d_total}
    if "sr_mean" in outputs:  # reported only: the averaged output is not trained directly
        metrics["l1_sr_mean"] = losses.l1(outputs["sr_mean"], batch["hr"])
    for t in range(num_iters):
        metrics[f"l1_sr_iter{t}"] = sr_per_iter[t]
        metrics[f"l1_detail_iter{t}"] = d_per_iter[t]
    return loss, metrics


# ----------------------------------------------------------------------------- official checkpoints
def _cascade(torch_prefix: str, flax_path: tuple[str, ...], num_blocks: int) -> KeyMap:
    out: KeyMap = {}
    for i in range(num_blocks):
        for conv in ("conv1", "conv2"):
            out |= conv_keys(f"{torch_prefix}.crb.crb.{i}.{conv}", flax_path + (f"block_{i}", conv))
    return out


def _affine(torch_prefix: str, flax_path: tuple[str, ...]) -> KeyMap:
    out: KeyMap = {}
    for i in range(4):
        out |= conv_keys(f"{torch_prefix}.conv{i + 1}", flax_path + (f"conv_{i}",))
    return out | conv_keys(f"{torch_prefix}.conv_gama", flax_path + ("gamma",)) | conv_keys(
        f"{torch_prefix}.conv_beta", flax_path + ("beta",))


def official_key_map(model: DSSR) -> KeyMap:
    """Official state-dict key -> (Flax param path, transform) for `model`'s structure.

    The transposed conv `up` maps with "conv" too: its (in, out, k, k) weight reversed is
    the (k, k, out, in) layout `ConvTranspose` stores.
    """
    s = ("step",)
    out = conv_keys("conv1", ("head",)) | conv_keys("compress_in", s + ("compress",))
    out |= _cascade("feat_ext", s + ("structure",), model.structure_blocks)
    out |= conv_keys("up", s + ("up",)) | conv_keys("conv_recon", s + ("hr_image",)) | conv_keys("conv2", s + ("detail_embed",))
    out |= _affine("spatial_trans1", s + ("affine_hr",)) | _affine("spatial_trans2", s + ("affine_lr",))
    out |= conv_keys("down", s + ("down",)) | _cascade("feat_refine", s + ("refine",), model.refine_blocks)
    stages = 2 if model.scale == 4 else 1  # UPNet: conv, shuffle[, conv, shuffle], conv
    for i in range(stages):
        out |= conv_keys(f"UPNet.{2 * i}", s + ("upsampler", f"up_{i}"))
    return out | conv_keys(f"UPNet.{2 * stages}", s + ("upsampler", "tail"))


OFFICIAL = OfficialMap(official_key_map)  # the official DSSR state dict holds parameters only
SPEC = ModelSpec(name="dssr", create=create_model, loss=compute_loss, predict=predict, official=OFFICIAL)
