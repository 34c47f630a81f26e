"""`model.dtype = "bfloat16"`: activations in bf16, parameters and outputs float32. On the CPU
(slow there, but the numerics are the same on accelerators) a tiny bf16 DAN trains through
`jaxsr.train`'s step, and bf16 inference stays within 45 dB PSNR of the float32 output on Set5."""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import config_lib, experiment, io, models, train
from jaxsr.models import kxnet, layers
from jaxsr.ops import imresize, metrics

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.py"))
# PSNR (RGB, peak 1, not quantised) of the bf16 output against the float32 output, in dB: at
# least 45 dB, i.e. an RMS difference under 0.6% of the range (1.4 grey levels of 255).
MIN_PSNR_VS_FLOAT32 = 45.0
STEPS = 12


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_selects_the_compute_dtype(path):
    cfg = config_lib.prepare(config_lib.load(path, "tiny"))
    assert cfg.model.dtype == "float32"
    cfg.model.dtype = "bfloat16"
    assert models.get(cfg.model.name).create(cfg).dtype == "bfloat16"


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="float16"):
        layers.compute_dtype("float16")


@pytest.fixture(scope="module")
def trained_bf16_dan():
    """The tiny DANv1 config in bf16, `STEPS` steps of `jaxsr.train`'s step on a fixed smooth batch."""
    cfg = config_lib.load(CONFIG_DIR / "dan.py", "tiny")
    cfg.model.dtype = "bfloat16"
    cfg.train.learning_rate = 2e-3
    program = train.build_program(experiment.resolve(cfg), jax.devices()[:1])
    state, step = program.init_state(), jax.jit(program.step)
    yy, xx = np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 24), indexing="ij")
    hr = np.stack([0.5 + 0.3 * np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)], -1)[None].repeat(4, 0)
    hr_u8 = jnp.asarray(np.round(255 * hr), jnp.uint8)
    losses = []
    for _ in range(STEPS):
        state, out = step(state, hr_u8)
        losses.append(float(out["loss"]))
    return program.model, state.params, losses


def test_tiny_bf16_run_trains(trained_bf16_dan):
    model, params, losses = trained_bf16_dan
    # the activations really are bf16: every convolution of the forward pass yields bf16
    jaxpr = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, jnp.zeros((1, 8, 8, 3))))(params))
    conv_dtypes = re.findall(r":(\w+)\[[^\]]*\] = conv_general_dilated", jaxpr)
    assert conv_dtypes and set(conv_dtypes) == {"bf16"}, conv_dtypes
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses
    out = model.apply({"params": params}, jnp.zeros((1, 8, 8, 3)))
    assert all(v.dtype == jnp.float32 for v in out.values())


@pytest.fixture(scope="module")
def set5(shared_data):
    """Centre 48x48 crops of the Set5 images and their x2 bicubic LR."""
    crops = []
    for path in sorted((shared_data / "Set5").glob("*.png")):
        image = io.read_image(path)
        h, w = image.shape[:2]
        crops.append(image[h // 2 - 24:h // 2 + 24, w // 2 - 24:w // 2 + 24])
    hr = jnp.asarray(np.stack(crops))
    return hr, imresize.imresize(hr, 0.5)


def psnr(a, b):
    return np.asarray(metrics.psnr(jnp.clip(a, 0, 1), jnp.clip(b, 0, 1), y_only=False, quantize_inputs=False))


def check_close(model, params, set5, output):
    hr, lr = set5
    f32 = model.clone(dtype="float32").apply({"params": params}, lr)[output][-1]
    bf16 = model.clone(dtype="bfloat16").apply({"params": params}, lr)[output][-1]
    assert bf16.dtype == jnp.float32
    assert psnr(bf16, f32).min() >= MIN_PSNR_VS_FLOAT32, psnr(bf16, f32)
    # and the quality against the ground truth moves by less than 0.05 dB
    np.testing.assert_allclose(psnr(bf16, hr), psnr(f32, hr), atol=0.05)


def test_bf16_inference_of_the_trained_dan_is_close_to_float32_on_set5(trained_bf16_dan, set5):
    model, params, _ = trained_bf16_dan
    check_close(model, params, set5, "sr")


def test_bf16_inference_of_kxnet_is_close_to_float32_on_set5(set5):
    """KXNet at its initialisation already restores (bicubic start, residual prox nets)."""
    model = kxnet.KXNet(scale=2, kernel_size=7, num_stages=2, aux_x_features=4, aux_k_features=4, prox_blocks=1)
    params = model.init(jax.random.key(0), set5[1][:1])["params"]
    check_close(model, params, set5, "sr")
