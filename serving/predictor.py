"""The KServe predictor: look up the nightly score, fall back to the real-time model.

A known customer with a fresh precomputed score gets it (cheap, consistent with the batch). A new
customer, or one whose score is missing or older than `score_max_age_hours`, is scored now by the
cold-start model from Feast online features plus request-time context. Every prediction says which
path served it and which model version produced the score.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from feature_repo.definitions import ONLINE_SERVICE
from feature_repo.store import feature_store
from propensity import features as F
from propensity.errors import PropensityError
from propensity.settings import Settings
from propensity.storage import Storage
from propensity.tracking import CHAMPION, alias_version, load_sklearn
from serving.inference_log import InferenceLogger
from serving.schema import Instance, Prediction, RequestError, parse_instances

MODEL_NAME = "propensity"


def is_fresh(scored_at: str | None, now: datetime, max_age: timedelta) -> bool:
    if not scored_at:
        return False
    try:
        when = datetime.fromisoformat(scored_at)
    except ValueError:
        return False
    return timedelta(0) <= now - when <= max_age


def realtime_features(instances: list[Instance], online: dict[str, list[Any]], today: datetime) -> pd.DataFrame:
    """Online features, with request-time context filling in or overriding what Feast does not know."""
    frame = pd.DataFrame({name: online[name] for name in F.ACTIVITY_FEATURES + F.PROFILE_FEATURES})
    for i, instance in enumerate(instances):
        for column in F.PROFILE_FEATURES:
            value = getattr(instance, column)
            if value is not None:
                frame.loc[i, column] = value
        if pd.isna(frame.loc[i, "tenure_days"]) and instance.signup_date is not None:
            frame.loc[i, "tenure_days"] = max(0.0, float((today.date() - instance.signup_date).days))
    frame = frame.astype({c: "float64" for c in F.ACTIVITY_FEATURES})
    return F.fill_missing_features(frame)


class PropensityModel(Model):
    def __init__(self, settings: Settings, name: str = MODEL_NAME) -> None:
        super().__init__(name)
        self.settings = settings
        self.realtime_model: Any = None
        self.realtime_version = ""
        self.inference_log = InferenceLogger(
            settings.inference_spool_dir, Storage(settings), settings.inference_log_rotate_seconds
        )
        self.store: Any = None

    def load(self) -> bool:
        """Ready only once the real-time model is loaded and the online store answers."""
        ref = alias_version(self.settings, self.settings.realtime_model_name, CHAMPION)
        if ref is None:
            raise PropensityError(
                f"model '{self.settings.realtime_model_name}' has no champion; run the training pipeline first"
            )
        self.realtime_model = load_sklearn(ref)
        self.realtime_version = ref.version
        self.store = feature_store(self.settings)
        self._online_features(["__readiness_probe__"])  # raises if the online store is unreachable
        self.inference_log.start()
        self.ready = True
        return self.ready

    def stop(self) -> None:
        self.inference_log.stop()
        super().stop()

    def _online_features(self, customer_ids: list[str]) -> dict[str, list[Any]]:
        service = self.store.get_feature_service(ONLINE_SERVICE)
        rows = [{F.ENTITY: c} for c in customer_ids]
        return dict(self.store.get_online_features(features=service, entity_rows=rows).to_dict())

    def score(self, instances: list[Instance], now: datetime | None = None) -> list[Prediction]:
        now = now or datetime.now(UTC)
        max_age = timedelta(hours=self.settings.score_max_age_hours)
        online = self._online_features([i.customer_id for i in instances])
        fresh = [
            is_fresh(online["scored_at"][i], now, max_age) and online["score"][i] is not None
            for i in range(len(instances))
        ]
        predictions: list[Prediction | None] = [None] * len(instances)
        for i, instance in enumerate(instances):
            if fresh[i]:
                predictions[i] = Prediction(
                    customer_id=instance.customer_id,
                    score=float(online["score"][i]),
                    source="batch",
                    model_version=str(online["model_version"][i]),
                    scored_at=str(online["scored_at"][i]),
                )
        stale = [i for i, ok in enumerate(fresh) if not ok]
        if stale:
            subset = {k: [v[i] for i in stale] for k, v in online.items()}
            features = realtime_features([instances[i] for i in stale], subset, now)
            scores = np.asarray(self.realtime_model.predict_proba(features[F.REALTIME_MODEL_FEATURES])[:, 1])
            for j, i in enumerate(stale):
                predictions[i] = Prediction(
                    customer_id=instances[i].customer_id,
                    score=float(scores[j]),
                    source="realtime",
                    model_version=self.realtime_version,
                    scored_at=now.isoformat(timespec="seconds"),
                )
        result = [p for p in predictions if p is not None]
        self.inference_log.log(
            [
                {
                    "logged_at": now.isoformat(),
                    **instance.model_dump(mode="json"),
                    **p.model_dump(),
                    **{name: online[name][i] for name in F.ACTIVITY_FEATURES},
                }
                for i, (instance, p) in enumerate(zip(instances, result, strict=True))
            ]
        )
        return result

    def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        try:
            if isinstance(payload, InferRequest):
                return self._predict_v2(payload)
            predictions = self.score(parse_instances(payload))
        except RequestError as exc:
            raise InvalidInput(str(exc)) from None
        return {"predictions": [p.model_dump() for p in predictions]}

    def _predict_v2(self, request: InferRequest) -> InferResponse:
        """Open Inference Protocol: one input tensor per field (customer_id, country, ...)."""
        columns: dict[str, list[Any]] = {}
        for tensor in request.inputs:
            values = tensor.data if tensor.data is not None else []
            columns[tensor.name] = [v.decode() if isinstance(v, bytes) else v for v in values]
        lengths = {len(v) for v in columns.values()}
        if "customer_id" not in columns or len(lengths) != 1:
            raise RequestError("V2 requests need a 'customer_id' input and inputs of equal length")
        rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        predictions = self.score(parse_instances({"instances": rows}))
        outputs = []
        for field, datatype in (
            ("customer_id", "BYTES"),
            ("score", "FP64"),
            ("source", "BYTES"),
            ("model_version", "BYTES"),
            ("scored_at", "BYTES"),
        ):
            data = [getattr(p, field) for p in predictions]
            outputs.append(InferOutput(name=field, shape=[len(data)], datatype=datatype, data=data))
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs)
