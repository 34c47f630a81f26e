"""jaxsr: blind super-resolution in JAX/Flax (DANv1/v2, KXNet, DSSR, KENet + USRNet).

Layers, bottom to top (each imports only from those below it; tests/test_architecture.py checks):
  ops/            pure array functions (degradations, resizing, PCA, metrics, unfolding steps)
  torch_import    generic reading and checking of official PyTorch checkpoints
  models/         one file per system, each ending in its ModelSpec (the model's whole interface)
  data/, config_lib, checkpoints, sharding, io, validation, metric_writer
  train           the one training loop
  predict         predict functions from a checkpoint or an official .pth (eval and infer use them)
  evaluate, infer, cli, main, convert
"""
__version__ = "0.1.0"
