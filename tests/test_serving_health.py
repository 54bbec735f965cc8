"""Readiness follows the online store after start: a Redis that stops answering makes the predictor
not ready within one check interval, and ready again once it is back. Requests never wait on the
check (KServe asks `healthy()` on every request)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from feast import FeatureStore

from feature_repo.store import feature_repo, repo_config
from propensity.settings import Settings
from serving.online import RedisReader, online_service_views
from serving.predictor import PropensityModel
from tests.services import free_port, start_redis


def test_readiness_follows_the_online_store(lake: Settings, tmp_path: Path) -> None:
    port = free_port()
    settings = lake.model_copy(
        update={
            "online_store": "redis",
            "redis_connection": f"127.0.0.1:{port}",
            "serving_health_interval_seconds": 0.2,
        }
    )
    redis_server = start_redis(port, tmp_path)
    model: PropensityModel | None = None
    try:
        store = FeatureStore(config=repo_config(settings))
        store.apply(feature_repo(settings).objects)
        model = PropensityModel(settings)
        model.reader = RedisReader(store, online_service_views(store))
        model.ready = model.store_ok = True

        async def scenario() -> list[bool]:
            seen = [await model.healthy()]
            redis_server.terminate()
            redis_server.wait()
            await asyncio.sleep(1.0)
            seen.append(await model.healthy())
            t0 = time.perf_counter()
            for _ in range(100):
                await model.healthy()
            seen.append(time.perf_counter() - t0 < 0.05)  # answered from the last check
            restarted = start_redis(port, tmp_path)
            try:
                await asyncio.sleep(1.0)
                seen.append(await model.healthy())
            finally:
                restarted.terminate()
                restarted.wait()
            return seen

        assert asyncio.run(scenario()) == [True, False, True, True]
    finally:
        if model is not None and model.inference_log is not None:
            model.inference_log.stop()
        if redis_server.poll() is None:
            redis_server.kill()
