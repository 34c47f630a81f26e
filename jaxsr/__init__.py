"""jaxsr: blind super-resolution in JAX/Flax (DANv1/v2, KXNet, DSSR, KENet + USRNet).

Layers, bottom to top (each imports only from those below it; tests/test_architecture.py checks):
  cache           the one cache directory ($JAXSR_CACHE_DIR)
  cpu/            XLA:CPU tuning behind one door: the names `jaxsr.cpu` exports
  platform        platform detection, compile options per platform, jaxsr.jit, the GPU fallback
  ops/            pure array functions (degradations, resizing, PCA, metrics, unfolding steps)
  torch_import    generic reading and checking of official PyTorch checkpoints
  models/         one file per system, each ending in its ModelSpec (the model's whole interface)
  data/, config_lib, checkpoints, sharding, io, validation, metric_writer
  train           the one training loop
  predict         predict functions from a checkpoint or an official .pth (eval and infer use them)
  evaluate, infer, cli, main, convert
"""
__version__ = "0.1.0"


def __getattr__(name):
    if name == "jit":  # jaxsr.jit: jax.jit with the compile options of the platform it runs on
        from jaxsr.platform import jit
        return jit
    raise AttributeError(f"module 'jaxsr' has no attribute {name!r}")
