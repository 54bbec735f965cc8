"""Entry point of `propensity serve`: the same predictor class locally and in the InferenceService."""

from __future__ import annotations

import kserve

from propensity.settings import Settings
from serving.predictor import PropensityModel


def serve(settings: Settings, port: int | None = None) -> None:
    model = PropensityModel(settings)
    model.load()
    kserve.ModelServer(http_port=port or settings.serving_port, enable_grpc=False, workers=1).start([model])
