"""Request and response contract of the predictor (V1 `instances`; V2 columns map onto the same rows)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_INSTANCES = 1000


class Instance(BaseModel):
    """One customer to score, with optional request-time context for the real-time model."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    customer_id: str = Field(min_length=1, max_length=128)
    country: str | None = Field(None, min_length=1, max_length=64)
    channel: str | None = Field(None, min_length=1, max_length=64)
    signup_date: date | None = None


class PredictRequest(BaseModel):
    instances: list[Instance] = Field(min_length=1, max_length=MAX_INSTANCES)


class Prediction(BaseModel):
    customer_id: str
    score: float
    source: Literal["batch", "realtime"]
    model_version: str
    scored_at: str


class RequestError(ValueError):
    """A malformed request; the server answers it with HTTP 400 and this message."""


def parse_instances(payload: Any) -> list[Instance]:
    if not isinstance(payload, dict):
        raise RequestError('the request body must be a JSON object like {"instances": [{"customer_id": "c-1"}]}')
    try:
        return PredictRequest.model_validate(payload).instances
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise RequestError(f"invalid request at '{where}': {first['msg']}") from None
