"""The one jaxsr cache directory: `$JAXSR_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxsr`, else
`~/.cache/jaxsr`. Compiled CPU kernels and fitted PCA matrices are kept there."""
from __future__ import annotations

import os
import pathlib


def cache_dir() -> pathlib.Path:
    """Where jaxsr keeps what it builds or fits once per machine (not created here)."""
    if os.environ.get("JAXSR_CACHE_DIR"):
        return pathlib.Path(os.environ["JAXSR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxsr"
