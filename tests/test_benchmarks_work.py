"""benchmarks/models.py's work column: the training step's FLOPs against what the loss needs.

Tiny DANv1 (T = 2, the loss weights only the last iteration): the step jaxsr trains differentiates
one iteration and costs about what the loss needs; the same step differentiating both iterations
(train_from = 0, DAN's old training forward) costs clearly more, so the ratio can fail.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("jaxsr_bench_models", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_dan_step_does_no_wasted_work(bench):
    from jaxsr.cpu import native
    native.load(build_missing=True)  # as after any earlier test that loaded it: the count must not change
    rec = bench.work_count("danv1", tiny=True, size=16, batch=2)
    assert rec["iterations"] == 2 and rec["differentiated_iterations"] == 1
    assert rec["custom_calls"] == []  # XLA's count sees every FLOP
    assert rec["needed_flops"] == pytest.approx(2.0 * rec["forward_flops"])  # F + 2F * 1/2
    assert rec["forward_flops"] < rec["step_flops"]
    assert rec["step_over_needed"] <= 1.1, bench.work_summary(rec)
    # the full backward through both iterations: F + 2F, 1.5x needed in the convention
    assert rec["full_step_over_needed"] >= 1.3, bench.work_summary(rec)
    assert rec["full_step_flops"] > 1.3 * rec["step_flops"]
    assert "step/needed" in bench.work_summary(rec)
    table = bench.work_table([rec])
    assert "| danv1 | 2 (1) |" in table
