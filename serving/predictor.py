"""The KServe predictor: look up the nightly score, fall back to the real-time model.

A known customer with a fresh precomputed score gets it (cheap, consistent with the batch). A new
customer, or one whose score is missing, older than `score_max_age_hours` or made by a rolled-back
model version, is scored now by the cold-start model from Feast online features plus request-time
context. Every prediction says which path served it, which model and which model version produced
the score, and for a real-time answer why (`reason`): a customer the online store holds nothing for
(new, or missing from the store) is told apart from one whose score is missing or stale.

A server that is not pinned to a version (`serving_model_version`) follows the `champion` alias: a
background task loads a new champion off the event loop, checks it with smoke rows and only then
swaps it in, in one assignment, so no request fails or sees half a model. It also picks up rolled-back
versions, whose precomputed scores stop being served.

The request path costs little beyond KServe itself: one batched online-store read for every
customer in the request (serving/online.py), the real-time model in the runtime chosen at training
(propensity/runtime.py), no registry lookups, no pandas, nothing blocking the event loop. Inference
records go to a background writer and never hold up or fail a request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import Model
from kserve.errors import InvalidInput
from kserve.model_server import app as kserve_app
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from prometheus_client import Counter

from feature_repo.store import feature_store
from propensity import features as F
from propensity.errors import PropensityError
from propensity.runtime import OnnxScorer, PipelineScorer, smoke_check
from propensity.settings import Settings
from propensity.storage import Storage
from propensity.tracking import ModelRef, load_scorer, rolled_back_versions, served_realtime_model
from serving.inference_log import InferenceLogger
from serving.online import Columns, OnlineReader, online_reader
from serving.schema import INSTANCE_FIELDS, SMOKE_HEADER, Instance, RequestError, parse_instances, parse_v2

MODEL_NAME = "propensity"
BATCH, REALTIME = "batch", "realtime"
# Why a prediction came from the real-time model.
NOT_IN_STORE, NO_SCORE, STALE_SCORE, ROLLED_BACK = "not_in_online_store", "no_score", "stale_score", "rolled_back"
PREDICTIONS = Counter(
    "propensity_predictions",
    "Predictions served, by path, model version and fallback reason",
    ["source", "model", "model_version", "reason"],
)
logger = logging.getLogger(__name__)


def log_like_kserve() -> None:
    """The serving package's records (model swaps, online-store health, the inference log) go where
    KServe's go, in its format and at its level. Left alone, Python drops records below WARNING, so a
    model swap never showed in a server's log. In the server process and in each worker."""
    from kserve.constants.constants import KSERVE_LOGLEVEL
    from kserve.logging import KSERVE_LOGGER_DATE_FORMAT, KSERVE_LOGGER_FORMAT

    ours = logging.getLogger(__name__.split(".")[0])
    if ours.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(KSERVE_LOGGER_FORMAT, KSERVE_LOGGER_DATE_FORMAT))
    ours.addHandler(handler)
    ours.setLevel(KSERVE_LOGLEVEL)  # what KServe sets its own loggers to (KSERVE_LOGLEVEL, INFO)
    ours.propagate = False


async def _schema_error_as_400(request: Request, error: Exception) -> JSONResponse:
    """A V2 body that does not fit the Open Inference Protocol schema fails FastAPI's validation,
    which answers 422 in its own format; answer it as every other bad request: 400 and a message."""
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
    return JSONResponse(status_code=400, content={"error": f"invalid request at '{where}': {first.get('msg', error)}"})


# KServe's FastAPI app is a module-level object that each server process imports; this module is
# imported in each of them too (the model is unpickled there), so the handler is registered in all.
kserve_app.add_exception_handler(RequestValidationError, _schema_error_as_400)


def is_fresh(scored_at: str | None, now: datetime, max_age: timedelta) -> bool:
    """A score no older than `max_age`. A `scored_at` ahead of this server's clock (skew between the
    scoring job's clock and ours) counts as fresh, unless it is further ahead than `max_age`."""
    if not scored_at:
        return False
    try:
        when = datetime.fromisoformat(scored_at)
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return abs(now - when) <= max_age


def realtime_columns(instances: list[Instance], online: Columns, rows: list[int], today: date) -> Columns:
    """The real-time model's inputs for `rows`: online features, with request-time context filling in
    or overriding what Feast does not know. None stays None (the runtime fills it as training did)."""
    columns: Columns = {}
    for column in F.REALTIME_MODEL_FEATURES:
        values = online[column]
        if column in F.PROFILE_FEATURES:
            columns[column] = [
                request if (request := getattr(instances[i], column)) is not None else values[i] for i in rows
            ]
        else:
            columns[column] = [values[i] for i in rows]
    tenure = columns["tenure_days"]
    for j, i in enumerate(rows):
        signup = instances[i].signup_date
        if tenure[j] is None and signup is not None:
            tenure[j] = max(0.0, float((today - signup).days))
    return columns


