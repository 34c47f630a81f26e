"""What this machine can compile for and run on, judged from installed packages and device files
without importing JAX or starting a backend: `python -m jaxsr.main` asks before JAX loads (its
allocator restart re-executes the process, and whatever was imported by then is imported twice).
`jaxsr.platform` offers the same names.
"""
from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def cuda_plugin_installed() -> bool:
    """Whether JAX's CUDA plugin (jax[cuda12]) is installed; no GPU or driver is needed to compile."""
    for name in ("jax_cuda12_plugin", "jax_plugins.xla_cuda12"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ImportError:
            continue
    return False


def tpu_attached() -> bool:
    """Whether a TPU chip is attached to this machine (its device files), without starting libtpu."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def gpu_attached() -> bool:
    """Whether an NVIDIA or AMD GPU shows its device files here."""
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/kfd")


def accelerator_likely() -> bool:
    """Whether JAX will likely run on a GPU/TPU here, judged without starting a backend:
    JAX_PLATFORMS names another platform, or a PJRT plugin (libtpu, the `jax_plugins` namespace or
    entry points) is installed and the machine shows an accelerator's device files. A plugin alone
    (the `tpu` extra installed for ahead-of-time compiles on a CPU machine) does not count."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return any(p.strip() not in ("cpu", "") for p in platforms.split(","))
    plugin = libtpu_installed()
    if not plugin:
        try:
            plugin = bool(importlib.metadata.entry_points(group="jax_plugins"))
        except Exception:  # noqa: BLE001 - a broken metadata entry is not a plugin
            plugin = False
    if not plugin:
        plugin = importlib.util.find_spec("jax_plugins") is not None  # the CUDA/ROCm plugins' namespace
    return plugin and (tpu_attached() or gpu_attached())
