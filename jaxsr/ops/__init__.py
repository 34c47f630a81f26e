"""Pure, jittable operators: degradations, MATLAB-compatible resizing, kernel PCA, metrics.

Import the submodules directly, e.g. `import jaxsr.ops.degrade as degrade`.
"""
