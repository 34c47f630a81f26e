import os
import pathlib

import pytest

# Keep JAX quiet and on the CPU-friendly path in tests; tests never depend on the device count
# unless they set XLA_FLAGS themselves in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark images not found at {SHARED_DATA}")
    return SHARED_DATA
