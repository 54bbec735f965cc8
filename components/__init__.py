"""KFP components: plain step functions (one module per stage) and thin wrappers in `kfp_components`."""
