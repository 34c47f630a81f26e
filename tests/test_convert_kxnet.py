"""Official-checkpoint import for KXNet: a reduced PyTorch KXNet with the official key names and
shapes (written here from the paper's equations and the official layer layout) must give the same
outputs as jaxsr after conversion; bad checkpoints are rejected naming the offending keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn, F = torch.nn, torch.nn.functional

import dataclasses  # noqa: E402

from jaxsr import torch_import  # noqa: E402
from jaxsr.models import kxnet  # noqa: E402

T, AUX_X, AUX_K = 2, 4, 5
SIZES = {2: 7, 3: 9, 4: 11}  # reduced kernel sizes per scale


# ----------------------------------------------------------------------------- PyTorch reference
class TorchProx(tnn.Module):
    """`{name}1..4`: conv-ReLU-conv residual blocks; `{name}5`: the last conv (skip from the input)."""

    def __init__(self, ch, name, blocks=4):
        super().__init__()
        self.name, self.blocks = name, blocks
        for i in range(1, blocks + 1):
            setattr(self, f"{name}{i}", tnn.Sequential(tnn.Conv2d(ch, ch, 3, 1, 1), tnn.ReLU(),
                                                       tnn.Conv2d(ch, ch, 3, 1, 1)))
        setattr(self, f"{name}{blocks + 1}", tnn.Sequential(tnn.Conv2d(ch, ch, 3, 1, 1)))

    def forward(self, x):
        y = x
        for i in range(1, self.blocks + 1):
            y = F.relu(y + 0.1 * getattr(self, f"{self.name}{i}")(y))
        return F.relu(x + 0.1 * getattr(self, f"{self.name}{self.blocks + 1}")(y))


class TorchKNet(tnn.Module):
    def __init__(self, aux_k=AUX_K):
        super().__init__()
        self.K_ProNet = TorchProx(3 + aux_k, "resk")


class TorchXNet(tnn.Module):
    def __init__(self, scale, aux_x=AUX_X):
        super().__init__()
        self.X_ProNet = TorchProx(6 * scale ** 2 + 3 + aux_x, "resx")


def strided_blur(x, k, s):
    """Reflect-padded per-image correlation evaluated at every s-th pixel."""
    b, c, _, _ = x.shape
    size = k.shape[-1]
    xp = F.pad(x, [size // 2] * 4, mode="reflect").reshape(1, b * c, x.shape[2] + size - 1, -1)
    w = k[:, None].repeat(1, c, 1, 1).reshape(b * c, 1, size, size)
    out = F.conv2d(xp, w, stride=s, groups=b * c)
    return out.reshape(b, c, out.shape[-2], out.shape[-1])


def conv_transpose(e, k, s):
    b, c, h, w = e.shape
    size = k.shape[-1]
    wgt = k[:, None].repeat(1, c, 1, 1).reshape(b * c, 1, size, size)
    out = F.conv_transpose2d(e.reshape(1, b * c, h, w), wgt, stride=s, padding=size // 2, output_padding=s - 1,
                             groups=b * c)
    return out.reshape(b, c, s * h, s * w)


class TorchKXNet(tnn.Module):
    """`stages` stages; A_K has as many maps as `kernel_map` (k_aux, size, size), A_X `aux_x`."""

    def __init__(self, scale, size, kernel_map, stages=T, aux_x=AUX_X):
        super().__init__()
        self.scale, self.size, self.stages = scale, size, stages
        aux_k = len(kernel_map)
        self.X_stage = tnn.Sequential(*[TorchXNet(scale, aux_x) for _ in range(stages)])
        self.K_stage = tnn.Sequential(*[TorchKNet(aux_k) for _ in range(stages)])
        self.AV_X_ker = tnn.Parameter(torch.randn(aux_x, 3, 3, 3) * 0.3)
        kernel_map = torch.tensor(np.array(kernel_map))
        self.kernel_map0 = tnn.Parameter(kernel_map.clone(), requires_grad=False)
        self.kernel_map = tnn.Parameter(kernel_map + 0.01 * torch.rand_like(kernel_map))
        self.gamma_stage = tnn.Parameter(torch.rand(stages, 1) + 0.5)
        self.eta_stage = tnn.Parameter(torch.rand(stages, 1))

    def forward(self, y):
        s, size = self.scale, self.size
        b, c, h, w = y.shape
        x = F.interpolate(y, scale_factor=s, mode="bicubic", align_corners=False)
        ax = np.arange(size) - size // 2
        g = np.exp(-ax ** 2 / 2.0)
        k = torch.as_tensor(np.outer(g, g) / np.outer(g, g).sum(), dtype=torch.float32)[None].repeat(b, 1, 1)
        av_x = F.conv2d(y, self.AV_X_ker, padding=1)
        av_k = self.kernel_map[None].repeat(b, 1, 1, 1)
        srs, kernels = [], []
        for t in range(self.stages):
            # K-net: gradient through the explicit (dense) unfold of the reflect-padded X
            r = (strided_blur(x, k, s) - y).reshape(b, c, 1, h * w)
            cols = F.unfold(F.pad(x, [size // 2] * 4, mode="reflect"), size, stride=s).reshape(b, c, size * size, h * w)
            grad = (cols * r).sum(dim=(1, 3)).reshape(b, size, size) / (c * h * w)
            z = (k - self.gamma_stage[t] / 10 * grad)[:, None].repeat(1, 3, 1, 1)
            out = self.K_stage[t].K_ProNet(torch.cat([z, av_k], 1))
            k = F.relu(out[:, :3].mean(dim=1) + 1e-5)
            k = k / k.sum(dim=(1, 2), keepdim=True)
            av_k = out[:, 3:]
            # X-net
            e = strided_blur(x, k, s) - y
            g_x = conv_transpose(e, k, s) / (conv_transpose(torch.ones_like(e), k, s) + 1e-10)
            feats = torch.cat([F.pixel_unshuffle(x, s), F.pixel_unshuffle(g_x, s), y, av_x], 1)
            out = self.X_stage[t].X_ProNet(feats)
            x = F.pixel_shuffle(out[:, :3 * s * s], s)
            av_x = out[:, 6 * s * s + 3:]
            srs.append(x)
            kernels.append(k)
        return torch.stack(srs), torch.stack(kernels)


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def kx_arch():
    """KXNet's official map without the stacking hook: these tests stack the per-stage keys themselves."""
    return dataclasses.replace(kxnet.OFFICIAL, prepare_state_dict=None)


