"""Official-checkpoint import: a reduced PyTorch DAN with the official key names and shapes
(written here from the published architecture) must give the same outputs as jaxsr after
conversion, and bad checkpoints must be rejected with every offending key named."""
import json
import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

from jaxsr import config_lib, convert, experiment, models, predict, torch_import  # noqa: E402
from jaxsr.models import dan  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

K, CODE, T = 11, 10, 2
V1 = dict(restorer_features=16, restorer_blocks=2, estimator_features=16, estimator_blocks=2)
V2 = dict(restorer_features=16, restorer_blocks=2, restorer_groups=2, estimator_features=16, estimator_blocks=2)


# ----------------------------------------------------------------------------- PyTorch reference
def conv(cin, cout, k, stride=1, pad=None):
    return tnn.Conv2d(cin, cout, k, stride, k // 2 if pad is None else pad)


def upsampler(nf, scale, bare_x1=False):
    if scale == 1 and bare_x1:
        return conv(nf, 3, 3)
    layers = []
    for r in ((2, 2) if scale == 4 else (scale,)):
        layers += [conv(nf, nf * r * r, 3), tnn.PixelShuffle(r)]
    return tnn.Sequential(*layers, conv(nf, 3, 3))


class Gate(tnn.Module):  # channel attention, reduction 16
    def __init__(self, ch):
        super().__init__()
        self.body = tnn.Sequential(conv(ch, ch // 16, 1), tnn.LeakyReLU(0.2), conv(ch // 16, ch, 1), tnn.Sigmoid())

    def forward(self, x):
        return x * self.body(x.mean(dim=(2, 3), keepdim=True))


class CondBlock(tnn.Module):
    def __init__(self, basic, cond):
        super().__init__()
        both = basic + cond
        self.body = tnn.Sequential(conv(both, both, 3), tnn.LeakyReLU(0.2), conv(both, basic, 3), Gate(basic))

    def forward(self, basic, cond):
        return basic + self.body(torch.cat([basic, cond], dim=1))


class TorchRestorerV1(tnn.Module):
    def __init__(self, nf, nb, scale, code=CODE):
        super().__init__()
        self.head = conv(3, nf, 3)
        self.body = tnn.ModuleList([CondBlock(nf, code) for _ in range(nb)])
        self.fusion = conv(nf, nf, 3)
        self.upscale = upsampler(nf, scale)

    def forward(self, lr, code):
        cond = code[:, :, None, None].expand(-1, -1, *lr.shape[2:])
        f = self.head(lr)
        for block in self.body:
            f = block(f, cond)
        return self.upscale(self.fusion(f))


class TorchEstimatorV1(tnn.Module):
    def __init__(self, nf, nb, scale, code=CODE):
        super().__init__()
        self.head_LR = conv(3, nf, 1)
        self.head_HR = conv(3, nf, 9, scale, 4)
        self.body = tnn.ModuleList([CondBlock(nf, nf) for _ in range(nb)])
        self.out = conv(nf, code, 3)

    def forward(self, sr, lr):
        f, cond = self.head_LR(lr), self.head_HR(sr)
        for block in self.body:
            f = block(f, cond)
        return self.out(f).mean(dim=(2, 3))


class DualBlock(tnn.Module):
    def __init__(self, nf, cond_in, k1, k2):
        super().__init__()
        self.body1 = tnn.Sequential(conv(nf, nf, k1), tnn.LeakyReLU(0.2), conv(nf, nf, k1))
        self.body2 = tnn.Sequential(conv(cond_in, nf, k2), tnn.LeakyReLU(0.2), conv(nf, nf, k2))

    def forward(self, f1, f2):
        g = self.body2(f2)
        return f1 + self.body1(f1) * g, f2 + g


class DualGroup(tnn.Module):
    def __init__(self, nf, k1, k2, nb):
        super().__init__()
        self.body = tnn.Sequential(*[DualBlock(nf, nf, k1, k2) for _ in range(nb)])

    def forward(self, f1, f2):
        for block in self.body:
            f1, f2 = block(f1, f2)
        # the released DANv2 code updates its input list in place, so its group "skip"
        # adds the blocks' output to itself
        return 2 * f1, 2 * f2


class TorchRestorerV2(tnn.Module):
    def __init__(self, nf, nb, ng, scale, code=CODE):
        super().__init__()
        self.head1 = conv(3, nf, 3)
        self.head2 = conv(code, nf, 1)
        self.body = tnn.Sequential(*[DualGroup(nf, 3, 1, nb) for _ in range(ng)])
        self.fusion = conv(nf, nf, 3)
        self.upscale = upsampler(nf, scale, bare_x1=True)

    def forward(self, lr, code):
        f1, f2 = self.head1(lr), self.head2(code[:, :, None, None])
        for group in self.body:
            f1, f2 = group(f1, f2)
        return self.upscale(self.fusion(f1))


class TorchEstimatorV2(tnn.Module):
    def __init__(self, nf, nb, scale, k=K):
        super().__init__()
        self.head_LR = tnn.Sequential(conv(3, nf, 5))
        self.head_HR = tnn.Sequential(conv(3, nf, 4 * scale + 1, scale, 2 * scale))
        self.body = DualGroup(nf, 3, 3, nb)
        self.tail = tnn.Sequential(conv(nf, 2 * nf, 3), tnn.AdaptiveAvgPool2d(1), conv(2 * nf, k * k, 1), tnn.Softmax(1))

    def forward(self, sr, lr):
        f, _ = self.body(self.head_LR(lr), self.head_HR(sr))
        return self.tail(f).flatten(1)


class TorchDAN(tnn.Module):
    """`fields` are jaxsr's module fields (default: the reduced V1/V2 here); the kernel size and
    code length come from `matrix` ((k*k, code)); `iters` is T. `forward` returns per-iteration
    lists, as the official network does: a loss on the last SR then back-propagates through the
    last iteration only (a stacked tensor would run every iteration's backward with zero cotangents)."""

    def __init__(self, version, scale, matrix, fields=None, iters=T):
        super().__init__()
        self.version, self.iters = version, iters
        f = fields or (V1 if version == 1 else V2)
        k, code = int(round(matrix.shape[0] ** 0.5)), matrix.shape[1]
        self.kernel_size = k
        if version == 1:
            self.Restorer = TorchRestorerV1(f["restorer_features"], f["restorer_blocks"], scale, code)
            self.Estimator = TorchEstimatorV1(f["estimator_features"], f["estimator_blocks"], scale, code)
        else:
            self.Restorer = TorchRestorerV2(f["restorer_features"], f["restorer_blocks"], f["restorer_groups"], scale,
                                            code)
            self.Estimator = TorchEstimatorV2(f["estimator_features"], f["estimator_blocks"], scale, k)
        self.register_buffer("encoder", torch.from_numpy(matrix)[None])
        dirac = torch.zeros(1, k, k)
        dirac[0, k // 2, k // 2] = 1
        self.register_buffer("init_kernel", dirac)
        self.register_buffer("init_ker_map", dirac.view(1, -1) @ self.encoder[0])

    def forward(self, lr):
        code = self.init_ker_map.repeat(lr.shape[0], 1)
        srs, codes, kernels = [], [], []
        for _ in range(self.iters):
            sr = self.Restorer(lr, code.detach())
            if self.version == 1:
                code = self.Estimator(sr.detach(), lr)
                kernel = code @ self.encoder[0].T
            else:
                kernel = self.Estimator(sr.detach(), lr)
                code = kernel @ self.encoder[0]
            srs.append(sr)
            codes.append(code)
            kernels.append(kernel.view(-1, self.kernel_size, self.kernel_size))
        return srs, codes, kernels


# ----------------------------------------------------------------------------- helpers
def pca_matrix(seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((K * K, CODE)))
    return q.astype(np.float32)


def reference(version, scale, seed=0):
    torch.manual_seed(seed)
    net = TorchDAN(version, scale, pca_matrix(seed)).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a dropped bias would show
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
    return net


def jax_model(version, scale):
    fields = V1 if version == 1 else V2
    return dan.MODELS[f"danv{version}"](scale=scale, kernel_size=K, code_length=CODE, num_iters=T, **fields)


def state_dict(net, prefix=""):
    return {prefix + k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def rel_err(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def stacked_outputs(net, lr_nchw):
    """SRs, codes and kernels of every iteration as (T, ...) arrays."""
    with torch.no_grad():
        return tuple(torch.stack(x).numpy() for x in net(torch.from_numpy(lr_nchw)))


def assert_same_outputs(net, model, params, lr_nchw):
    srs, codes, kernels = stacked_outputs(net, lr_nchw)
    out = model.apply({"params": params}, jnp.asarray(lr_nchw.transpose(0, 2, 3, 1)))
    assert rel_err(out["sr"], srs.transpose(0, 1, 3, 4, 2)) <= 1e-5
    assert rel_err(out["code"], codes) <= 1e-5
    assert rel_err(out["kernel"], kernels) <= 1e-5


LR = np.random.default_rng(3).random((2, 3, 7, 10)).astype(np.float32)  # non-square


# ----------------------------------------------------------------------------- tests
def convert_dan(sd, model):
    """The generic importer with the DAN file's own official map."""
    name = "danv1" if isinstance(model, dan.DANv1) else "danv2"
    return torch_import.convert_state_dict(sd, model, dan.SPECS[name].official)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_converted_weights_reproduce_pytorch(version, scale):
    net = reference(version, scale)
    model = jax_model(version, scale)
    params, extras = convert_dan(state_dict(net, prefix="module."), model)
    np.testing.assert_array_equal(extras["pca_matrix"], pca_matrix())
    assert_same_outputs(net, model.clone(pca_matrix=extras["pca_matrix"]), params, LR)


def test_bad_checkpoints_name_every_offending_key():
    net = reference(1, 2)
    model = jax_model(1, 2).clone(pca_matrix=pca_matrix())
    sd = state_dict(net)
    del sd["Restorer.body.1.body.3.body.2.bias"]
    sd["Restorer.body.7.body.0.weight"] = np.zeros((1, 1, 3, 3), np.float32)
    sd["Estimator.out.weight"] = sd["Estimator.out.weight"][:, :, :1]
    sd["encoder"] = sd["encoder"][:, :, :5]
    with pytest.raises(ValueError) as err:
        convert_dan(sd, model)
    msg = str(err.value)
    for key in ("missing (1): Restorer.body.1.body.3.body.2.bias", "unexpected (1): Restorer.body.7.body.0.weight",
                "Estimator.out.weight: checkpoint (10, 16, 1, 3), expected (10, 16, 3, 3)", "encoder"):
        assert key in msg, msg


@pytest.mark.parametrize("what", ["missing", "unexpected", "misshaped"])
def test_each_kind_of_mismatch_alone_raises(what):
    model = jax_model(2, 4).clone(pca_matrix=pca_matrix())
    sd = state_dict(reference(2, 4))
    if what == "missing":
        del sd["Estimator.tail.2.weight"]
    elif what == "unexpected":
        sd["Restorer.upscale.6.weight"] = np.zeros((3, 16, 3, 3), np.float32)
    else:
        sd["Restorer.head2.weight"] = np.zeros((16, 9, 1, 1), np.float32)
    with pytest.raises(ValueError, match=what.replace("misshaped", "mis-shaped")):
        convert_dan(sd, model)


def test_load_official_checkpoint_and_cli(tmp_path):
    import flax.serialization

    net = reference(2, 3, seed=1)
    path = tmp_path / "danv2_x3.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)
    cfg = ml_collections.ConfigDict({"scale": 3, "model": {"name": "danv2", "kernel_size": K, "num_iters": T, **V2}})
    model, params, extras = predict.load_official(str(path), models.get("danv2"), cfg)
    np.testing.assert_array_equal(model.pca_matrix.array, pca_matrix(1))
    assert_same_outputs(net, model, params, LR)

    out_dir = tmp_path / "flax"
    fields = [f"--field={k}={v}" for k, v in {**V2, "kernel_size": K, "num_iters": T}.items()]
    convert.main(["--arch", "danv2", "--scale", "3", "--input", str(path), "--output", str(out_dir), *fields])
    restored = flax.serialization.msgpack_restore((out_dir / "params.msgpack").read_bytes())["params"]
    with np.load(out_dir / "pca.npz") as f:
        np.testing.assert_array_equal(f["matrix"], pca_matrix(1))
    settings = json.loads((out_dir / "model.json").read_text())
    assert settings["name"] == "danv2" and settings["scale"] == 3 and settings["restorer_groups"] == 2
    assert_same_outputs(net, model, restored, LR)


def test_official_checkpoint_through_the_eval_predictor(tmp_path):
    """`python -m jaxsr.main --mode=eval|infer --official=X.pth` builds its predictor this way."""
    net = reference(1, 2, seed=2)
    path = tmp_path / "danv1_x2.pth"
    torch.save(net.state_dict(), path)
    cfg = config_lib.load(REPO / "configs" / "dan.py:setting2_x2")  # x2, 11x11 kernels (K)
    cfg.model.update(dict(kernel_size=K, num_iters=T, **V1))
    cfg.eval.num_iters = -1
    predict_fn, source = predict.build(experiment.resolve(cfg), str(tmp_path), official=str(path))
    assert str(path) in source
    sr, kernel = predict_fn(jnp.asarray(LR.transpose(0, 2, 3, 1)))
    srs, _, kernels = stacked_outputs(net, LR)
    assert rel_err(sr, srs[-1].transpose(0, 2, 3, 1)) <= 1e-5
    assert rel_err(kernel, kernels[-1]) <= 1e-5
