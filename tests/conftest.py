import os
import pathlib
import shutil
import sys
import tempfile

import pytest

from jaxsr import cache  # starts no JAX

# Keep JAX quiet and on the CPU-friendly path in tests; tests never depend on the device count
# unless they set XLA_FLAGS themselves in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
# "benchmark:Set5" in the configs means $JAXSR_DATA/Set5: tests (and the runs they launch)
# read the benchmark sets from the shared folder beside the checkout, unless told otherwise.
os.environ.setdefault("JAXSR_DATA", str(SHARED_DATA))

# `from helpers import ...` in any test file, whatever pytest's import mode.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

# One persistent compilation cache for every process the tests start (training runs, the
# multi-host launcher, jaxsr.aot, `python -c` children): a program compiled by one run is loaded,
# not compiled, by the next (the resumed runs, eval, infer). A fresh folder per session keeps
# runs comparable; set JAXSR_COMPILATION_CACHE=DIR to keep one across sessions. JAX's own
# variables cover children that start JAX without jaxsr's entry points.
_SESSION_XLA_CACHE = None
if not os.environ.get(cache.COMPILATION_CACHE_ENV):
    _SESSION_XLA_CACHE = tempfile.mkdtemp(prefix="jaxsr-tests-xla-")
    os.environ[cache.COMPILATION_CACHE_ENV] = _SESSION_XLA_CACHE
if cache.compilation_cache_setting() is not None:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache.compilation_cache_setting())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(cache.MIN_COMPILE_SECONDS))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

def pytest_configure(config):
    # The pytest process itself stays off the cache: its tests time compiles (jaxsr.aot) and count
    # them, and JAX opens the cache only at the first compile, so this is early enough.
    import jax
    jax.config.update("jax_enable_compilation_cache", False)


def pytest_unconfigure(config):
    if _SESSION_XLA_CACHE:
        shutil.rmtree(_SESSION_XLA_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The benchmark root ($JAXSR_DATA, by default ../shared/data beside the checkout); tests
    that need it skip when it is absent."""
    root = pathlib.Path(os.environ["JAXSR_DATA"])
    if not root.is_dir():
        pytest.skip(f"benchmark images not found at {root} (set JAXSR_DATA)")
    return root
