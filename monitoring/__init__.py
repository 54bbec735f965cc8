"""Monitoring: Evidently drift checks against the training reference, and the retraining trigger."""
