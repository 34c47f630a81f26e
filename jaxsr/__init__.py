"""jaxsr: blind super-resolution in JAX/Flax (DANv1/v2, KXNet, DSSR, KENet + USRNet)."""
__version__ = "0.1.0"
