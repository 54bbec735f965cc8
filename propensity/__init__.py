"""Purchase-propensity workflow: shared core (settings, data contracts, synthetic data, table IO, CLI)."""

__version__ = "0.1.0"
