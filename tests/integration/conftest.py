"""Fixtures of the fake OpenAI server's tests: one in-process fake per module, reset per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from openai import AsyncOpenAI

from consumer.testing.fake_openai import FakeAdmin, FakeConfig, running_fake

#: The knobs every test starts from (seeded, so fault draws and batch orders repeat).
BASE = FakeConfig(seed=11)


@pytest_asyncio.fixture(scope="module")
async def fake_url() -> AsyncIterator[str]:
    """The base URL (``.../v1``) of a fake serving the whole module."""
    async with running_fake(BASE) as url:
        yield url


@pytest_asyncio.fixture
async def admin(fake_url: str) -> AsyncIterator[FakeAdmin]:
    """The fake's admin client, the fake reset to :data:`BASE` first."""
    async with FakeAdmin(fake_url) as admin:
        await admin.patch(
            **BASE.model_dump()
        )  # every test starts from a clean, well-behaved server
        await admin.reset()
        yield admin


@pytest_asyncio.fixture
async def client(fake_url: str, admin: FakeAdmin) -> AsyncIterator[AsyncOpenAI]:
    """The official SDK pointed at the fake, without retries."""
    sdk = AsyncOpenAI(base_url=fake_url, api_key="test", max_retries=0, timeout=10)
    yield sdk
    await sdk.close()
