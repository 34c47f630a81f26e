"""`jaxsr.platform`: platform detection, the per-platform compile options, and the GPU fallback
that training (`jaxsr.jit`) and `jaxsr.aot` share."""
from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import hardware, platform


class Compiled:
    def memory_analysis(self):
        return None

    def cost_analysis(self):
        return None

    def as_text(self):
        return ""


COMPILED = Compiled()


class Lowered:
    """A stand-in for `jax.stages.Lowered` whose first compile fails with `error`."""

    def __init__(self, error):
        self.error, self.options = error, []

    def as_text(self):
        return ""

    def compile(self, compiler_options=None):
        self.options.append(compiler_options)
        if compiler_options is None:
            raise RuntimeError(self.error)
        return COMPILED


TILING = "INTERNAL: Couldn't find output tile sizes that satisfy hlo: %dot.2 = f32[576,128]"


def test_gpu_tiling_failure_is_compiled_again_without_triton_gemms():
    """On a GPU, XLA's Triton tiling failure compiles again with Triton GEMMs off; any other
    error, or the same error for another platform, stays an error."""
    tiling = Lowered(TILING)
    assert platform.compile_lowered(tiling, "gpu") == (COMPILED, {"xla_gpu_enable_triton_gemm": False})
    assert tiling.options == [None, {"xla_gpu_enable_triton_gemm": False}]
    with pytest.raises(RuntimeError, match="something else"):
        platform.compile_lowered(Lowered("INTERNAL: something else"), "gpu")
    with pytest.raises(RuntimeError, match="tile sizes"):
        platform.compile_lowered(Lowered(TILING), "tpu")
    assert platform.gpu_fallback_options("RESOURCE_EXHAUSTED: out of memory") is None


def test_aot_reports_the_fallback():
    from jaxsr import aot
    result = aot.compile_program(Lowered(TILING), 1 << 30, "gpu")
    assert result["compile_options"] == {"xla_gpu_enable_triton_gemm": False} and "could not tile" in result["note"]
    result = aot.compile_program(Lowered("INTERNAL: something else"), 1 << 30, "gpu")
    assert result["error"] == "INTERNAL: something else" and "compile_options" not in result


def test_platform_of_reads_meshes_shardings_and_devices():
    from jaxsr import sharding
    mesh = sharding.make_mesh(None, jax.devices()[:1])
    assert platform.platform_of(mesh) == platform.platform_of(sharding.replicated(mesh)) == "cpu"
    assert platform.platform_of(jax.devices()) == platform.platform_of(jax.devices()[0]) == "cpu"


def test_compiler_options_per_platform():
    assert platform.compiler_options("tpu") == {} and platform.compiler_options("gpu") == {}
    assert set(platform.compiler_options("cpu")) <= {"xla_cpu_experimental_ynn_fusion_type"}
    with pytest.raises(ValueError, match="platform must be one of"):
        platform.compiler_options("metal")


def test_jit_takes_the_platform_from_abstract_arguments():
    """A lowering for compile-only devices takes their platform from the arguments' shardings;
    the CPU options are applied only to CPU programs."""
    fn = platform.jit(lambda x: x * 2)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    x = jax.ShapeDtypeStruct((3,), jnp.float32, sharding=sharding)
    assert fn.platform((x,)) == "cpu"
    np.testing.assert_array_equal(np.asarray(fn(jnp.arange(3.0))), [0.0, 2.0, 4.0])
    assert "cpu" in fn._jitted


QUIET_START = """
from jaxsr import platform
chosen = platform.skip_absent_tpu()
import jax
print(chosen, jax.default_backend())
"""


@pytest.mark.skipif(not platform.libtpu_installed() or platform.tpu_attached(),
                    reason="needs libtpu installed on a machine without a TPU")
