"""Request and response contract of the predictor (V1 `instances`; V2 columns map onto the same rows)."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from propensity.errors import shown

if TYPE_CHECKING:  # KServe takes seconds to import; the deploy step uses this contract without it
    from kserve.protocol.infer_type import InferRequest

MAX_INSTANCES = 1000
# A request with this header set is a deploy step's smoke request: answered like any other, but not
# written to the inference log (monitoring sees only real traffic).
SMOKE_HEADER = "x-propensity-smoke"


class Instance(BaseModel):
    """One customer to score, with optional request-time context for the real-time model."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    customer_id: str = Field(min_length=1, max_length=128)
    country: str | None = Field(None, min_length=1, max_length=64)
    channel: str | None = Field(None, min_length=1, max_length=64)
    signup_date: date | None = None


class PredictRequest(BaseModel):
    instances: list[Instance] = Field(min_length=1, max_length=MAX_INSTANCES)


INSTANCE_FIELDS = tuple(Instance.model_fields)


class Prediction(BaseModel):
    """One answer (documentation of the contract; the predictor builds these as plain dicts)."""

    customer_id: str
    score: float
    source: Literal["batch", "realtime"]
    model: str
    model_version: str
    scored_at: str
    # Why a real-time answer (None for batch): not_in_online_store (a new customer, or one missing from
    # the store), no_score, stale_score, rolled_back (scored by a version that was rolled back).
    reason: Literal["not_in_online_store", "no_score", "stale_score", "rolled_back"] | None


class RequestError(ValueError):
    """A malformed request; the server answers it with HTTP 400 and this message."""


def parse_instances(payload: Any) -> list[Instance]:
    if not isinstance(payload, dict):
        raise RequestError('the request body must be a JSON object like {"instances": [{"customer_id": "c-1"}]}')
    try:
        return PredictRequest.model_validate(payload).instances
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"  # may hold a field name the client sent
        raise RequestError(f"invalid request at {shown(where)}: {' '.join(str(first['msg']).split())}") from None


def parse_v2(request: InferRequest) -> list[Instance]:
    """Open Inference Protocol: one BYTES input tensor per field, all of the same length."""
    columns: dict[str, list[Any]] = {}
    for tensor in request.inputs:
        if tensor.name not in INSTANCE_FIELDS:
            raise RequestError(f"unknown input {shown(tensor.name)}; inputs are {', '.join(INSTANCE_FIELDS)}")
        if tensor.datatype != "BYTES":
            raise RequestError(f"input '{tensor.name}' must have datatype BYTES, not {shown(tensor.datatype)}")
        values = tensor.data if isinstance(tensor.data, list) else []
        try:
            columns[tensor.name] = [v.decode() if isinstance(v, bytes) else v for v in values]
        except UnicodeDecodeError:
            raise RequestError(f"input '{tensor.name}' is not UTF-8 text") from None
    if "customer_id" not in columns:
        raise RequestError("V2 requests need a 'customer_id' input")
    if len({len(v) for v in columns.values()}) != 1:
        raise RequestError("V2 inputs must all have the same length")
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return parse_instances({"instances": rows})
