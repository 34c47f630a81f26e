"""The paired protocol: published LR files beside HR files (and kernels), DIV2KRK's layout.

The miniature DIV2KRK is written by the test itself from two Set5 crops, degraded by the
gaussian8 protocol's own step (blur, MATLAB bicubic, uint8) with one known kernel per image, so
the paired protocol on those files must give the numbers of `protocol="gaussian8"`.
"""
import json
import pathlib

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

import jaxsr.ops.degrade as D
from jaxsr import cli, config_lib, io, paired
from jaxsr import evaluate as E
from jaxsr import predict as predict_lib
from jaxsr.ops.imresize import imresize

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SCALE = 4
KERNEL_OF_IMAGE = (2, 6)   # which Gaussian8 kernel degrades image 1 and image 2
ESTIMATE = 4               # the fake model always "estimates" Gaussian8 kernel 4


def fake_model(scale, kernel=None):
    """A jitted blind predict_fn: bicubic upsampling and a fixed kernel estimate. Given a kernel
    (oracle), it returns that kernel as its estimate, so the test can see what it was fed."""
    @jax.jit
    def run(lr, given):
        sr = imresize(lr, float(scale))
        if given is not None:
            return sr, given
        return sr, None if kernel is None else jnp.broadcast_to(kernel, (lr.shape[0], *kernel.shape))

    def predict(lr, given=None):
        return run(lr, given)

    return predict


@pytest.fixture(scope="module")
def set5_crops(shared_data):
    folder = shared_data / "Set5"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    # 70x66 is not a multiple of 4: both protocols mod-crop it to 68x64 (LR 17x16).
    return [(name, image[:70, :66]) for name, image in E.load_hr_images(folder, limit=2)]


@pytest.fixture(scope="module")
def gaussian8_run(set5_crops):
    kernels = np.asarray(D.gaussian8_kernels(SCALE))
    predict = fake_model(SCALE, jnp.asarray(kernels[ESTIMATE]))
    return E.evaluate(predict, set5_crops, scale=SCALE, protocol="gaussian8"), kernels


@pytest.fixture(scope="module")
def div2krk(tmp_path_factory, set5_crops):
    """A two-image DIV2KRK: gt/img_<i>_gt.png, lr_x4/im_<i>.png, gt_k_x4/kernel_<i>.mat ("Kernel")."""
    root = tmp_path_factory.mktemp("mini") / "DIV2KRK"
    setup = E._setup("gaussian8", SCALE, None, 0)
    cases = E.degrade_cases(setup, set5_crops, SCALE)
    for i, (name, hr) in enumerate(set5_crops, start=1):
        k = KERNEL_OF_IMAGE[i - 1]
        case = next(c for c in cases if c.image == name and c.row == k)
        io.write_image(root / "gt" / f"img_{i}_gt.png", hr)  # the uncropped HR, as DIV2KRK ships it
        io.write_image(root / f"lr_x{SCALE}" / f"im_{i}.png", case.lr)
        (root / f"gt_k_x{SCALE}").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / f"gt_k_x{SCALE}" / f"kernel_{i}.mat", {"Kernel": case.kernel.astype(np.float64)})
        stored = io.read_image(root / f"lr_x{SCALE}" / f"im_{i}.png", mode="keep")
        np.testing.assert_array_equal(np.round(stored * 255), np.round(case.lr * 255))  # the same uint8 levels
    (root / "lr_x2").mkdir()  # DIV2KRK also has x2 folders; only the scale's own are read
    return root


def _expected(gaussian8, set5_crops):
    """gaussian8's record of (kernel KERNEL_OF_IMAGE[i], image i), in image order."""
    labels = [row["label"] for row in gaussian8["kernels"]]
    return [next(r for r in gaussian8["per_image"] if r["image"] == name and r["kernel"] == labels[k])
            for (name, _), k in zip(set5_crops, KERNEL_OF_IMAGE)]


