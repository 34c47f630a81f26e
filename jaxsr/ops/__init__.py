"""Pure, jittable operators: degradations, MATLAB-compatible resizing, kernel PCA, metrics, and
the data-term steps of the unfolded networks (`unfolding`).

The bottom layer of jaxsr: these modules import nothing else from the package, so they can be
used on their own. Import the submodules directly, e.g. `import jaxsr.ops.degrade as degrade`.
"""
