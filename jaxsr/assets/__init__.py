"""Package data: fitted kernel PCA matrices (see jaxsr.ops.pca)."""