def test_start_without_tpu_is_quiet(tmp_path):
    """With the tpu extra installed and no TPU here, jaxsr starts on the CPU without libtpu's
    initialisation errors; plain JAX (the control) prints them."""
    import os
    # without what an earlier in-process AOT compile set for libtpu (jaxsr.aot.prepare_libtpu)
    env = {k: v for k, v in os.environ.items()
           if k != "JAX_PLATFORMS" and not k.startswith("TPU_") and k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}
    ours = subprocess.run([sys.executable, "-c", QUIET_START], env=env, capture_output=True, text=True, timeout=300)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout.split() == ["cpu", "cpu"]
    assert "TPU_WORKER_HOSTNAMES" not in ours.stderr and "INVALID_ARGUMENT" not in ours.stderr, ours.stderr
    plain = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.stdout.split() == ["cpu"] and "TPU" in plain.stderr  # what the quiet start avoids


def test_accelerator_likely_follows_jax_platforms(monkeypatch):
    """JAX_PLATFORMS decides when set: an accelerator when it names any platform but the CPU."""
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert platform.accelerator_likely()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not platform.accelerator_likely()


def test_an_installed_plugin_without_an_accelerator_is_not_one(monkeypatch):
    """The `tpu` extra (libtpu, for ahead-of-time compiles) on a CPU-only machine: no device files,
    so the CPU settings stay (`jaxsr.cpu.setup(accelerator=...)`)."""
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(hardware, "libtpu_installed", lambda: True)
    monkeypatch.setattr(hardware, "tpu_attached", lambda: False)
    monkeypatch.setattr(hardware, "gpu_attached", lambda: False)
    assert not hardware.accelerator_likely()
    assert platform.accelerator_likely is hardware.accelerator_likely  # platform re-exports it
    monkeypatch.setattr(hardware, "tpu_attached", lambda: True)
    assert hardware.accelerator_likely()
    monkeypatch.setattr(hardware, "libtpu_installed", lambda: False)  # device files, but no plugin at all
    monkeypatch.setattr(hardware.importlib.metadata, "entry_points", lambda group: [])
    monkeypatch.setattr(hardware.importlib.util, "find_spec", lambda name: None)
    assert not hardware.accelerator_likely()


def test_the_allocator_restart_comes_before_jax_loads():
    """`python -m jaxsr.main` re-executes itself for its allocator settings in its first lines:
    what it needs for that (`jaxsr.cpu.restart_with_malloc_tuning`, `jaxsr.hardware`) imports no
    JAX, so nothing heavy is imported twice; the rest of `jaxsr.cpu` loads JAX when first used."""
    code = ("import sys; from jaxsr import cpu, hardware; hardware.accelerator_likely(); "
            "print('jax' in sys.modules, callable(cpu.restart_with_malloc_tuning)); cpu.on_cpu; "
            "print('jax' in sys.modules, all(getattr(cpu, n) is not None for n in cpu.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False", "True", "True", "True"], out.stderr


def test_aot_says_when_a_program_came_from_the_compilation_cache():
    """A compile answered by the persistent cache is reported as a load, not as a compile time."""
    from jaxsr import aot
    from jaxsr.aot import measure, report

    class Fresh(Lowered):
        def compile(self, compiler_options=None):
            return COMPILED

    class Cached(Lowered):
        def compile(self, compiler_options=None):
            jax.monitoring.record_event(measure.CACHE_HIT_EVENT)
            return COMPILED

    fresh, cached = (aot.compile_program(lowered, 1 << 30, "tpu") for lowered in (Fresh(None), Cached(None)))
    assert fresh["from_cache"] is False and cached["from_cache"] is True
    lines = {name: report._program_lines({"memory_bytes": 1 << 30, "platform": "tpu", "target": "v5e-1",
                                          "batch": {}, "num_devices": 1}, "train_step_remat", p)[1]
             for name, p in (("fresh", fresh), ("cached", cached))}
    assert "persistent compilation cache" in lines["cached"] and "cache" not in lines["fresh"]
