"""Shared fixtures: real servers, never mocks.

``kafka_bootstrap`` / ``redis_url`` use ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` when set,
else start the embedded Tansu broker / redis-server once per session (each lazily, so a run
that needs only Redis never starts a broker). Async tests use pytest-asyncio (strict mode:
mark them ``@pytest.mark.asyncio``). ``redis_client`` FLUSHES the database it points at.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as aredis

from stream_detector.dev.embedded import EmbeddedStack


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if configured:
        yield configured
        return
    with EmbeddedStack(kafka=True, redis=False) as stack:
        yield stack.bootstrap_servers


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    configured = os.environ.get("REDIS_URL", "")
    if configured:
        yield configured
        return
    with EmbeddedStack(kafka=False, redis=True) as stack:
        yield stack.redis_url


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.from_url(redis_url, decode_responses=False)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