def freeze_long_lived() -> None:
    """Everything loaded so far (Feast, MLflow, ONNX Runtime: millions of objects) lives as long as
    the server. Left in the collector's generations, each full collection walks them all and stalls
    every request in flight for a few hundred milliseconds (the p99); frozen, it does not."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class Served:
    """The real-time model in service; replaced whole, never changed in place."""

    scorer: OnnxScorer | PipelineScorer
    version: str


def load_checked(ref: ModelRef) -> Served:
    """Load a real-time model version and check it answers before anything serves it."""
    scorer = load_scorer(ref, F.REALTIME_MODEL_FEATURES)
    smoke_check(scorer)
    return Served(scorer, ref.version)


class PropensityModel(Model):
    def __init__(self, settings: Settings, name: str = MODEL_NAME) -> None:
        super().__init__(name)
        self.settings = settings
        self.max_age = timedelta(hours=settings.score_max_age_hours)
        self.served: Served | None = None
        self.rolled_back: frozenset[str] = frozenset()  # batch model versions whose scores are refused
        self.refused: str | None = None  # a version that failed to load or check: not retried
        self.reader: OnlineReader | None = None
        self.store_ok = False
        # Per serving process (KServe workers are separate processes): started on first use.
        self.inference_log: InferenceLogger | None = None
        self._health: asyncio.Task[None] | None = None
        self._models: asyncio.Task[None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # KServe hands the loaded model to each worker process by pickling it: threads, tasks and
        # connections are made again there.
        return {**self.__dict__, "inference_log": None, "_health": None, "_models": None, "reader": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # In a worker process everything the model pulled in has just been imported and unpickled.
        self.__dict__.update(state)
        freeze_long_lived()
        log_like_kserve()

    def load(self) -> bool:
        """Ready once the real-time model is loaded and the online store answers."""
        ref = served_realtime_model(self.settings)
        if ref is None:
            raise PropensityError(
                f"model '{self.settings.model_name}' has no champion release; run the training pipeline first"
            )
        self.served = load_checked(ref)
        self.rolled_back = rolled_back_versions(self.settings)
        self.reader = online_reader(feature_store(self.settings), self.settings.serving_read_threads)
        # Raises if the online store is unreachable. A loop of its own, not asyncio.run: that would
        # leave no current loop for the server to start on.
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._probe_once())
        finally:
            loop.close()
        self.store_ok = True
        self.ready = True
        logger.info("real-time model v%s served by %s", ref.version, self.served.scorer.runtime)
        return self.ready

    async def _probe_once(self) -> None:
        assert self.reader is not None
        try:
            await self.reader.ping()
        finally:
            await self.reader.aclose()  # its connections belong to this short-lived event loop

    def _started(self) -> None:
        """Start this process's online-store reader, inference-log writer and health check, once."""
        if self.reader is None:
            self.reader = online_reader(feature_store(self.settings), self.settings.serving_read_threads)
        if self.inference_log is None:
            self.inference_log = InferenceLogger(
                self.settings.inference_spool_dir, Storage(self.settings), self.settings.inference_log_rotate_seconds
            )
            self.inference_log.start()
        if self._health is None:
            self._health = asyncio.get_running_loop().create_task(self._watch_store())
        if self._models is None:
            self._models = asyncio.get_running_loop().create_task(self._watch_models())

    async def _watch_models(self) -> None:
        """Follow the registry: rolled-back versions, and (unless pinned) a new champion, loaded and
        checked in a thread and swapped in only once it answers."""
        while True:
            await asyncio.sleep(self.settings.serving_model_poll_seconds)
            try:
                await self.refresh_models()
            except Exception:  # registry down: keep serving what is loaded
                logger.exception("could not check the model registry; serving v%s", self._version())

    def _version(self) -> str:
        return self.served.version if self.served else ""

    async def refresh_models(self) -> None:
        self.rolled_back = await asyncio.to_thread(rolled_back_versions, self.settings)
        if self.settings.serving_model_version:
            return  # pinned: the release never changes in this process
        ref = await asyncio.to_thread(served_realtime_model, self.settings)
        if ref is None or ref.version in (self._version(), self.refused):
            return
        logger.info("new real-time model v%s: loading it beside v%s", ref.version, self._version())
        try:
            served = await asyncio.to_thread(load_checked, ref)
        except Exception:
            self.refused = ref.version
            logger.exception(
                "real-time model v%s failed to load or check; still serving v%s", ref.version, self._version()
            )
            return
        self.served = served  # one assignment: each request uses either the old model or the new one
        logger.info("real-time model v%s served by %s", served.version, served.scorer.runtime)

    async def _watch_store(self) -> None:
        assert self.reader is not None
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the task's cancellation.
                async with asyncio.timeout(self.settings.serving_health_interval_seconds):
                    await self.reader.ping()
                ok = True
            except Exception as error:  # any failure to answer means not ready
                ok = False
                reason = str(error) or type(error).__name__
            if ok != self.store_ok:
                if ok:
                    logger.info("online store answers again: ready")
                else:
                    logger.error("online store does not answer (%s): not ready", reason)
            self.store_ok = ok
            await asyncio.sleep(self.settings.serving_health_interval_seconds)

    async def healthy(self) -> bool:
        # KServe asks on every request: answer from the last check, never with a round trip.
        self._started()
        return self.ready and self.store_ok

    def stop(self) -> None:
        if self.inference_log is not None:
            self.inference_log.stop()
        super().stop()

    async def score(
        self, instances: list[Instance], now: datetime | None = None, log: bool = True
    ) -> list[dict[str, Any]]:
        self._started()
        served, rolled_back = self.served, self.rolled_back  # one model for the whole request
        assert self.reader is not None and served is not None
        now = now or datetime.now(UTC)
        online = await self.reader.read([i.customer_id for i in instances])
        scores, versions, stamps = online["score"], online["model_version"], online["scored_at"]
        reasons: dict[int, str] = {}
        for i in range(len(instances)):
            if scores[i] is None:
                known = any(online[name][i] is not None for name in F.REALTIME_MODEL_FEATURES)
                reasons[i] = NO_SCORE if known else NOT_IN_STORE
            elif str(versions[i]) in rolled_back:
                reasons[i] = ROLLED_BACK
            elif not is_fresh(stamps[i], now, self.max_age):
                reasons[i] = STALE_SCORE
        realtime: dict[int, float] = {}
        if reasons:
            stale = list(reasons)
            columns = realtime_columns(instances, online, stale, now.date())
            realtime = dict(zip(stale, served.scorer.score(columns, len(stale)).tolist(), strict=True))
        scored_now = now.isoformat(timespec="seconds")
        predictions = []
        for i, instance in enumerate(instances):
            if i in realtime:
                prediction = {
                    "customer_id": instance.customer_id,
                    "score": realtime[i],
                    "source": REALTIME,
                    "model": self.settings.realtime_model_name,
                    "model_version": served.version,
                    "scored_at": scored_now,
                    "reason": reasons[i],
                }
            else:
                prediction = {
                    "customer_id": instance.customer_id,
                    "score": float(scores[i]),
                    "source": BATCH,
                    "model": self.settings.model_name,
                    "model_version": str(versions[i]),
                    "scored_at": str(stamps[i]),
                    "reason": None,
                }
            labels = (
                prediction["source"],
                prediction["model"],
                prediction["model_version"],
                prediction["reason"] or "",
            )
            PREDICTIONS.labels(*labels).inc()
            predictions.append(prediction)
        if log:
            self._log(instances, online, predictions, now)
        return predictions

    def _log(
        self, instances: list[Instance], online: Columns, predictions: list[dict[str, Any]], now: datetime
    ) -> None:
        """Only the declared request fields, the online features the models saw, and the answer."""
        assert self.inference_log is not None
        logged_at = now.isoformat()
        self.inference_log.log(
            [
                {
                    "logged_at": logged_at,
                    **{field: getattr(instance, field) for field in INSTANCE_FIELDS},
                    **prediction,
                    **{name: online[name][i] for name in F.ACTIVITY_FEATURES},
                }
                for i, (instance, prediction) in enumerate(zip(instances, predictions, strict=True))
            ]
        )

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest | bytes,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        log = not (headers and headers.get(SMOKE_HEADER))
        try:
            if isinstance(payload, InferRequest):
                return await self._predict_v2(payload, log)
            if isinstance(payload, bytes | str):
                # KServe passes the body through undecoded when the client did not declare JSON
                # (curl -d sends a form content type): a JSON body is accepted whatever its label.
                try:
                    payload = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise RequestError("the request body is not valid JSON (UTF-8)") from None
            predictions = await self.score(parse_instances(payload), log=log)
        except RequestError as exc:
            raise InvalidInput(str(exc)) from None
        return {"predictions": predictions}

    async def _predict_v2(self, request: InferRequest, log: bool) -> InferResponse:
        """Open Inference Protocol: one input tensor per field (customer_id, country, ...)."""
        predictions = await self.score(parse_v2(request), log=log)
        outputs = []
        for field, datatype in (
            ("customer_id", "BYTES"),
            ("score", "FP64"),
            ("source", "BYTES"),
            ("model", "BYTES"),
            ("model_version", "BYTES"),
            ("scored_at", "BYTES"),
            ("reason", "BYTES"),
        ):
            data = ["" if p[field] is None else p[field] for p in predictions]
            outputs.append(InferOutput(name=field, shape=[len(data)], datatype=datatype, data=data))
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs)
