"""KFP components: plain step functions (one module per stage) and thin wrappers in `kfp_components`."""

from propensity.feast_import import prepare_feast_import

# Before any module of this package imports Feast (propensity/feast_import.py).
prepare_feast_import()
