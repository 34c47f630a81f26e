"""KXNet (Fu et al., ECCV 2022): proximal-gradient unfolding of blind SR.

Y = (X ⊗ K)↓s + N is inverted by T stages, each a K-net step and then an X-net step.
Every stage has its own parameters; the loop is one `nn.scan` over parameters stacked on
a leading T axis (`variable_axes={'params': 0}`), so the graph holds one stage, not T.

Stage t, with R = (X ⊗ K)↓s − Y (the released code's sign; `⊗` is `degrade.blur`, a
cross-correlation with reflect padding, and ↓s keeps the top-left pixel of each s×s block):

  K-net  G_K = (D_s U_f(X))ᵀ vec(R) / (C·h·w)   -- computed as a correlation, see `kernel_gradient`
         Z   = K − (γₜ / 10) · G_K
         [K', A_K] = proxK(concat(Z repeated 3 times, A_K))        (27 channels on the k×k grid)
         K   = relu(mean(K') + 1e-5), renormalised to sum 1
  X-net  G_X = (K ⊗ₛᵀ R) / (K ⊗ₛᵀ 1 + 1e-10)  -- the gradient adjuster of Eq. (11)
         [X', ·, A_X] = proxX(concat(S2D(X), S2D(G_X), Y, A_X))  (on the LR grid)
         X   = PixelShuffle(X')

S2D is space-to-depth in PyTorch's PixelShuffle channel order; A_K (24 maps on the kernel
grid) and A_X (32 maps on the LR grid) are the auxiliary variables carried between stages.
X⁰ is PyTorch-style bicubic upsampling of Y (`resize_bicubic_torch`, align_corners=False),
K⁰ a Gaussian with σ = 1, A_X⁰ a learnable 3×3 Laplacian-initialised conv of Y and A_K⁰ a
learnable kernel map initialised with 24 Gaussians (the official `auxi_batch_*.pth` files).

Facts taken from the official code that the paper leaves open: the K step is γₜ/10 with
γₜ initialised to 1 and the gradient averaged over C·h·w; the prox ResNets are four
`relu(x + 0.1·(conv-relu-conv)(x))` blocks and a last `relu(input + 0.1·conv(·))` whose skip
starts at the prox input. The official model also holds a per-stage `eta` that its forward
never reads; it is kept (initialised to 1, zero gradient) so the parameter count and the
checkpoint layout match.

`apply(variables, lr, num_iters=None)` returns `sr` (T, N, sH, sW, C) = Xᵗ and `kernel`
(T, N, k, k) = Kᵗ for every stage. `num_iters` may only be smaller than `num_stages` (it runs
the first stages, with their own parameters); `init` always creates all `num_stages` stages.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import losses
from jaxsr.models import ModelSpec, module_from_config
from jaxsr.models.layers import compute_dtype, conv2d, pixel_shuffle, remat_cell, scan_unroll, space_to_depth
from jaxsr.ops import _checks, degrade
from jaxsr.ops.imresize import resize_bicubic_torch
from jaxsr.ops.unfolding import blur_down, kernel_gradient, transposed_blur
from jaxsr.torch_import import OfficialMap, strip_prefix

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
AUX_KERNEL_INITS = ("aniso", "iso")


# ----------------------------------------------------------------------------- initial values
# One compiled call instead of a dozen eagerly dispatched ops (these run at init time).
_gaussians = jax.jit(degrade.gaussian_kernels, static_argnums=0)


def initial_kernel(size: int) -> Array:
    """K⁰: the centred isotropic Gaussian with σ = 1 (OpenCV's getGaussianKernel outer product)."""
    with jax.ensure_compile_time_eval():
        return _gaussians(size, np.ones(1), np.ones(1), np.zeros(1))[0]


def auxiliary_kernel_map(size: int, kind: str = "aniso") -> np.ndarray:
    """The 24 Gaussians that initialise A_K, (24, size, size), as the official files hold them.

    "iso" (setting 1): σ = linspace(0.2, 4.0, 24). "aniso" (setting 2): σx ∈ {1, 2.5, 4} ×
    σy ∈ {3.5, 5} × θ ∈ {0°, 45°, 90°, 135°}, in that nesting order.
    """
    size = _checks.check_odd_size("size", size)
    if kind == "iso":
        sx = sy = np.linspace(0.2, 4.0, 24)
        th = np.zeros(24)
    elif kind == "aniso":
        grid = [(a, b, math.radians(t)) for a in (1.0, 2.5, 4.0) for b in (3.5, 5.0) for t in np.linspace(0, 135, 4)]
        sx, sy, th = (np.array(v) for v in zip(*grid))
    else:
        raise ValueError(f"aux_kernel_init must be one of {AUX_KERNEL_INITS}, got {kind!r}")
    with jax.ensure_compile_time_eval():  # concrete even when called while tracing `init`
        return np.asarray(_gaussians(size, sx, sy, th))


# ----------------------------------------------------------------------------- modules
class ProxResNet(nn.Module):
    """The learned proximal operator: `num_blocks` blocks relu(y + 0.1·conv(relu(conv(y)))),
    then relu(input + 0.1·conv(y)). Width = the input's channel count."""
    num_blocks: int = 4

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        y = x
        for i in range(self.num_blocks):
            r = nn.relu(conv2d(y, width, 3, name=f"block{i}_conv1"))
            y = nn.relu(y + 0.1 * conv2d(r, width, 3, name=f"block{i}_conv2"))
        return nn.relu(x + 0.1 * conv2d(y, width, 3, name="out"))


class KXStage(nn.Module):
    """One K-net + X-net stage; scanned, so its parameters gain a leading stage axis."""
    scale: int
    kernel_size: int
    kernel_replicas: int = 3
    prox_blocks: int = 4
    dtype: str = "float32"  # of the prox nets and the auxiliary variables; X, K and the data terms stay float32

    @nn.compact
    def __call__(self, carry: tuple[Array, ...], lr: Array) -> tuple[tuple[Array, ...], dict[str, Array]]:
        x, k, aux_x, aux_k = carry
        dtype = compute_dtype(self.dtype)
        s, c = self.scale, lr.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (1,))
        self.param("eta", nn.initializers.ones, (1,))  # unused, as in the official forward

        # K-net: a gradient step on K, then the prox net on the kernel grid.
        grad_k = kernel_gradient(x, blur_down(x, k, s) - lr, self.kernel_size, s)
        z = k - gamma[0] / 10.0 * grad_k
        z = jnp.repeat(z[..., None], self.kernel_replicas, axis=-1)
        out = ProxResNet(self.prox_blocks, name="k_prox")(jnp.concatenate([z, aux_k], axis=-1).astype(dtype))
        k = nn.relu(jnp.mean(out[..., :self.kernel_replicas].astype(k.dtype), axis=-1) + 1e-5)
        k = k / jnp.sum(k, axis=(1, 2), keepdims=True)
        aux_k = out[..., self.kernel_replicas:]

        # X-net: the transposed-convolution gradient, evened out by K ⊗ₛᵀ 1, then the prox net.
        grad_x = transposed_blur(blur_down(x, k, s) - lr, k, s)
        overlap = transposed_blur(jnp.ones(lr.shape[:3] + (1,), lr.dtype), k, s)
        grad_x = grad_x / (overlap + 1e-10)
        feats = jnp.concatenate([space_to_depth(x, s), space_to_depth(grad_x, s), lr, aux_x], axis=-1)
        out = ProxResNet(self.prox_blocks, name="x_prox")(feats.astype(dtype))
        image = c * s * s
        x = pixel_shuffle(out[..., :image].astype(x.dtype), s)
        aux_x = out[..., 2 * image + c:]
        return (x, k, aux_x, aux_k), {"sr": x, "kernel": k}


