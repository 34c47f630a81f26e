"""USRNet checkpoint import: a PyTorch USRNet written here with the official state-dict names
(`p.m_head`, `p.m_down1.0.res.0`, ..., `h.mlp.4`), random weights, converted with
`jaxsr.torch_import.convert_state_dict` and compared output for output."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from jaxsr import predict as predict_lib, torch_import  # noqa: E402
from jaxsr.models import kenet as K  # noqa: E402
from jaxsr.models import usrnet as U  # noqa: E402


# ----------------------------------------------------------------------------- PyTorch reference
class TorchResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.res = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.ReLU(),
                                 nn.Conv2d(c, c, 3, padding=1, bias=False))

    def forward(self, x):
        return x + self.res(x)


class TorchResUNet(nn.Module):
    def __init__(self, nc, nb, in_nc=4, out_nc=3):
        super().__init__()
        rbs = lambda c: [TorchResBlock(c) for _ in range(nb)]
        self.m_head = nn.Conv2d(in_nc, nc[0], 3, padding=1, bias=False)
        self.m_down1 = nn.Sequential(*rbs(nc[0]), nn.Conv2d(nc[0], nc[1], 2, stride=2, bias=False))
        self.m_down2 = nn.Sequential(*rbs(nc[1]), nn.Conv2d(nc[1], nc[2], 2, stride=2, bias=False))
        self.m_down3 = nn.Sequential(*rbs(nc[2]), nn.Conv2d(nc[2], nc[3], 2, stride=2, bias=False))
        self.m_body = nn.Sequential(*rbs(nc[3]))
        self.m_up3 = nn.Sequential(nn.ConvTranspose2d(nc[3], nc[2], 2, stride=2, bias=False), *rbs(nc[2]))
        self.m_up2 = nn.Sequential(nn.ConvTranspose2d(nc[2], nc[1], 2, stride=2, bias=False), *rbs(nc[1]))
        self.m_up1 = nn.Sequential(nn.ConvTranspose2d(nc[1], nc[0], 2, stride=2, bias=False), *rbs(nc[0]))
        self.m_tail = nn.Conv2d(nc[0], out_nc, 3, padding=1, bias=False)

    def forward(self, x):
        h, w = x.shape[-2:]
        x = nn.functional.pad(x, (0, -w % 8, 0, -h % 8), mode="replicate")
        x1 = self.m_head(x)
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        y = self.m_body(x4)
        y = self.m_up3(y + x4)
        y = self.m_up2(y + x3)
        y = self.m_up1(y + x2)
        return self.m_tail(y + x1)[..., :h, :w]


class TorchHyPaNet(nn.Module):
    def __init__(self, out_nc, c):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(2, c, 1), nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(),
                                 nn.Conv2d(c, out_nc, 1), nn.Softplus())

    def forward(self, x):
        return self.mlp(x) + 1e-6


def torch_solve(x, otf, fy, alpha, sf):
    """Closed-form data step with complex torch tensors (N, C, sH, sW)."""
    def blocks(t):
        n, c, sh, sw = t.shape
        return t.reshape(n, c, sf, sh // sf, sf, sw // sf).mean(dim=(2, 4))

    fr = fy + torch.fft.fft2(alpha * x)
    inv = blocks(otf * fr) / (blocks(otf.abs() ** 2) + alpha)
    return torch.fft.ifft2((fr - otf.conj() * inv.repeat(1, 1, sf, sf)) / alpha).real


class TorchUSRNet(nn.Module):
    def __init__(self, n_iter, h_nc, nc, nb):
        super().__init__()
        self.p = TorchResUNet(nc, nb)
        self.h = TorchHyPaNet(2 * n_iter, h_nc)
        self.n = n_iter

    def forward(self, x, k, sf, sigma):
        """x (N, 3, h, w); k (N, 1, kh, kw) convolution PSF; sigma (N, 1, 1, 1) in [0, 1] units."""
        n, _, h, w = x.shape
        kh, kw = k.shape[-2:]
        canvas = torch.zeros(n, 1, h * sf, w * sf, dtype=x.dtype)
        canvas[..., :kh, :kw] = k
        otf = torch.fft.fft2(torch.roll(canvas, (-(kh // 2), -(kw // 2)), dims=(2, 3)))
        up = torch.zeros(n, x.shape[1], h * sf, w * sf, dtype=x.dtype)
        up[..., ::sf, ::sf] = x
        fy = otf.conj() * torch.fft.fft2(up)
        z = nn.functional.interpolate(x, scale_factor=sf, mode="nearest")
        ab = self.h(torch.cat([sigma, torch.full_like(sigma, float(sf))], dim=1))
        for i in range(self.n):
            z = torch_solve(z, otf, fy, ab[:, i:i + 1], sf)
            z = self.p(torch.cat([z, ab[:, self.n + i:self.n + i + 1].expand(-1, 1, *z.shape[-2:])], dim=1))
        return z


# ----------------------------------------------------------------------------- helpers
SMALL = dict(num_iters=2, features=(8, 8, 16, 16), num_blocks=2, hyper_features=8)


@pytest.fixture
def usrnet_arch():
    """USRNet's official map, from its model file."""
    return U.OFFICIAL


