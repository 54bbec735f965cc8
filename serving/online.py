"""Online feature reads on the request path: one batched read per request, no registry lookups.

The views and features of the online feature service are resolved from the Feast registry once, at
load. Each request then costs one read of the online store for all its customers and all three
views, returning columns exactly as Feast's `get_online_features(...).to_dict()` would (a test
compares them):

* **Redis** (the cluster's store): Feast keeps every view of an entity in one hash, keyed by the
  serialized entity key, with one field per `view:feature` (a murmur3 hash). So one pipelined HMGET
  per customer, sent in one round trip on the server's event loop (redis.asyncio), fetches the
  activity, profile and score of every customer in the request.
* **any other Feast store** (SQLite locally): Feast's own `online_read` per view, run on a small
  worker pool (SQLite has one writer and blocking I/O; the event loop never waits on it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass
from typing import Any, Protocol

from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type

from feature_repo.definitions import ONLINE_SERVICE
from propensity.features import ENTITY

Columns = dict[str, list[Any]]


@dataclass(frozen=True)
class ViewFeatures:
    view: str
    features: tuple[str, ...]


def online_service_views(store: FeatureStore) -> list[ViewFeatures]:
    """The views and features the online feature service serves, read from the registry once."""
    service = store.get_feature_service(ONLINE_SERVICE)
    return [ViewFeatures(p.name_to_use(), tuple(f.name for f in p.features)) for p in service.feature_view_projections]


def entity_key(customer_id: str) -> EntityKeyProto:
    return EntityKeyProto(join_keys=[ENTITY], entity_values=[ValueProto(string_val=customer_id)])


_SCALARS = frozenset({"double_val", "float_val", "int64_val", "int32_val", "string_val", "bool_val", "bytes_val"})


def from_proto(value: ValueProto) -> Any:
    """A value as Feast returns it; scalars (every feature here) without Feast's generic path."""
    kind = value.WhichOneof("val")
    if kind in _SCALARS:
        return getattr(value, kind)
    return feast_value_type_to_python_type(value)


def to_python(raw: bytes | None) -> Any:
    return None if not raw else from_proto(ValueProto.FromString(raw))


class OnlineReader(Protocol):
    async def read(self, customer_ids: list[str]) -> Columns:
        """One column per feature (and the entity), one value per customer, None where unknown."""

    async def ping(self) -> None:
        """Raise if the online store cannot answer."""

    async def aclose(self) -> None:
        """Drop connections; the next read opens new ones (on the loop it runs on)."""


class RedisReader:
    """All views of all requested customers in one pipelined round trip to Redis."""

    def __init__(self, store: FeatureStore, views: list[ViewFeatures]) -> None:
        from feast.infra.online_stores.redis import RedisOnlineStore

        config = store.config
        nodes, self._client_kwargs = RedisOnlineStore._parse_connection_string(config.online_store.connection_string)
        self._client_kwargs.update(host=nodes[0]["host"], port=int(nodes[0].get("port", 6379)))
        self._project = config.project.encode()
        self._version = config.entity_key_serialization_version
        self._names = [f for v in views for f in v.features]
        self._fields = [_mmh3(f"{v.view}:{f}") for v in views for f in v.features]
        self._client: Any = None

    def _redis(self) -> Any:
        # Created on first use, on the event loop that serves (the model is loaded before the server
        # starts its loop).
        if self._client is None:
            import redis.asyncio

            self._client = redis.asyncio.Redis(socket_connect_timeout=3, socket_timeout=5, **self._client_kwargs)
        return self._client

    def _key(self, customer_id: str) -> bytes:
        return serialize_entity_key(entity_key(customer_id), entity_key_serialization_version=self._version) + (
            self._project
        )

    async def read(self, customer_ids: list[str]) -> Columns:
        client = self._redis()
        if len(customer_ids) == 1:
            rows = [await client.hmget(self._key(customer_ids[0]), self._fields)]
        else:
            async with client.pipeline(transaction=False) as pipe:
                for customer_id in customer_ids:
                    pipe.hmget(self._key(customer_id), self._fields)
                rows = await pipe.execute()
        columns: Columns = {ENTITY: list(customer_ids)}
        for j, name in enumerate(self._names):
            columns[name] = [to_python(row[j]) for row in rows]
        return columns

    async def ping(self) -> None:
        await self._redis().ping()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


class FeastReader:
    """Feast's own `online_read`, view by view, on a worker pool the event loop does not wait on."""

    def __init__(self, store: FeatureStore, views: list[ViewFeatures], workers: int = 1) -> None:
        self._store = store
        self._views = [(store.get_feature_view(v.view), list(v.features)) for v in views]
        self._workers = workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _read(self, customer_ids: list[str]) -> Columns:
        provider = self._store._get_provider()
        keys = [entity_key(c) for c in customer_ids]
        columns: Columns = {ENTITY: list(customer_ids)}
        for view, features in self._views:
            rows = provider.online_read(
                config=self._store.config, table=view, entity_keys=keys, requested_features=features
            )
            for name in features:
                columns[name] = [from_proto(v[name]) if v and name in v else None for _, v in rows]
        return columns

    async def read(self, customer_ids: list[str]) -> Columns:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="online-read")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read, customer_ids)

    async def ping(self) -> None:
        await self.read(["__readiness_probe__"])

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def online_reader(store: FeatureStore, workers: int = 1) -> OnlineReader:
    views = online_service_views(store)
    if store.config.online_store.type == "redis":
        return RedisReader(store, views)
    return FeastReader(store, views, workers)