def _laplacian_init(key, shape, dtype=jnp.float32):
    """Every (in, out) 3x3 slice set to [[0,1,0],[1,-4,1],[0,1,0]], as the official AV_X_ker."""
    lap = jnp.asarray([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype)
    return jnp.broadcast_to(lap[:, :, None, None], shape).astype(dtype)


class KXNet(nn.Module):
    """KXNet with `num_stages` stages of separate parameters (paper: T = 19).

    Kernel sizes of the paper: 21 in setting 1; 11/15/21 at x2/x3/x4 in setting 2.
    `aux_kernel_init` picks the official A_K initialisation: "iso" (setting 1) or "aniso".
    """
    scale: int = 4
    channels: int = 3
    kernel_size: int = 21
    num_stages: int = 19
    aux_x_features: int = 32
    aux_k_features: int = 24
    kernel_replicas: int = 3
    prox_blocks: int = 4
    aux_kernel_init: str = "aniso"
    remat: bool = False
    scan_unroll: int = 1  # iterations per loop trip; 0 = all (unrolled). Configs: -1 = per platform (models.create)
    dtype: str = "float32"  # compute dtype of the prox nets ("bfloat16" for accelerators); see KXStage

    def _check(self, lr: Array, num_iters) -> int:
        _checks.check_scale("scale", self.scale)
        _checks.check_odd_size("kernel_size", self.kernel_size)
        if self.aux_kernel_init not in AUX_KERNEL_INITS:
            raise ValueError(f"aux_kernel_init must be one of {AUX_KERNEL_INITS}, got {self.aux_kernel_init!r}")
        for name in ("num_stages", "aux_x_features", "aux_k_features", "kernel_replicas", "scan_unroll"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < (0 if name == "scan_unroll" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'scan_unroll' else 'positive'} int, "
                                 f"got {value!r}")
        with jax.ensure_compile_time_eval():  # NaN check on concrete inputs even under jit
            _checks.check_images("lr", lr, channels=(self.channels,))
        h, w = lr.shape[1:3]
        if self.kernel_size // 2 >= self.scale * min(h, w):
            raise ValueError(f"lr of spatial size {h}x{w} is too small for {self.kernel_size}x{self.kernel_size} "
                             f"kernels at x{self.scale} (reflect padding needs s*min(h, w) > {self.kernel_size // 2})")
        iters = self.num_stages if num_iters is None else num_iters
        if not isinstance(iters, (int, np.integer)) or not 1 <= iters <= self.num_stages:
            raise ValueError(f"num_iters must be an int in [1, num_stages={self.num_stages}] (each stage has its "
                             f"own parameters), got {num_iters!r}")
        return int(iters)

    @nn.compact
    def __call__(self, lr: Array, num_iters: int | None = None) -> dict[str, Array]:
        iters = self._check(lr, num_iters)
        if self.is_initializing():
            iters = self.num_stages  # init creates every stage's parameters
        n, s, size = lr.shape[0], self.scale, self.kernel_size

        with jax.ensure_compile_time_eval():  # a concrete `lr` closed over by jit: checks stay eager
            x0 = resize_bicubic_torch(lr, scale=s, align_corners=False)
        k0 = jnp.broadcast_to(initial_kernel(size), (n, size, size)).astype(lr.dtype)
        aux_kernel = self.param("aux_x_kernel", _laplacian_init, (3, 3, self.channels, self.aux_x_features))
        aux_x0 = jax.lax.conv_general_dilated(
            lr, aux_kernel.astype(lr.dtype), (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST).astype(compute_dtype(self.dtype))
        kernel_map = self.param("aux_kernel_map", self._kernel_map_init, (self.aux_k_features, size, size))
        aux_k0 = jnp.broadcast_to(jnp.transpose(kernel_map, (1, 2, 0)),
                                  (n, size, size, self.aux_k_features)).astype(compute_dtype(self.dtype))

        unroll = scan_unroll(self.scan_unroll, iters)
        stage = remat_cell(KXStage, unroll) if self.remat else KXStage
        loop = nn.scan(stage, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=nn.broadcast, length=iters, unroll=unroll)
        if iters < self.num_stages:  # run the first `iters` stages with their own parameters
            loop = nn.map_variables(loop, "params", trans_in_fn=lambda v: jax.tree.map(lambda a: a[:iters], v))
        stages = loop(s, size, self.kernel_replicas, self.prox_blocks, self.dtype, name="stages")
        _, outputs = stages((x0, k0, aux_x0, aux_k0), lr)
        return outputs

    def _kernel_map_init(self, key, shape, dtype=jnp.float32):
        base = auxiliary_kernel_map(self.kernel_size, self.aux_kernel_init)
        if shape[0] != base.shape[0]:  # another width (tests, tiny configs): the 24 maps cut or cycled
            base = np.resize(base, shape)
        return jnp.asarray(base, dtype)


# ----------------------------------------------------------------------------- training-loop API
def create_model(cfg, pca_matrix=None) -> KXNet:
    """KXNet from `cfg.scale` and `cfg.model`. `pca_matrix` is accepted for the common
    signature and ignored: KXNet works on kernels."""
    del pca_matrix
    return module_from_config(KXNet, cfg, names=("kxnet",))


def paper_iter_weights(num_iters: int, middle: float = 0.1, last: float = 1.0) -> tuple[float, ...]:
    """αₜ = βₜ: `middle` for stages 1..T-1 and `last` for stage T (paper: 0.1 and 1)."""
    return (middle,) * (num_iters - 1) + (last,)


def compute_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], cfg) -> tuple[Array, dict]:
    """Σₜ αₜ‖K − Kᵗ‖₁ + βₜ‖X − Xᵗ‖₁ with mean-reduced L1 (`nn.L1Loss`), Eq. (12).

    `cfg.loss.iter_weights` (one weight per stage, used for both terms) overrides the paper's
    0.1 / 1 weights (`cfg.loss.middle_weight`, `cfg.loss.last_weight`); `cfg.loss.kernel_weight`
    (default 1) scales the kernel term.
    """
    loss_cfg = cfg.get("loss", None) or {}
    num_iters = outputs["sr"].shape[0]
    weights = loss_cfg.get("iter_weights", None)
    if weights is None:
        weights = paper_iter_weights(num_iters, float(loss_cfg.get("middle_weight", 0.1)),
                                     float(loss_cfg.get("last_weight", 1.0)))
    kernel_weight = float(loss_cfg.get("kernel_weight", 1.0))

    sr_total, sr_per_iter = losses.iterated_l1(outputs["sr"], batch["hr"], weights)
    k_total, k_per_iter = losses.iterated_l1(outputs["kernel"], batch["kernel"], weights)
    loss = sr_total + kernel_weight * k_total
    metrics = {"loss": loss, "l1_sr": sr_total, "l1_kernel": k_total,
               "l1_sr_last": sr_per_iter[-1], "l1_kernel_last": k_per_iter[-1]}
    for t in range(num_iters):
        metrics[f"l1_sr_iter{t}"] = sr_per_iter[t]
        metrics[f"l1_kernel_iter{t}"] = k_per_iter[t]
    return loss, metrics