def torch_model(fields, seed=0):
    torch.manual_seed(seed)
    net = TorchUSRNet(fields["num_iters"], fields["hyper_features"], list(fields["features"]), fields["num_blocks"])
    with torch.no_grad():  # larger than the default init so the stages do not fade to ~0
        for p in net.parameters():
            p.mul_(1.5)
    return net.eval()


def inputs(scale, n=2, h=9, w=7, k=7, seed=0):
    rng = np.random.default_rng(seed)
    lr = rng.random((n, h, w, 3)).astype(np.float32)
    kern = rng.random((n, k, k)).astype(np.float32) ** 2
    kern /= kern.sum(axis=(1, 2), keepdims=True)
    sigma = np.array([3.0, 20.0][:n], np.float32)
    return lr, kern, sigma


def run_torch(net, lr, kernel, sigma, scale):
    with torch.no_grad():
        out = net(torch.from_numpy(lr.transpose(0, 3, 1, 2).copy()),
                  torch.from_numpy(kernel[:, None, ::-1, ::-1].copy()),  # jaxsr correlation -> convolution PSF
                  scale, torch.from_numpy(sigma / 255.0).view(-1, 1, 1, 1))
    return out.numpy().transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_converted_weights_reproduce_pytorch(scale, usrnet_arch):
    net = torch_model(SMALL, seed=scale)
    model = U.USRNet(scale=scale, **SMALL)
    params, extras = torch_import.convert_state_dict(net.state_dict(), model, usrnet_arch)
    assert extras == {}
    lr, kernel, sigma = inputs(scale, h=9 if scale != 4 else 5, w=7 if scale != 4 else 6, seed=scale)
    want = run_torch(net, lr, kernel, sigma, scale)
    out = model.apply({"params": params}, jnp.asarray(lr), jnp.asarray(kernel), jnp.asarray(sigma))
    got = np.asarray(out["sr"][-1])
    assert got.shape == want.shape == (2, scale * lr.shape[1], scale * lr.shape[2], 3)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)


def test_key_map_covers_the_official_names(usrnet_arch):
    """Every official parameter at the official x4 configuration is mapped, with the official names."""
    km = U.official_key_map(U.USRNet(scale=4))
    torch_keys = set(TorchUSRNet(8, 64, [64, 128, 256, 512], 2).state_dict())
    assert set(km) == torch_keys
    assert {"p.m_head.weight", "p.m_down1.2.weight", "p.m_up3.0.weight", "p.m_up1.2.res.2.weight",
            "p.m_tail.weight", "h.mlp.4.bias"} <= set(km)


def test_mismatched_checkpoint_names_the_keys(usrnet_arch):
    net = torch_model(dict(SMALL, num_blocks=1))
    with pytest.raises(ValueError, match=r"missing .*p\.m_down1\.1\.res\.0\.weight"):
        torch_import.convert_state_dict(net.state_dict(), U.USRNet(scale=2, **SMALL), usrnet_arch)


def test_official_pth_drives_the_kenet_pipeline(tmp_path, usrnet_arch, monkeypatch):
    """cfg.pipeline.usrnet_official: an official .pth (a small stand-in variant) becomes KENet's restorer."""
    monkeypatch.setitem(U.OFFICIAL_VARIANTS, "small", SMALL)
    net = torch_model(SMALL, seed=9)
    path = tmp_path / "usrnet_tiny.pth"
    torch.save(net.state_dict(), path)
    cfg = ml_collections.ConfigDict({
        "scale": 2, "eval": {"noise": 0.0},
        "pipeline": {"usrnet_workdir": "", "usrnet_official": str(path), "usrnet_official_variant": "small",
                     "usrnet_num_iters": -1}})
    kenet = K.KENet(kernel_size=7, features=4, fc_features=16)
    shapes = jax.eval_shape(kenet.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    rng = np.random.default_rng(0)
    kparams = jax.tree.map(lambda x: jnp.asarray(rng.uniform(-0.3, 0.3, x.shape), jnp.float32), shapes)
    usr_model, usr_params, _, _ = predict_lib.load_restorer(cfg, U.SPEC)
    predict = predict_lib.two_step(predict_lib.bind(K.SPEC, kenet, kparams), predict_lib.bind(U.SPEC, usr_model, usr_params))
    lr, kernel, _ = inputs(2, h=8, w=8, k=7, seed=4)
    sr, est = predict(jnp.asarray(lr))
    assert est.shape == (2, 7, 7)
    want = run_torch(net, lr, np.asarray(est), np.zeros(2, np.float32), 2)
    np.testing.assert_allclose(np.asarray(sr), want, atol=1e-5 * np.abs(want).max(), rtol=0)
    sr_gt, none = predict(jnp.asarray(lr), jnp.asarray(kernel))  # the GT-kernel path
    assert none is None
    np.testing.assert_allclose(np.asarray(sr_gt), run_torch(net, lr, kernel, np.zeros(2, np.float32), 2),
                               atol=1e-5 * np.abs(want).max(), rtol=0)
    with pytest.raises(ValueError, match="exactly one of"):
        predict_lib.load_restorer(ml_collections.ConfigDict({"scale": 2, "eval": {"noise": 0.0}, "pipeline": {
            "usrnet_workdir": "", "usrnet_official": ""}}), U.SPEC)
