"""Files that appear whole: jaxsr's one atomic writer (images, reports, stores, PCA matrices).

At the bottom of the layers (it imports nothing from jaxsr), so `jaxsr.ops` may use it too.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def is_temporary(name: str) -> bool:
    """Whether a file name is one `atomic_path` writes under (what an interrupted write leaves)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _fsync(path: Path, folder: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:  # some platforms cannot open a folder; its entry is then as durable as it gets
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    Whatever is written to the temporary path appears at ``path`` only complete (``os.replace``
    is atomic on one file system); on an error the temporary file is removed and an existing
    ``path`` is left as it was. Parent folders are created. ``durable``: the file and the
    rename are flushed to disk before the block exits (a store's arrays and manifest, which a
    power cut must not leave half-written under their final names).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: the file should get the usual permissions (umask), not 0600.
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if durable:
        _fsync(path.parent, folder=True)
