import os
import pathlib

import pytest

# Keep JAX quiet and on the CPU-friendly path in tests; tests never depend on the device count
# unless they set XLA_FLAGS themselves in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
# "benchmark:Set5" in the configs means $JAXSR_DATA/Set5: tests (and the runs they launch)
# read the benchmark sets from the shared folder beside the checkout, unless told otherwise.
os.environ.setdefault("JAXSR_DATA", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The benchmark root ($JAXSR_DATA, by default ../shared/data beside the checkout); tests
    that need it skip when it is absent."""
    root = pathlib.Path(os.environ["JAXSR_DATA"])
    if not root.is_dir():
        pytest.skip(f"benchmark images not found at {root} (set JAXSR_DATA)")
    return root