def truncate_stages(variables: Mapping[str, Any], num_stages: int) -> dict:
    """Variables of the first `num_stages` stages, for `model.clone(num_stages=num_stages)`."""
    params = dict(variables["params"])
    params["stages"] = jax.tree.map(lambda a: a[:num_stages], params["stages"])
    return {**variables, "params": params}


# ----------------------------------------------------------------------------- official checkpoints
# The official model keeps one module per stage (`K_stage.{t}`, `X_stage.{t}`); jaxsr stacks them
# on a leading axis. `stack_official_stages` turns a state dict into that stacked form, where the
# stage index of a key is replaced by "*" and convs are already HWIO; `official_key_map` maps it.
_STAGE_PREFIXES = (("K_stage", "K_ProNet", "resk", "k_prox"), ("X_stage", "X_ProNet", "resx", "x_prox"))


def _prox_keys(model: KXNet) -> dict[str, tuple[str, ...]]:
    """Stacked official key -> Flax path below `stages`, for both prox nets."""
    out = {}
    for stage, prox, res, flax_name in _STAGE_PREFIXES:
        for i in range(model.prox_blocks):
            for conv, suffix in ((0, "conv1"), (2, "conv2")):
                for leaf, flax_leaf in (("weight", "kernel"), ("bias", "bias")):
                    out[f"{stage}.*.{prox}.{res}{i + 1}.{conv}.{leaf}"] = (flax_name, f"block{i}_{suffix}", flax_leaf)
        for leaf, flax_leaf in (("weight", "kernel"), ("bias", "bias")):
            out[f"{stage}.*.{prox}.{res}{model.prox_blocks + 1}.0.{leaf}"] = (flax_name, "out", flax_leaf)
    return out


