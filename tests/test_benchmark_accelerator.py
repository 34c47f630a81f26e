"""benchmarks/accelerator.py at the tiny DANv1 size on the CPU: the two processes (cold compile,
then a restart that loads the cached programs), the timings, the FLOP count and the JSON fields;
and the peak table's device-kind lookup."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "accelerator.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("jaxsr_bench_accelerator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind, platform, name", [
    ("NVIDIA H100 80GB HBM3", "gpu", "H100 SXM"),
    ("NVIDIA H100 PCIe", "gpu", "H100 PCIe"),
    ("NVIDIA H200", "gpu", "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "gpu", "A100"),
    ("TPU v4", "tpu", "TPU v4"),
    ("TPU v5 lite", "tpu", "TPU v5e"),
    ("TPU v5", "tpu", "TPU v5p"),
    ("TPU v6 lite", "tpu", "TPU v6e"),
    ("NVIDIA GeForce RTX 4090", "gpu", None),
    ("cpu", "cpu", None),
])
def test_peak_table_lookup(bench, kind, platform, name):
    found = bench.peak_for(kind, platform)
    assert (found and found[0]) == name
    if found:
        assert found[1]["bf16"] > 1e14 and found[2]  # a dense bf16 peak and its source


def test_tiny_run_on_cpu(tmp_path):
    out = tmp_path / "accelerator.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "3", "--warmup", "1",
                           "--predict-runs", "2", "--eval-size", "16", "--child-timeout", "500", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1100)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ran on the CPU backend" in done.stdout and "MFU | n/a" in done.stdout
    result = json.loads(out.read_text())
    assert set(result) == {"machine", "settings", "cold", "warm", "summary"}
    assert result["machine"]["cpu_model"] and result["machine"]["device"]["platform"] == "cpu"
    s = result["summary"]
    assert s["on_cpu"] is True and s["batch"] == 8 and s["config"].endswith("dan.py:tiny")
    assert s["mfu"] is None and s["peak"] is None
    # cold compiles fill the cache; the restarted process loads both programs from it
    assert s["train_compile_s"]["cold"] > 0 and s["predict_compile_s"]["cold"] > 0
    assert s["warm_cache_hits"]["train"] >= 1 and s["warm_cache_hits"]["predict"] >= 1
    assert result["cold"]["train_cache"]["hits"] == 0 and result["cold"]["train_cache"]["misses"] >= 1
    assert s["train_compile_s"]["warm"] < s["train_compile_s"]["cold"]
    assert s["warm_first_loss_equals_cold"] is True
    assert s["timed_steps"] == 3 and len(result["cold"]["step_times_s"]) == 3
    assert s["step_s_median"] > 0 and s["patches_per_s"] == pytest.approx(8 / s["step_s_median"])
    assert s["predict_s_median"] > 0 and s["predict_lr_size"] == 16
    assert s["flops_per_step"] > 1e6 and s["achieved_flops_per_s"] > 0
    assert s["process_start_to_first_step_s"]["cold"] > 0 and s["process_start_to_first_step_s"]["warm"] > 0
    assert s["cache_entries"] >= 2 and not any("process:" in n for n in s["notes"])


def test_mfu_against_the_chips_peaks(bench):
    """The MFU arithmetic on made-up figures of an H100 run (no GPU here)."""
    device = {"platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3", "count": 1}
    cold = {"role": "cold", "device": device, "step_times_s": [0.02, 0.01, 0.03], "first_step_loss": 0.5,
            "predict_times_s": [0.1]}
    warm = {"role": "warm", "device": device, "first_step_loss": 0.5, "flop_count": {"flops": 1e12, "note": ""}}
    args = argparse.Namespace(flops_per_step=None, config="dan.py:setting1_x4", batch=8, eval_size=256)
    s = bench.summarize(cold, warm, args)
    assert s["on_cpu"] is False and s["step_s_median"] == 0.02 and s["patches_per_s"] == 400
    assert s["achieved_flops_per_s"] == 5e13 and s["peak"]["name"] == "H100 SXM"
    assert s["mfu"]["bf16"] == pytest.approx(5e13 / 989.5e12) and s["mfu"]["fp32"] == pytest.approx(5e13 / 67e12)
    assert s["warm_first_loss_equals_cold"] is True and s["notes"] == []
    unknown = bench.summarize({**cold, "device": {**device, "device_kind": "NVIDIA L4"}}, warm, args)
    assert unknown["mfu"] is None and "not in the peak table" in unknown["notes"][0]
