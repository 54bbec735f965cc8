"""KServe predictor: precomputed batch score for known customers, real-time model for the rest."""

from propensity.feast_import import prepare_feast_import

# Before any module of this package imports Feast (propensity/feast_import.py).
prepare_feast_import()
