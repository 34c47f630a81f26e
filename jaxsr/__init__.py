"""jaxsr: blind super-resolution in JAX/Flax (DANv1/v2, KXNet, DSSR, KENet + USRNet).

Layers, bottom to top (each imports only from its own layer, without a cycle, and those below;
tests/test_architecture.py checks the same list, `LAYERS`):
  cache, files, progress    the cache directory ($JAXSR_CACHE_DIR), file writing, progress lines
  hardware                  accelerator plugins and device files, judged without importing JAX
  cpu/                      XLA:CPU tuning behind one door: only the names in `jaxsr.cpu.__all__`
  platform                  platform detection, compile options per platform, jaxsr.jit, the GPU fallback
  ops/                      pure array functions (degradations, resizing, PCA, metrics, unfolding steps)
  torch_import, losses      reading official PyTorch checkpoints; the training losses
  models/                   one file per system, each ending in its ModelSpec (the model's whole interface)
  io, sharding, checkpoints, metric_writer, preemption, chart
  data/, config_lib         the input pipeline; loading and checking configs
  paired, experiment        published test files; a config resolved once (`experiment.resolve`)
  predict                   predict functions from a checkpoint or an official .pth
  evaluate, infer           metrics over test sets; restoring images
  validation                the in-loop evaluation
  train                     the one training program and loop (`train.build_program`)
  aot/                      the ahead-of-time fit check of that program
  cli, convert              the command lines
  main                      `python -m jaxsr.main`
"""
__version__ = "0.1.0"


def __getattr__(name):
    if name == "jit":  # jaxsr.jit: jax.jit with the compile options of the platform it runs on
        from jaxsr.platform import jit
        return jit
    raise AttributeError(f"module 'jaxsr' has no attribute {name!r}")
