"""jaxsr.evaluate with fake predict functions on small synthetic images (and two Set5 crops)."""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import jaxsr.ops.degrade as D
from helpers import load_config, smooth_image
from jaxsr import evaluate as E
from jaxsr import experiment, io
from jaxsr.ops.imresize import imresize
from jaxsr.validation import Validator


def counting_fake(scale, kernel=None, upsample="bicubic"):
    """A jitted predict_fn plus a list that grows by one entry per trace (= compile)."""
    traces = []

    @jax.jit
    def predict(lr):
        traces.append(lr.shape)
        if upsample == "bicubic":
            sr = imresize(lr, float(scale))
        else:  # nearest neighbour
            sr = jnp.repeat(jnp.repeat(lr, scale, axis=1), scale, axis=2)
        if kernel is None:
            return sr, None
        return sr, jnp.broadcast_to(kernel, (lr.shape[0], *kernel.shape))

    return predict, traces


# ----------------------------------------------------------------- NumPy references

def np_psnr_y(sr, hr, border):
    """PSNR from the definition: uint8 levels, MATLAB rgb2ycbcr luma (or the gray channel),
    `border` pixels cropped, peak 255."""
    def levels(x):
        q = np.round(np.clip(np.asarray(x, np.float64), 0, 1) * 255.0)
        if q.shape[-1] == 3:
            q = 16.0 + q @ np.array([65.481, 128.553, 24.966]) / 255.0
        else:
            q = q[..., 0]
        return q[border:-border, border:-border]
    mse = np.mean((levels(sr) - levels(hr)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def np_sfold_lr(hr, kernel, scale):
    """Blur (reflect padding without edge repeat = scipy 'mirror'), keep every s-th pixel, uint8."""
    kernel = np.asarray(kernel, np.float64)
    blurred = np.stack([ndimage.correlate(hr[..., c].astype(np.float64), kernel, mode="mirror")
                        for c in range(hr.shape[-1])], axis=-1)
    return np.round(np.clip(blurred[::scale, ::scale], 0, 1) * 255.0) / 255.0


# ----------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # LR at x2: 20x18, 22x20 and 35x33 (with the opt-in eval.bucket=16: 32x32, 32x32 and 48x48).
    return [("a", smooth_image(rng, 40, 36)), ("b", smooth_image(rng, 44, 40)),
            ("c", smooth_image(rng, 70, 66))]


@pytest.fixture(scope="module")
def bicubic_run(images):
    predict, traces = counting_fake(2)
    result = E.evaluate(predict, images, scale=2, protocol="gaussian8", max_batch=8)
    return result, traces


# ----------------------------------------------------------------- tests

def test_bicubic_model_equals_bicubic_baseline(bicubic_run):
    result, _ = bicubic_run
    assert len(result["per_image"]) == 8 * 3 and len(result["kernels"]) == 8
    for record in result["per_image"]:
        # Same LR, same upsampler (the model's in batches of 8, the baseline one at a time), so
        # the scores agree up to float rounding at a quantisation step.
        assert record["psnr"] == pytest.approx(record["bicubic_psnr"], abs=1e-3)
        assert record["ssim"] == pytest.approx(record["bicubic_ssim"], abs=1e-4)
        assert 20.0 < record["psnr"] < 60.0 and 0.5 < record["ssim"] <= 1.0
        assert record["kernel_mae"] is None and record["kernel_psnr"] is None
    # Wider kernels lose more detail: the bicubic PSNR falls with σ on every image.
    by_sigma = [row["bicubic_psnr"] for row in result["kernels"]]
    assert all(a > b for a, b in zip(by_sigma, by_sigma[1:]))
    assert result["mean"]["psnr"] == pytest.approx(
        np.mean([r["psnr"] for r in result["per_image"]]), rel=1e-12)
    assert result["kernels"][0]["params"] == {"sigma": pytest.approx(0.8)}


def test_compiles_once_per_exact_size_and_padding_is_opt_in(bicubic_run, images):
    result, traces = bicubic_run
    # Exact sizes: 8 kernels x each image, one program per distinct LR size, batches of 8.
    assert result["num_compiled_shapes"] == 3 == len(traces) and result["bucket"] == 1
    assert sorted(map(tuple, result["compiled_shapes"])) == [(8, 20, 18, 3), (8, 22, 20, 3), (8, 35, 33, 3)]
    assert result["input_mode"] == "batched" and "batches of up to 8" in result["deviation"]
    # The padded mode (the default before evaluation became exact; these counts pinned it) is
    # still there when asked for: a and b share the 32x32 bucket, c is alone in 48x48.
    predict, traces = counting_fake(2)
    padded = E.evaluate(predict, images, scale=2, protocol="gaussian8", max_batch=8, bucket=16)
    assert padded["num_compiled_shapes"] == 2 == len(traces)
    assert sorted(map(tuple, padded["compiled_shapes"])) == [(8, 32, 32, 3), (8, 48, 48, 3)]
    assert padded["input_mode"] == "padded" and "scores from padded inputs" in E.format_markdown(padded)
    predict, traces = counting_fake(2)
    two = E.evaluate(predict, images[:2], scale=2, protocol="gaussian8", max_batch=5, bucket=16)
    assert two["num_compiled_shapes"] == 1 == len(traces)  # 16 pairs in batches of 5 (+ filler)
    predict, traces = counting_fake(2)
    exact = E.evaluate(predict, images[:2], scale=2, protocol="gaussian8")  # the defaults: exact
    assert exact["input_mode"] == "exact" and exact["deviation"] is None
    assert sorted(traces) == [(1, 20, 18, 3), (1, 22, 20, 3)]
    assert "2 predict program(s) (one per LR input shape), exact" in E.format_markdown(exact)


def test_psnr_matches_numpy_definition_sfold():
    """The whole pipeline (mod-crop, blur, s-fold, uint8, model, Y, border) against NumPy,
    with a nearest-neighbour model so every step has an independent reference."""
    rng = np.random.default_rng(1)
    scale = 3
    hrs = [("rgb", smooth_image(rng, 40, 37)), ("gray", smooth_image(rng, 38, 35, c=1))]
    predict, _ = counting_fake(scale, upsample="nearest")
    result = E.evaluate(predict, hrs, scale=scale, protocol="kxnet")
    assert result["kernel_size"] == 15 and len(result["kernels"]) == 8
    kernels = np.asarray(D.kxnet_test_kernels(15))
    for record in result["per_image"]:
        k = [r["label"] for r in result["kernels"]].index(record["kernel"])
        hr = dict(hrs)[record["image"]]
        hr = hr[:hr.shape[0] // scale * scale, :hr.shape[1] // scale * scale]
        lr = np_sfold_lr(hr, kernels[k], scale)
        sr = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
        assert record["psnr"] == pytest.approx(np_psnr_y(sr, hr, scale), abs=0.01)


def test_kernel_error_zero_for_true_kernel(images):
    truth = np.asarray(D.gaussian8_kernels(2))
    predict, _ = counting_fake(2, kernel=jnp.asarray(truth[5]))
    result = E.evaluate(predict, images[:2], scale=2, protocol="gaussian8")
    for k, row in enumerate(result["kernels"]):
        diff = truth[5].astype(np.float64) - truth[k]
        if k == 5:
            assert row["kernel_mae"] == 0.0 and math.isinf(row["kernel_psnr"])
        else:
            assert row["kernel_mae"] == pytest.approx(np.abs(diff).mean(), rel=1e-6)
            assert row["kernel_psnr"] == pytest.approx(-10 * np.log10(np.mean(diff ** 2)), rel=1e-6)
            assert row["kernel_psnr_max"] == pytest.approx(
                -10 * np.log10(np.mean((diff / truth[k].max()) ** 2)), rel=1e-6)
    assert math.isinf(result["mean"]["kernel_psnr"])


def test_kernel_errors_pads_smaller_kernel():
    rng = np.random.default_rng(2)
    small, big = rng.random((11, 11)), rng.random((15, 15))
    padded = np.zeros((15, 15))
    padded[2:13, 2:13] = small
    got = E.kernel_errors(small, big)
    assert got["kernel_mae"] == pytest.approx(np.abs(padded - big).mean())
    assert got["kernel_psnr"] == pytest.approx(10 * np.log10(1 / np.mean((padded - big) ** 2)))
    with pytest.raises(ValueError, match="odd"):
        E.kernel_errors(np.ones((4, 4)), big)


def test_setting2_is_reproducible(images):
    delta = jnp.zeros((11, 11)).at[5, 5].set(1.0)
    predict, _ = counting_fake(2, kernel=delta)
    run = lambda seed: E.evaluate(predict, images[:2], scale=2, protocol="setting2", seed=seed)
    first, again, other = run(0), run(0), run(1)
    assert first["per_image"] == again["per_image"]
    assert len(first["kernels"]) == 1 and first["kernel_size"] == 11
    # One kernel per image: the error of the fixed delta differs between images and seeds.
    maes = [r["kernel_mae"] for r in first["per_image"]]
    assert maes[0] != pytest.approx(maes[1])
    assert [r["kernel_mae"] for r in other["per_image"]] != pytest.approx(maes)


def test_kxnet_noise_level_and_seed(images):
    seen = []

    def recording_predict(lr):  # not jitted: records its inputs
        seen.append(np.asarray(lr))
        return jnp.repeat(jnp.repeat(lr, 2, axis=1), 2, axis=2), None

    E.evaluate(recording_predict, images[:1], scale=2, protocol="kxnet", noise=0.0)
    clean = np.concatenate(seen)
    seen.clear()
    noisy_run = E.evaluate(recording_predict, images[:1], scale=2, protocol="kxnet", noise=10.0)
    noisy = np.concatenate(seen)
    seen.clear()
    E.evaluate(recording_predict, images[:1], scale=2, protocol="kxnet", noise=10.0)
    np.testing.assert_array_equal(np.concatenate(seen), noisy)  # fixed seed
    h, w = 20, 18  # the unpadded LR of image "a" at x2
    residual = (noisy - clean)[:, :h, :w]
    assert np.std(residual) * 255 == pytest.approx(10.0, rel=0.1)  # [0, 255] units
    assert noisy_run["noise"] == 10.0


def _bar_groups(chart, color):
    """How many separate runs of columns hold pixels of `color` (one run per bar)."""
    hit = np.all(np.round(chart * 255) == color, axis=-1).any(axis=0)
    return int(np.sum(hit[1:] & ~hit[:-1]) + hit[0])


def test_progress_line_counts_the_sr_images(images, capsys):
    predict, _ = counting_fake(2)
    E.evaluate(predict, images[:2], scale=2, protocol="gaussian8", max_batch=3)
    assert capsys.readouterr().err == ""  # quiet unless asked (a library call)
    E.evaluate(predict, images[:2], scale=2, protocol="gaussian8", max_batch=3, progress_label="Set")
    err = capsys.readouterr().err
    # 16 SR images in batches of 3: the first batch is drawn as it comes out, the last always
    assert "Set [" in err and " 3/16," in err and " 16/16," in err and err.endswith("\n")


def test_each_size_group_is_degraded_just_before_the_model_runs_on_it(images, monkeypatch):
    """The first SR images come after one group's degradation, not the whole set's; the records
    still read kernel-major in the order the images were given, whatever their sizes."""
    events = []
    degrade_clean = E._degrade_clean
    monkeypatch.setattr(E, "_degrade_clean", lambda hr, *a, **k: events.append(("degrade", hr.shape[1:3]))
                        or degrade_clean(hr, *a, **k))
    predict, _ = counting_fake(2)
    given = [images[2], images[0], images[1]]  # c (LR 35x33) first, the smallest last
    result = E.evaluate(lambda lr: events.append(("predict", lr.shape[1:3])) or predict(lr), given,
                        scale=2, protocol="gaussian8", max_batch=8)
    assert events == [("degrade", (40, 36)), ("predict", (20, 18)), ("degrade", (44, 40)), ("predict", (22, 20)),
                      ("degrade", (70, 66)), ("predict", (35, 33))]
    assert [(r["kernel"], r["image"]) for r in result["per_image"]] == [
        (label, name) for label in [row["label"] for row in result["kernels"]] for name in ("c", "a", "b")]


def test_save_results_writes_markdown_json_and_chart(bicubic_run, tmp_path):
    from jaxsr import chart
    result, _ = bicubic_run
    result = dict(result, mean=dict(result["mean"], kernel_psnr=math.inf))
    # a model 1 dB better than bicubic on every kernel: its bars are taller
    better = dict(result, kernels=[dict(r, psnr=r["bicubic_psnr"] + 1.0) for r in result["kernels"]],
                  mean=dict(result["mean"], psnr=result["mean"]["bicubic_psnr"] + 1.0))
    md_path, json_path, png_path = E.save_results(better, tmp_path / "out", "set_x2")
    assert png_path == tmp_path / "out" / "set_x2.png"
    image = io.read_image(png_path)
    plot = image[60:]  # below the legend
    assert _bar_groups(plot, chart.MODEL_COLOR) == 9 == _bar_groups(plot, chart.BICUBIC_COLOR)  # 8 + mean
    model_top = np.argmax(np.all(np.round(plot * 255) == chart.MODEL_COLOR, axis=-1).any(axis=1))
    bicubic_top = np.argmax(np.all(np.round(plot * 255) == chart.BICUBIC_COLOR, axis=-1).any(axis=1))
    assert model_top < bicubic_top - 10  # 1 dB higher
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["set_x2.json", "set_x2.md", "set_x2.png"]
    md_path, json_path, _ = E.save_results(result, tmp_path / "out", "set_x2")
    table = md_path.read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 8 + 1  # header and rule, 8 kernels, mean
    assert "σ=0.80" in table and "**mean**" in rows[-1] and "inf" in rows[-1]
    assert f"{result['mean']['psnr']:.2f}" in rows[-1]
    loaded = json.loads(json_path.read_text(encoding="utf-8"))  # strict JSON: inf as a string
    assert loaded["mean"]["kernel_psnr"] == "inf"
    assert loaded["num_compiled_shapes"] == 3  # one per exact LR size (2 when this fixture padded to 16)
    assert loaded["per_image"][0]["psnr"] == pytest.approx(result["per_image"][0]["psnr"])


def test_bad_arguments(images):
    predict, _ = counting_fake(2)
    with pytest.raises(ValueError, match="protocol"):
        E.evaluate(predict, images, scale=2, protocol="div2krk")
    with pytest.raises(ValueError, match="scale"):
        E.evaluate(predict, images, scale=5, protocol="gaussian8")
    with pytest.raises(ValueError, match="hr_images is empty"):
        E.evaluate(predict, [], scale=2, protocol="gaussian8")
    with pytest.raises(ValueError, match="bucket"):
        E.evaluate(predict, images, scale=2, protocol="gaussian8", bucket=0)
    with pytest.raises(ValueError, match=r"hr_images\[0\]"):
        E.evaluate(predict, [("x", np.zeros((40, 36, 2), np.float32))], scale=2,
                   protocol="gaussian8")


def test_set5_crops(shared_data):
    folder = shared_data / "Set5"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    crops = [(name, image[:96, :96]) for name, image in E.load_hr_images(folder, limit=2)]
    assert [name for name, _ in crops] == [p.stem for p in io.list_images(folder)[:2]]
    predict, traces = counting_fake(4)
    result = E.evaluate(predict, crops, scale=4, protocol="gaussian8")
    assert result["num_compiled_shapes"] == 1 == len(traces)  # both LRs 24x24: one exact size
    for record in result["per_image"]:
        assert record["psnr"] == pytest.approx(record["bicubic_psnr"], abs=1e-3)
    assert 18.0 < result["mean"]["bicubic_psnr"] < 40.0
    assert 0.3 < result["mean"]["bicubic_ssim"] < 1.0


def test_validation_is_an_evaluator_of_the_predict_function_it_is_handed():
    """The training loop's validation scores whatever predict(params, lr, kernel) it gets with
    evaluate's own scores: a bicubic "model" scores exactly the bicubic baseline, and returning
    the true kernels (passed in as the parameters) gives a kernel error of zero."""
    exp = experiment.resolve(load_config("dan", "tiny"))
    calls = []

    def bicubic_model(params, lr, kernel=None):
        calls.append((lr.shape, kernel))
        return E.bicubic(lr, exp.cfg.scale), params

    validator = Validator(exp, bicubic_model)
    assert "held_out" not in vars(validator)  # degraded at the first validation, not before training
    data = validator.held_out
    result, grid = validator(data.kernel)
    assert calls == [(data.lr.shape, None)]  # a blind model gets no kernel
    assert set(result) == {"val_bicubic_psnr", "val_bicubic_ssim", "val_psnr", "val_ssim", "val_kernel_l1"}
    assert result["val_psnr"] == result["val_bicubic_psnr"] and result["val_ssim"] == result["val_bicubic_ssim"]
    assert result["val_kernel_l1"] == 0.0
    psnr, _ = E.scores(np.asarray(data.bicubic), np.asarray(data.hr), exp.cfg.scale)
    assert result["val_bicubic_psnr"] == pytest.approx(float(np.mean(psnr)), abs=1e-6)
    size = validator.hr.shape[1]
    assert grid.shape == (validator.hr.shape[0] * size, 6 * size, 3)


# ----------------------------------------------------------------- exact by default

@pytest.fixture(scope="module")
def tiny_dan():
    """(spec, model, params) of a tiny DANv1 with random weights: its kernel estimator pools over
    the whole image, so a single padded pixel would move every output."""
    from helpers import torch_like_params
    from jaxsr import platform
    exp = experiment.resolve(load_config("dan", "tiny"))
    model = exp.model(platform.default_platform())
    return exp.model_spec, model, torch_like_params(model, seed=3)["params"]


def counting_bind(spec, model, params):
    """`jaxsr.predict.bind` of the model with a fresh jit, and the input shape of every trace
    (= every compiled predict program)."""
    from jaxsr import predict as predict_lib
    traces = []

    def traced_predict(module, variables, lr, **kwargs):
        traces.append(tuple(lr.shape))
        return spec.predict(module, variables, lr, **kwargs)

    return predict_lib.bind(dataclasses.replace(spec, predict=traced_predict), model, params), traces


def one_at_a_time(predict_fn, cases, scale):
    """The reference: each case's LR alone through predict_fn at its own size, then scored."""
    records = {}
    for case in cases:
        sr, kernel = predict_fn(jnp.asarray(np.repeat(case.lr, 3 // case.lr.shape[-1], axis=-1)[None]))
        sr = np.asarray(sr)[0]
        done = dataclasses.replace(case, sr=sr.mean(axis=-1, keepdims=True) if case.lr.shape[-1] == 1 else sr,
                                   estimated_kernel=np.asarray(kernel)[0])
        records[(case.label, case.image)] = E.score_case(done, scale)
    return records


def test_default_evaluation_equals_image_by_image_with_a_pooling_estimator(tiny_dan):
    """The defaults run every LR at its own size: each score (kernel PSNR included) is the same
    float as the model run image by image, and there is one predict program per distinct LR
    size. The opt-in padding changes the scores of the images it pads, and only those."""
    rng = np.random.default_rng(7)
    # LR at x2: 20x18, 23x19 (twice), 17x25 (gray, HR mod-cropped), 32x32 (a multiple of 16).
    hrs = [("a", smooth_image(rng, 40, 36, sigma=1.0)), ("b", smooth_image(rng, 46, 38, sigma=1.0)),
           ("c", smooth_image(rng, 46, 38, sigma=1.0)), ("d", smooth_image(rng, 35, 51, c=1, sigma=1.0)),
           ("e", smooth_image(rng, 64, 64, sigma=1.0))]
    predict_fn, traces = counting_bind(*tiny_dan)
    result = E.evaluate(predict_fn, hrs, scale=2, protocol="gaussian8")
    assert result["input_mode"] == "exact" and result["deviation"] is None
    assert sorted(traces) == [(1, 17, 25, 3), (1, 20, 18, 3), (1, 23, 19, 3), (1, 32, 32, 3)]
    assert result["num_compiled_shapes"] == 4 == len(traces)
    cases = E.degrade_cases(E._setup("gaussian8", 2, None, 0), hrs, 2)
    reference = one_at_a_time(predict_fn, cases, 2)
    assert len(traces) == 4  # the reference ran the same four programs
    got = {(r["kernel"], r["image"]): r for r in result["per_image"]}
    assert got == reference  # exactly: the same floats
    assert all(math.isfinite(r["kernel_psnr"]) for r in got.values())
    padded = E.evaluate(predict_fn, hrs, scale=2, protocol="gaussian8", bucket=16)
    for record in padded["per_image"]:
        same = reference[(record["kernel"], record["image"])]
        if record["image"] == "e":  # 32x32: nothing to pad
            assert record == same
        else:
            assert record["kernel_psnr"] != same["kernel_psnr"]


def test_paired_default_equals_image_by_image(tiny_dan, tmp_path):
    """The paired protocol: published LR files of several sizes, each scored as if run alone."""
    from jaxsr import paired
    rng = np.random.default_rng(8)
    kernel = np.asarray(D.gaussian8_kernels(2))[3]
    for i, (h, w) in enumerate([(13, 21), (16, 16), (13, 21), (9, 30)], start=1):
        io.write_image(tmp_path / "hr" / f"img_{i}.png", smooth_image(rng, 2 * h + i % 2, 2 * w, sigma=1.0))
        io.write_image(tmp_path / "lr" / f"img_{i}.png", smooth_image(rng, h, w, sigma=1.0))
        (tmp_path / "k").mkdir(exist_ok=True)
        np.save(tmp_path / "k" / f"img_{i}.npy", kernel)
    pairs = paired.find_pairs(tmp_path / "hr", tmp_path / "lr", tmp_path / "k")
    predict_fn, traces = counting_bind(*tiny_dan)
    result = E.evaluate_paired(predict_fn, pairs, scale=2)
    assert result["input_mode"] == "exact" and result["num_compiled_shapes"] == 3 == len(traces)
    assert sorted(traces) == [(1, 9, 30, 3), (1, 13, 21, 3), (1, 16, 16, 3)]
    cases = [E.Case(0, "paired", p.name, *paired.read_pair(p, 2)) for p in pairs]
    reference = one_at_a_time(predict_fn, cases, 2)
    files = ("hr_file", "lr_file", "kernel_file")
    got = {("paired", r["image"]): {k: v for k, v in r.items() if k not in files} for r in result["per_image"]}
    assert got == reference and len(traces) == 3
