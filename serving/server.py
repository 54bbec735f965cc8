"""Entry point of `propensity serve`: the same predictor class locally and in the InferenceService.

Options of KServe's own model-server parser (`kserve.model_server.parser`: --max_threads,
--timeout_keep_alive, ...) given on the command line apply too; KServe reads them itself.
"""

from __future__ import annotations

from http import HTTPStatus

import kserve
from fastapi import HTTPException
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.multiprocess.server import RESTServerProcess

from propensity.settings import Settings
from serving.predictor import PropensityModel, freeze_long_lived, log_like_kserve


def patient_supervisor(start_seconds: float) -> None:
    """KServe's multi-process server starts each worker with `spawn` and pings it every half second,
    killing (and restarting) any that has not answered within 5 s. A worker answers only once it has
    imported KServe and unpickled the model (Feast, MLflow, ONNX Runtime): longer than 5 s on a small
    machine, so no worker ever came up. The supervisor waits `start_seconds` for an answer instead;
    a worker that stops answering later is still replaced, just later."""
    original = RESTServerProcess.is_alive
    if getattr(original, "patient", False):
        return

    def is_alive(self: RESTServerProcess, timeout: float = start_seconds) -> bool:
        return bool(original(self, max(timeout, start_seconds)))

    is_alive.patient = True  # type: ignore[attr-defined]
    RESTServerProcess.is_alive = is_alive


class ReadOnlyRepository(ModelRepositoryExtension):
    """KServe serves `POST /v2/repository/models/{name}/load|unload` to anyone who can reach the port:
    one request would unload the model and fail every prediction after it. Models here change only
    through the registry (the deploy step), so those calls are refused with 403; listing still works."""

    async def load(self, model_name: str) -> None:
        raise HTTPException(HTTPStatus.FORBIDDEN, "models are loaded from the MLflow registry, not over HTTP")

    async def unload(self, model_name: str) -> None:
        raise HTTPException(HTTPStatus.FORBIDDEN, "models are switched by the deploy step, not unloaded over HTTP")


def serve(settings: Settings, port: int | None = None, workers: int | None = None) -> None:
    workers = workers or settings.serving_workers
    if workers > 1:
        patient_supervisor(settings.serving_worker_start_seconds)
    log_like_kserve()
    model = PropensityModel(settings)
    model.load()
    freeze_long_lived()
    server = kserve.ModelServer(http_port=port or settings.serving_port, enable_grpc=False, workers=workers)
    server.model_repository_extension = ReadOnlyRepository(model_registry=server.registered_models)
    server.start([model])