def jax_model(scale):
    return kxnet.KXNet(scale=scale, kernel_size=SIZES[scale], num_stages=T, aux_x_features=AUX_X,
                       aux_k_features=AUX_K)


def torch_model(scale, seed=0):
    torch.manual_seed(seed)
    return TorchKXNet(scale, SIZES[scale], kxnet.auxiliary_kernel_map(SIZES[scale], "aniso")[:AUX_K]).eval()


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("scale,h,w", [(2, 6, 9), (3, 5, 4), (4, 5, 7)])
def test_converted_checkpoint_reproduces_pytorch(kx_arch, scale, h, w):
    tm = torch_model(scale)
    y = np.random.default_rng(scale).random((2, 3, h, w)).astype(np.float32)
    with torch.no_grad():
        want_sr, want_k = (a.numpy() for a in tm(torch.from_numpy(y)))

    model = jax_model(scale)
    params, extras = torch_import.convert_state_dict(kxnet.stack_official_stages(tm.state_dict(), model), model, kx_arch)
    np.testing.assert_array_equal(extras["initial_aux_kernel_map"], tm.kernel_map0.detach().numpy())
    n_state = sum(v.numel() for v in tm.state_dict().values())
    n_train = sum(p.numel() for p in tm.parameters() if p.requires_grad)
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params)) == n_train == n_state - AUX_K * SIZES[scale] ** 2

    out = jax.jit(model.apply)({"params": params}, jnp.asarray(y.transpose(0, 2, 3, 1)))
    got_sr = np.asarray(out["sr"]).transpose(0, 1, 4, 2, 3)
    assert got_sr.shape == want_sr.shape == (T, 2, 3, scale * h, scale * w)
    np.testing.assert_allclose(got_sr, want_sr, rtol=1e-5, atol=1e-5 * np.abs(want_sr).max())
    np.testing.assert_allclose(np.asarray(out["kernel"]), want_k, rtol=1e-5, atol=1e-5 * np.abs(want_k).max())


def test_module_prefix_and_fewer_stages(kx_arch):
    """DataParallel's `module.` prefix is accepted; a checkpoint with more stages than the model
    has its extra stages reported as unexpected keys."""
    tm = torch_model(2)
    sd = {f"module.{k}": v for k, v in tm.state_dict().items()}
    model = jax_model(2)
    params, _ = torch_import.convert_state_dict(kxnet.stack_official_stages(sd, model), model, kx_arch)
    assert params["stages"]["gamma"].shape == (T, 1)
    np.testing.assert_array_equal(params["stages"]["gamma"], tm.gamma_stage.detach().numpy())
    short = model.clone(num_stages=1)
    with pytest.raises(ValueError, match=r"unexpected .*X_stage\.1\.X_ProNet\.resx1\.0\.weight"):
        torch_import.convert_state_dict(kxnet.stack_official_stages(sd, short), short, kx_arch)


def test_bad_checkpoints_name_the_keys(kx_arch):
    model = jax_model(2)
    sd = {k: v.numpy().copy() for k, v in torch_model(2).state_dict().items()}
    partial = dict(sd)
    del partial["K_stage.1.K_ProNet.resk3.2.bias"]
    with pytest.raises(ValueError, match=r"K_stage\.1\.K_ProNet\.resk3\.2\.bias"):
        kxnet.stack_official_stages(partial, model)
    wrong = dict(sd, AV_X_ker=np.zeros((AUX_X + 1, 3, 3, 3), np.float32), kernel_map0=np.zeros((3, 7, 7)))
    with pytest.raises(ValueError, match=r"mis-shaped.*AV_X_ker.*kernel_map0"):
        torch_import.convert_state_dict(kxnet.stack_official_stages(wrong, model), model, kx_arch)
    missing = {k: v for k, v in sd.items() if k != "eta_stage"}
    with pytest.raises(ValueError, match=r"missing \(1\): eta_stage"):
        torch_import.convert_state_dict(kxnet.stack_official_stages(missing, model), model, kx_arch)


def test_official_x4_checkpoint_layout():
    """At the official x4 configuration the key map covers the module's 27,571,214 trainable values
    (19 stages x 2 prox nets x 18 tensors, + gamma, eta, AV_X_ker, kernel_map), and the checkpoint
    adds the frozen 24x21x21 `kernel_map0` (27,581,798 values in all)."""
    model = kxnet.KXNet(scale=4, kernel_size=21)
    key_map = kxnet.official_key_map(model)
    assert sum(19 if "*" in k else 1 for k in key_map) == 19 * 2 * 18 + 4
    flat = jax.tree_util.tree_flatten_with_path(torch_import.traced_param_shapes(model))[0]
    shapes = {tuple(p.key for p in path): leaf.shape for path, leaf in flat}
    assert {path for path, _ in key_map.values()} == set(shapes)
    n = sum(int(np.prod(shape)) for shape in shapes.values())
    assert n == 27_571_214
    assert n + int(np.prod(kxnet.official_buffers(model)["kernel_map0"])) == 27_581_798