def _assert_same_scores(got, want, kernels=True):
    for g, w in zip(got, want, strict=True):
        for m in ("psnr", "bicubic_psnr"):
            assert g[m] == pytest.approx(w[m], abs=1e-4), m
        for m in ("ssim", "bicubic_ssim"):
            assert g[m] == pytest.approx(w[m], abs=1e-6), m
        if kernels:
            for m in ("kernel_mae", "kernel_psnr", "kernel_psnr_max"):
                assert g[m] == pytest.approx(w[m], rel=1e-5), m


# ----------------------------------------------------------------- paired == gaussian8

def test_div2krk_miniature_equals_gaussian8(div2krk, gaussian8_run, set5_crops):
    gaussian8, kernels = gaussian8_run
    hr_dir, lr_dir, kernel_dir = paired.div2krk_dirs(div2krk, SCALE)
    assert (hr_dir.name, lr_dir.name, kernel_dir.name) == ("gt", "lr_x4", "gt_k_x4")
    pairs = paired.find_pairs(hr_dir, lr_dir, kernel_dir)
    assert [(p.hr.name, p.lr.name, p.kernel.name) for p in pairs] == [
        ("img_1_gt.png", "im_1.png", "kernel_1.mat"), ("img_2_gt.png", "im_2.png", "kernel_2.mat")]
    result = E.evaluate_paired(fake_model(SCALE, jnp.asarray(kernels[ESTIMATE])), pairs, scale=SCALE)
    _assert_same_scores(result["per_image"], _expected(gaussian8, set5_crops))
    assert result["protocol"] == "paired" and result["kernel_size"] == 21
    assert [row["label"] for row in result["kernels"]] == ["paired"]
    assert result["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in result["per_image"]]))
    assert result["images"] == ["img_1_gt", "img_2_gt"] and result["num_compiled_shapes"] == 1
    assert result["per_image"][0]["lr_file"].endswith("im_1.png")
    # The bicubic model equals the bicubic baseline; the estimate is wrong for both images.
    for record in result["per_image"]:
        assert record["psnr"] == pytest.approx(record["bicubic_psnr"], abs=1e-3)
        assert record["kernel_mae"] > 0


def test_npy_and_png_kernels(div2krk, gaussian8_run, set5_crops, tmp_path):
    gaussian8, kernels = gaussian8_run
    hr_dir, lr_dir, _ = paired.div2krk_dirs(div2krk, SCALE)
    npy, png = tmp_path / "npy", tmp_path / "png"
    npy.mkdir(), png.mkdir()
    for i, k in enumerate(KERNEL_OF_IMAGE, start=1):
        np.save(npy / f"kernel_{i}.npy", kernels[k])
        iio.imwrite(png / f"kernel_{i}.png", np.round(kernels[k] / kernels[k].max() * 65535).astype(np.uint16))
    predict = fake_model(SCALE, jnp.asarray(kernels[ESTIMATE]))
    result = E.evaluate_paired(predict, paired.find_pairs(hr_dir, lr_dir, npy), scale=SCALE)
    _assert_same_scores(result["per_image"], _expected(gaussian8, set5_crops))
    # A 16-bit PNG kernel is normalised to sum 1 and equals the true kernel up to quantisation.
    for i, k in enumerate(KERNEL_OF_IMAGE, start=1):
        got = paired.read_kernel(png / f"kernel_{i}.png")
        assert got.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(got, kernels[k], atol=kernels[k].max() / 65535)
    result = E.evaluate_paired(predict, paired.find_pairs(hr_dir, lr_dir, png), scale=SCALE)
    _assert_same_scores(result["per_image"], _expected(gaussian8, set5_crops), kernels=False)


def test_oracle_feeds_the_shipped_kernels(div2krk, gaussian8_run):
    _, kernels = gaussian8_run
    pairs = paired.find_pairs(*paired.div2krk_dirs(div2krk, SCALE))
    # The fake returns what it was given as its estimate: zero kernel error means it got the .mat kernel.
    result = E.evaluate_paired(fake_model(SCALE), pairs, scale=SCALE, oracle_kernel=True)
    assert result["oracle_kernel"] and "true kernel given to the model" in E.format_markdown(result)
    assert all(r["kernel_mae"] < 1e-7 for r in result["per_image"])
    no_kernels = [paired.Pair(p.name, p.hr, p.lr) for p in pairs]
    with pytest.raises(ValueError, match="ground-truth kernel.*im_1.png"):
        E.evaluate_paired(fake_model(SCALE), no_kernels, scale=SCALE, oracle_kernel=True)
    # Without kernels the kernel metrics are empty, the image scores unchanged.
    plain = E.evaluate_paired(fake_model(SCALE), no_kernels, scale=SCALE)
    assert plain["kernel_size"] is None and plain["mean"]["kernel_mae"] is None
    assert plain["mean"]["psnr"] == pytest.approx(result["mean"]["psnr"], abs=1e-4)
    assert "no ground-truth kernels" in E.format_markdown(plain)


def test_kernel_of_another_size(div2krk, gaussian8_run, tmp_path):
    """DIV2KRK's x4 kernels are 31x31: a 21x21 estimate is compared after zero-padding."""
    _, kernels = gaussian8_run
    hr_dir, lr_dir, _ = paired.div2krk_dirs(div2krk, SCALE)
    big = tmp_path / "k31"
    big.mkdir()
    for i, k in enumerate(KERNEL_OF_IMAGE, start=1):
        scipy.io.savemat(big / f"kernel_{i}.mat", {"Kernel": np.pad(kernels[k], 5)})
    result = E.evaluate_paired(fake_model(SCALE, jnp.asarray(kernels[ESTIMATE])),
                               paired.find_pairs(hr_dir, lr_dir, big), scale=SCALE)
    assert result["kernel_size"] == 31
    want = E.kernel_errors(kernels[ESTIMATE], np.pad(kernels[KERNEL_OF_IMAGE[0]], 5))
    assert result["per_image"][0]["kernel_mae"] == pytest.approx(want["kernel_mae"], rel=1e-5)


def test_markdown_and_json(div2krk, gaussian8_run, tmp_path):
    _, kernels = gaussian8_run
    pairs = paired.find_pairs(*paired.div2krk_dirs(div2krk, SCALE))
    result = E.evaluate_paired(fake_model(SCALE, jnp.asarray(kernels[ESTIMATE])), pairs, scale=SCALE)
    md_path, json_path, chart_path = E.save_results(result, tmp_path, "DIV2KRK_paired_x4")
    assert chart_path.is_file()
    table = md_path.read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 1 + 1 and rows[2].startswith("| paired |") and "**mean**" in rows[3]
    assert "**paired** x4, 2 image pair(s), LR files from lr_x4, ground-truth kernels 21x21" in table
    loaded = json.loads(json_path.read_text(encoding="utf-8"))
    assert loaded["per_image"][1]["kernel_file"].endswith("kernel_2.mat")


# ----------------------------------------------------------------- errors naming the file

def test_wrong_sizes_name_the_file(div2krk, tmp_path):
    hr_dir, lr_dir, _ = paired.div2krk_dirs(div2krk, SCALE)
    bad = tmp_path / "lr"
    bad.mkdir()
    io.write_image(bad / "im_1.png", io.read_image(lr_dir / "im_1.png"))
    io.write_image(bad / "im_2.png", io.read_image(lr_dir / "im_2.png")[:-1])  # one row short
    pairs = paired.find_pairs(hr_dir, bad)
    with pytest.raises(ValueError, match=r"im_2\.png is 16x16 but HR file .*img_2_gt\.png is 70x66"):
        E.evaluate_paired(fake_model(SCALE), pairs, scale=SCALE)
    with pytest.raises(ValueError, match=r"im_2\.png"):
        E.paired_cases(pairs, SCALE)
    with pytest.raises(ValueError, match=r"at x2 the LR must be 35x33"):  # x4 files read at x2
        E.evaluate_paired(fake_model(2), paired.find_pairs(hr_dir, lr_dir), scale=2)


def test_gray_stored_as_rgb_and_channel_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    gray_hr = np.round(rng.random((9, 8, 1)) * 255) / 255
    io.write_image(tmp_path / "hr/a.png", np.repeat(gray_hr, 3, axis=-1))     # gray content, RGB file
    io.write_image(tmp_path / "lr/a_x4.png", gray_hr[:2, :2])                  # a gray file
    io.write_image(tmp_path / "hr/b.png", rng.random((8, 8, 3)))               # colour
    io.write_image(tmp_path / "lr/b_x4.png", rng.random((2, 2, 1)))            # gray
    pairs = paired.find_pairs(tmp_path / "hr", tmp_path / "lr")
    case = E.paired_cases(pairs[:1], SCALE)[0]
    assert case.hr.shape == (8, 8, 1) and case.lr.shape == (2, 2, 1) and case.kernel is None
    np.testing.assert_allclose(case.hr, gray_hr[:8], atol=1e-7)
    with pytest.raises(ValueError, match=r"b\.png has 3 channel\(s\) and .*b_x4\.png has 1"):
        E.paired_cases(pairs[1:], SCALE)


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_matching_rules(tmp_path):
    # Set5-style names with scale tags
    hr = _touch(tmp_path / "a/HR", "baby.png", "bird.png")
    lr = _touch(tmp_path / "a/LR", "baby_x4.png", "BirdX4.png")
    assert [(p.hr.name, p.lr.name) for p in paired.find_pairs(hr, lr)] == [
        ("baby.png", "baby_x4.png"), ("bird.png", "BirdX4.png")]
    # DIV2K-style: the stem after stripping x4
    pairs = paired.find_pairs(_touch(tmp_path / "b/HR", "0801.png", "0802.png"),
                              _touch(tmp_path / "b/LR", "0802x4.png", "0801x4.png"))
    assert [(p.hr.name, p.lr.name) for p in pairs] == [("0801.png", "0801x4.png"), ("0802.png", "0802x4.png")]
    # DIV2KRK-style: by image number, in numeric order
    pairs = paired.find_pairs(_touch(tmp_path / "c/gt", "img_1_gt.png", "img_2_gt.png", "img_10_gt.png"),
                              _touch(tmp_path / "c/lr", "im_10.png", "im_2.png", "im_1.png"),
                              _touch(tmp_path / "c/k", "kernel_2.mat", "kernel_1.mat", "kernel_10.npy"))
    assert [(p.name, p.lr.name, p.kernel.name) for p in pairs] == [
        ("img_1_gt", "im_1.png", "kernel_1.mat"), ("img_2_gt", "im_2.png", "kernel_2.mat"),
        ("img_10_gt", "im_10.png", "kernel_10.npy")]
    assert paired.number_key("img_001_x4") == 1 and paired.name_key("LR_baby_x4") == "baby"


def test_unmatched_files_are_listed(tmp_path):
    gt = _touch(tmp_path / "gt", "img_1_gt.png", "img_2_gt.png", "img_3_gt.png")
    lr = _touch(tmp_path / "lr", "im_1.png", "im_2.png", "im_7.png")
    with pytest.raises(ValueError, match=r"(?s)HR files in .*gt with no LR partner.*img_3_gt\.png"
                                         r".*LR files .*im_7\.png"):
        paired.find_pairs(gt, lr)
    kernels = _touch(tmp_path / "k", "kernel_1.mat", "kernel_3.mat")
    with pytest.raises(ValueError, match=r"(?s)img_2_gt\.png.*im_2\.png"):
        paired.find_pairs(gt, _touch(tmp_path / "lr3", "im_1.png", "im_2.png", "im_3.png"), kernels)
    with pytest.raises(ValueError, match=r"(?s)bird\.png.*zebra_x4\.png"):  # no numbers: by name
        paired.find_pairs(_touch(tmp_path / "n/HR", "baby.png", "bird.png"),
                          _touch(tmp_path / "n/LR", "baby_x4.png", "zebra_x4.png"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        paired.find_pairs(tmp_path / "nowhere", lr)
    with pytest.raises(FileNotFoundError, match="kernel folder .*nokernels"):
        paired.find_pairs(gt, lr, tmp_path / "nokernels")


def test_kernel_files(tmp_path):
    k = np.asarray(D.gaussian8_kernels(2, 11))[3]
    scipy.io.savemat(tmp_path / "other_name.mat", {"my_kernel": k * 3, "note": "x"})  # one 2-D array: taken
    np.testing.assert_allclose(paired.read_kernel(tmp_path / "other_name.mat"), k, rtol=1e-5, atol=1e-9)
    scipy.io.savemat(tmp_path / "two.mat", {"a": k, "b": k})
    with pytest.raises(ValueError, match=r"two\.mat: no kernel variable.*\['a', 'b'\]"):
        paired.read_kernel(tmp_path / "two.mat")
    np.save(tmp_path / "even.npy", np.ones((4, 4)))
    with pytest.raises(ValueError, match=r"even\.npy.*odd"):
        paired.read_kernel(tmp_path / "even.npy")
    np.save(tmp_path / "batched.npy", k[None])  # (1, k, k) is squeezed
    assert paired.read_kernel(tmp_path / "batched.npy").shape == (11, 11)
    np.save(tmp_path / "zero.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"zero\.npy.*positive sum"):
        paired.read_kernel(tmp_path / "zero.npy")


def test_div2krk_layout(div2krk, tmp_path):
    hr, lr, kernels = paired.div2krk_dirs(div2krk.parent, SCALE)  # the zip's top folder kept: root/DIV2KRK
    assert (hr, lr, kernels) == (div2krk / "gt", div2krk / "lr_x4", div2krk / "gt_k_x4")
    assert paired.div2krk_dirs(div2krk, 2) == (div2krk / "gt", div2krk / "lr_x2", None)  # no gt_k_x2/ here
    with pytest.raises(FileNotFoundError, match=r"no lr_x3/ folder.*\['lr_x2/', 'lr_x4/'\]"):
        paired.div2krk_dirs(div2krk, 3)
    with pytest.raises(ValueError, match="not in DIV2KRK's layout"):
        paired.div2krk_dirs(_touch(tmp_path / "flat", "a.png"), SCALE)


# ----------------------------------------------------------------- config and cli

def _cfg(scale=SCALE, **eval_keys):
    cfg = config_lib.load(CONFIGS / "dan.py", "tiny")
    cfg.scale = scale
    cfg.eval.protocol = "paired"
    cfg.eval.update(eval_keys)
    return cfg


def test_config_keys_are_validated():
    cfg = config_lib.base_config()
    assert (cfg.eval.lr_dir, cfg.eval.hr_dir, cfg.eval.kernel_dir) == ("", "", "")
    assert config_lib.EVAL_PROTOCOLS == (*E.PROTOCOLS, E.PAIRED)
    config_lib.validate_eval(_cfg())
    config_lib.validate_eval(_cfg(lr_dir="a", hr_dir="b", kernel_dir="c"))
    with pytest.raises(ValueError, match="config key eval.hr_dir is empty"):
        config_lib.validate_eval(_cfg(lr_dir="a"))
    with pytest.raises(ValueError, match="config key eval.kernel_dir needs"):
        config_lib.validate_eval(_cfg(kernel_dir="c"))
    with pytest.raises(ValueError, match="config key eval.lr_dir is only read by eval.protocol='paired'"):
        config_lib.validate_eval(_cfg(protocol="gaussian8", lr_dir="a", hr_dir="b"))
    with pytest.raises(ValueError, match="config key eval.protocol must be one of"):
        config_lib.validate(_cfg(protocol="div2krk"))


@pytest.fixture
def no_model(monkeypatch, gaussian8_run):
    """predict.build replaced by the bicubic fake: the cli path without a checkpoint."""
    _, kernels = gaussian8_run
    calls = []

    def build(exp, workdir, official=None):
        calls.append(official)
        return fake_model(exp.cfg.scale, jnp.asarray(kernels[ESTIMATE])), "fake bicubic model"

    monkeypatch.setattr(predict_lib, "build", build)
    return calls


def test_cli_evaluate_div2krk_root(div2krk, gaussian8_run, set5_crops, no_model, tmp_path, capsys):
    gaussian8, _ = gaussian8_run
    results = cli.evaluate(_cfg(dirs=(str(div2krk),)), str(tmp_path), official="weights.pth")
    assert list(results) == ["DIV2KRK_paired_x4"] and no_model == ["weights.pth"]
    result = results["DIV2KRK_paired_x4"]
    _assert_same_scores(result["per_image"], _expected(gaussian8, set5_crops))
    assert result["source"] == "fake bicubic model"
    assert (tmp_path / "eval" / "DIV2KRK_paired_x4.md").is_file()
    assert json.loads((tmp_path / "eval" / "DIV2KRK_paired_x4.json").read_text())["kernel_size"] == 21
    assert "| paired |" in capsys.readouterr().out

    # explicit folders, named after the LR folder
    results = cli.evaluate(_cfg(lr_dir=str(div2krk / "lr_x4"), hr_dir=str(div2krk / "gt")), str(tmp_path))
    assert results["lr_x4_paired_x4"]["mean"]["psnr"] == pytest.approx(result["mean"]["psnr"], abs=1e-6)
    assert results["lr_x4_paired_x4"]["mean"]["kernel_mae"] is None


def test_cli_errors_before_loading_a_model(div2krk, no_model, tmp_path):
    with pytest.raises(ValueError, match="eval.dirs: .*not in DIV2KRK's layout.*eval.lr_dir"):
        cli.evaluate(_cfg(dirs=(str(div2krk / "gt"),)), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="eval.dirs: .*no lr_x3/"):
        cli.evaluate(_cfg(3, dirs=(str(div2krk),)), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config key eval.hr_dir: folder .*missing"):
        cli.evaluate(_cfg(lr_dir=str(div2krk / "lr_x4"), hr_dir=str(tmp_path / "missing")), str(tmp_path))
    with pytest.raises(ValueError, match="eval.kernel_dir is empty, but eval.oracle_kernel=True"):
        cli.evaluate(_cfg(lr_dir=str(div2krk / "lr_x4"), hr_dir=str(div2krk / "gt"), oracle_kernel=True),
                     str(tmp_path))
    with pytest.raises(ValueError, match="oracle_kernel=True needs ground-truth kernels.*gt_k_x2"):
        cli.evaluate(_cfg(2, dirs=(str(div2krk),), oracle_kernel=True), str(tmp_path))
    assert no_model == []


def test_cli_evaluate_synthetic_protocol_unchanged(set5_crops, no_model, tmp_path):
    """The same cli loop still runs the degrading protocols (and resolves eval.dirs first)."""
    io.write_image(tmp_path / "hr" / "baby.png", set5_crops[0][1])
    cfg = _cfg(protocol="gaussian8", dirs=(str(tmp_path / "hr"),))
    results = cli.evaluate(cfg, str(tmp_path))
    assert list(results) == ["hr_gaussian8_x4"] and len(results["hr_gaussian8_x4"]["kernels"]) == 8
    with pytest.raises(ValueError, match="eval.dirs: the folder .*missing"):
        cli.evaluate(_cfg(protocol="gaussian8", dirs=(str(tmp_path / "missing"),)), str(tmp_path))
