"""Fixtures of the CPU tuning's tests."""
import pytest

from jaxsr.cpu import native


@pytest.fixture(scope="session")
def native_kernels() -> native.Kernels:
    """The native kernels, built (once per machine, into the jaxsr cache) and registered the first
    time a test asks for them, never while tests are collected; such tests skip where they cannot
    be built."""
    if not native.load(build_missing=True):
        pytest.skip("jaxsr.cpu.native cannot be built here (no C++ compiler, AVX-512 or x86-64)")
    return native.in_use()