def stack_official_stages(state_dict: Mapping[str, Any], model: KXNet) -> dict[str, np.ndarray]:
    """Official state dict -> the stacked form `official_key_map` describes.

    Per-stage conv weights (OIHW) become one (T, kh, kw, I, O) array per layer, biases (T, O).
    Keys of stages beyond `model.num_stages` are left as they are (the converter then reports
    them as unexpected); a layer missing in some stages raises `ValueError` naming the keys.
    """
    sd = strip_prefix(state_dict)
    out = dict(sd)
    missing = []
    for stacked in _prox_keys(model):
        keys = [stacked.replace("*", str(t)) for t in range(model.num_stages)]
        absent = [k for k in keys if k not in sd]
        if len(absent) == len(keys):
            continue  # wholly absent: the converter lists the stacked key as missing
        if absent:
            missing += absent
            continue
        arrays = [np.asarray(sd[k]) for k in keys]
        if arrays[0].ndim == 4:
            arrays = [np.transpose(a, (2, 3, 1, 0)) for a in arrays]  # OIHW -> HWIO
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"official checkpoint: {stacked} has different shapes across stages: "
                             f"{sorted({a.shape for a in arrays})}")
        out[stacked] = np.stack(arrays)
        for k in keys:
            del out[k]
    if missing:
        raise ValueError(f"official checkpoint lacks {len(missing)} per-stage keys for "
                         f"{model.num_stages} stages: {', '.join(missing)}")
    return out


