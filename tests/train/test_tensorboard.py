"""A default install leaves TensorBoard event files (the metrics.jsonl scalars and the validation
grid as an image) and `eval` leaves a PSNR chart beside its tables.

The event files are read back by parsing their records (TFRecord framing around `Event`
protobufs, with tensorboardX's own generated classes), so neither TensorFlow nor the
tensorboard package is needed.
"""
import io as bytes_io
import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

REPO = pathlib.Path(__file__).resolve().parents[2]


def read_events(folder: pathlib.Path) -> list:
    """Every Event in the event files under `folder`, in file order."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])  # skip the length's CRC
            events.append(event)
            pos += 12 + length + 4  # and the data's CRC
    return events


def _run(*args, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env_extra or {}))
    res = subprocess.run([sys.executable, "-m", "jaxsr.main", "--config=configs/dan.py:tiny", *args],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tb") / "run"
    _run(f"--workdir={workdir}", "--config.train.steps=4", "--config.train.log_every=1",
         "--config.train.eval_every=2", "--config.train.checkpoint_every=2")
    return workdir


def test_event_files_hold_the_jsonl_scalars_and_the_validation_grid(run):
    events = read_events(run / "tensorboard")
    scalars, images = {}, {}
    for event in events:
        for value in event.summary.value:
            if value.HasField("image"):
                images[(event.step, value.tag)] = value.image
            elif value.HasField("simple_value"):
                scalars[(event.step, value.tag)] = value.simple_value

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    expected = {(row["step"], key): value for row in rows for key, value in row.items() if key != "step"}
    assert {"loss", "learning_rate", "val_psnr", "val_bicubic_psnr"} <= {key for _, key in expected}
    assert set(scalars) == set(expected)
    for key, value in expected.items():
        assert scalars[key] == pytest.approx(value, rel=1e-6), key

    assert sorted(images) == [(2, "validation"), (4, "validation")]
    grid = np.asarray(Image.open(bytes_io.BytesIO(images[(4, "validation")].encoded_image_string)))
    on_disk = np.asarray(Image.open(run / "validation" / "step_00000004.png"))
    assert grid.shape == on_disk.shape  # the same grid as the PNG beside it
    assert np.abs(grid.astype(int) - on_disk.astype(int)).max() <= 1


def test_eval_writes_a_chart_per_set(run, tmp_path):
    """`benchmark:NAME` through the CLI, resolved against JAXSR_DATA, and the chart beside the tables."""
    rng = np.random.default_rng(0)
    mini = tmp_path / "root" / "Mini"
    mini.mkdir(parents=True)
    for i, shape in enumerate([(64, 60, 3), (56, 64, 3)]):
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        image = 0.5 + 0.3 * np.sin(np.stack([xx / 7 + c + rng.random() for c in range(3)], -1) + yy[..., None] / 9)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(mini / f"img{i}.png")
    _run(f"--workdir={run}", "--mode=eval", "--config.eval.dirs=('benchmark:Mini',)",
         env_extra={"JAXSR_DATA": str(tmp_path / "root")})
    names = sorted(p.name for p in (run / "eval").iterdir())
    assert names == ["Mini_gaussian8_x2.json", "Mini_gaussian8_x2.md", "Mini_gaussian8_x2.png"]
    chart = np.asarray(Image.open(run / "eval" / "Mini_gaussian8_x2.png").convert("RGB"))
    assert chart.shape[0] > 200 and chart.shape[1] > 500
    from jaxsr import chart as chart_lib
    for color in (chart_lib.MODEL_COLOR, chart_lib.BICUBIC_COLOR):
        assert np.all(chart == color, axis=-1).sum() > 500  # the bars are drawn


def test_the_metric_writer_loads_neither_pytorch_nor_boto3(tmp_path):
    """tensorboardX would import PyTorch (~1 s) and boto3 (~0.2 s) at every start, for tensor
    types and S3 folders jaxsr does not use: the writer hides both while it imports tensorboardX
    (imported only when a writer is made), and leaves them importable afterwards."""
    script = (
        "import importlib.util, json, sys\n"
        "from jaxsr import metric_writer\n"
        "before = 'tensorboardX' in sys.modules\n"
        "w = metric_writer.MetricWriter(sys.argv[1], 0)\n"
        "w.write(1, {'loss': 0.5})\n"
        "w.close()\n"
        "loaded = sorted(m for m in ('torch', 'boto3') if m in sys.modules)\n"
        "importable = [m for m in ('torch', 'boto3') if importlib.util.find_spec(m) is not None]\n"
        "for m in importable: __import__(m)\n"
        "print(json.dumps({'before': before, 'loaded': loaded}))\n")
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"before": False, "loaded": []}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
