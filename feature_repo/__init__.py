"""Feast feature repository: entities, sources, feature views and feature services."""

from propensity.feast_import import prepare_feast_import

# Before any module of this package imports Feast (propensity/feast_import.py).
prepare_feast_import()
