"""Entry point of `propensity serve`: the same predictor class locally and in the InferenceService.

Options of KServe's own model-server parser (`kserve.model_server.parser`: --max_threads,
--timeout_keep_alive, ...) given on the command line apply too; KServe reads them itself.
"""

from __future__ import annotations

import gc

import kserve

from propensity.settings import Settings
from serving.predictor import PropensityModel


def serve(settings: Settings, port: int | None = None, workers: int | None = None) -> None:
    model = PropensityModel(settings)
    model.load()
    # Everything loaded so far (Feast, MLflow, ONNX Runtime: millions of objects) lives as long as
    # the server. Left in the collector's generations, each full collection walks them all and
    # stalls every request in flight for a few hundred milliseconds (the p99); frozen, it does not.
    gc.collect()
    gc.freeze()
    kserve.ModelServer(
        http_port=port or settings.serving_port, enable_grpc=False, workers=workers or settings.serving_workers
    ).start([model])
