"""KServe predictor: precomputed batch score for known customers, real-time model for the rest."""
