"""Importing official DSSR weights: a PyTorch model with the official key names and layer
order (written here from the released code's structure), random weights, converted with
`jaxsr.torch_import.convert_state_dict`, must give the same details, per-step and averaged outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import torch_import
from jaxsr.models import dssr

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

GEOMETRY = {2: (4, 1), 3: (5, 1), 4: (4, 0)}  # official (kernel, padding) of `up` / `down`


class RB(tnn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1, self.conv2 = tnn.Conv2d(ch, ch, 3, padding=1), tnn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + 0.2 * self.conv2(F.leaky_relu(self.conv1(x), 0.2))


class Chain(tnn.Module):
    """Holds `crb` (a Sequential of RBs) and adds the chain's input; the official code nests
    it once more, hence keys like `feat_ext.crb.crb.0.conv1.weight`."""

    def __init__(self, ch, n):
        super().__init__()
        self.crb = tnn.Sequential(*[RB(ch) for _ in range(n)])

    def forward(self, x):
        return self.crb(x) + x


class Wrapped(tnn.Module):
    def __init__(self, ch, n):
        super().__init__()
        self.crb = Chain(ch, n)

    def forward(self, x):
        return self.crb(x)


class Affine(tnn.Module):
    def __init__(self, ch):
        super().__init__()
        for i in range(1, 5):
            setattr(self, f"conv{i}", tnn.Conv2d(ch, ch, 3, padding=1))
        self.conv_gama, self.conv_beta = tnn.Conv2d(ch, ch, 1), tnn.Conv2d(ch, ch, 1)

    def forward(self, d):
        for i in range(1, 5):
            d = F.leaky_relu(getattr(self, f"conv{i}")(d), 0.2)
        return torch.sigmoid(self.conv_gama(d)), self.conv_beta(d)


class TorchDSSR(tnn.Module):
    def __init__(self, scale, ch=128, feat_blocks=15, refine_blocks=5, steps=4, colors=3):
        super().__init__()
        self.scale, self.steps = scale, steps
        k, p = GEOMETRY[scale]
        self.conv1 = tnn.Conv2d(colors, ch, 3, padding=1)
        self.feat_ext = Wrapped(ch, feat_blocks)
        self.conv_recon = tnn.Conv2d(ch, colors, 3, padding=1)
        self.spatial_trans1, self.spatial_trans2 = Affine(ch), Affine(ch)
        self.conv2 = tnn.Conv2d(colors, ch, 3, padding=1)
        self.compress_in = tnn.Conv2d(2 * ch, ch, 1)
        self.feat_refine = Wrapped(ch, refine_blocks)
        self.up = tnn.ConvTranspose2d(ch, ch, k, stride=scale, padding=p)
        self.down = tnn.Conv2d(ch, ch, k, stride=scale, padding=p)
        stages = [2, 2] if scale == 4 else [scale]
        layers = []
        for r in stages:
            layers += [tnn.Conv2d(ch, ch * r * r, 3, padding=1), tnn.PixelShuffle(r)]
        self.UPNet = tnn.Sequential(*layers, tnn.Conv2d(ch, colors, 3, padding=1))

    def forward(self, lr):
        bic = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        x = self.conv1(lr)
        hidden = x
        details, outs = [], []
        for _ in range(self.steps):
            x = self.compress_in(torch.cat([x, hidden], 1))
            feat = self.feat_ext(x)
            up = self.up(feat)
            detail = self.conv_recon(up) - bic
            d = self.conv2(detail)
            g1, b1 = self.spatial_trans1(d)
            up = up * g1 + b1 + up
            g2, b2 = self.spatial_trans2(F.interpolate(d, scale_factor=1.0 / self.scale, mode="bicubic",
                                                       align_corners=True))
            hidden = self.down(up) * g2 + b2 + feat
            outs.append(self.UPNet(self.feat_refine(hidden)) + bic)
            details.append(detail)
        return details, outs, sum(outs) / self.steps


def convert(sd, model):
    """The generic importer with the DSSR file's own official map."""
    return torch_import.convert_state_dict(sd, model, dssr.OFFICIAL)


def relative_error(got, want):
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_converted_weights_reproduce_the_official_forward(scale):
    torch.manual_seed(scale)
    net = TorchDSSR(scale, ch=16, feat_blocks=2, refine_blocks=1, steps=3).eval()
    with torch.no_grad():  # larger-than-default weights so every branch visibly matters
        for p in net.parameters():
            p.mul_(2.0)
    lr = np.random.default_rng(scale).random((2, 5, 7, 3)).astype(np.float32)  # odd, non-square
    with torch.no_grad():
        details, outs, mean = net(torch.from_numpy(lr.transpose(0, 3, 1, 2)))
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)

    model = dssr.DSSR(scale=scale, features=16, structure_blocks=2, refine_blocks=1, num_iters=3)
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}  # as saved through DataParallel
    params, extras = convert(sd, model)
    assert extras == {}
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(lr))
    for t in range(3):
        assert relative_error(out["sr"][t], nhwc(outs[t])) <= 1e-5
        assert relative_error(out["detail"][t], nhwc(details[t])) <= 1e-5
    assert relative_error(out["sr_mean"], nhwc(mean)) <= 1e-5
    # the recurrence is exercised: later steps differ from the first
    assert relative_error(nhwc(outs[2]), nhwc(outs[0])) > 1e-3


def test_full_size_checkpoint_maps_every_key():
    net = TorchDSSR(4)
    sd = net.state_dict()
    assert sum(v.numel() for v in sd.values()) == 8_902_278
    params, _ = convert(sd, dssr.DSSR(scale=4))
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params)) == 8_902_278
    # the transposed conv keeps PyTorch's (in, out, k, k) weight, axes reversed
    np.testing.assert_array_equal(params["step"]["up"]["kernel"], sd["up.weight"].numpy().transpose(2, 3, 1, 0))


def test_mismatched_checkpoint_names_the_keys():
    sd = TorchDSSR(2, ch=8, feat_blocks=2, refine_blocks=1).state_dict()
    sd["extra.weight"] = sd.pop("conv2.weight")
    model = dssr.DSSR(scale=2, features=8, structure_blocks=1, refine_blocks=1)
    with pytest.raises(ValueError) as err:
        convert(sd, model)
    msg = str(err.value)
    assert "conv2.weight" in msg and "extra.weight" in msg and "feat_ext.crb.crb.1.conv1.weight" in msg