def official_key_map(model: KXNet) -> dict[str, tuple[tuple[str, ...], str]]:
    """Stacked official key -> (Flax path, transform); see `stack_official_stages`."""
    out = {key: (("stages",) + path, "identity") for key, path in _prox_keys(model).items()}
    out["gamma_stage"] = (("stages", "gamma"), "identity")  # (T, 1) in both
    out["eta_stage"] = (("stages", "eta"), "identity")
    out["AV_X_ker"] = (("aux_x_kernel",), "conv")
    out["kernel_map"] = (("aux_kernel_map",), "identity")  # (24, k, k) in both
    return out


def official_buffers(model: KXNet) -> dict[str, tuple[int, ...]]:
    """The frozen copy of the initial auxiliary kernel map that official checkpoints carry."""
    return {"kernel_map0": (model.aux_k_features, model.kernel_size, model.kernel_size)}


def official_extras(buffers: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """`kernel_map0` is never read by the forward pass; it is returned for reference only."""
    if "kernel_map0" in buffers:
        return {"initial_aux_kernel_map": np.asarray(buffers["kernel_map0"], np.float32)}
    return {}


OFFICIAL = OfficialMap(official_key_map, official_buffers, official_extras,
                       prepare_state_dict=stack_official_stages)
SPEC = ModelSpec(name="kxnet", create=create_model, loss=compute_loss, official=OFFICIAL)
