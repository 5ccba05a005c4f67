"""Test-side client for the fake's ``/_fake/*`` routes, over real HTTP."""

from __future__ import annotations

from typing import Any, Self

import aiohttp


class FakeAdmin:
    """Read stats, reset, list logged requests and change knobs of a running fake.

    ``base_url`` is what ``running_fake`` or ``tests/fake_server.py`` gives (``.../v1`` or the
    bare origin). Use as ``async with FakeAdmin(url) as admin:`` or call ``close()``.
    """

    def __init__(self, base_url: str) -> None:
        self.origin = base_url.rstrip("/").removesuffix("/v1")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.request(method, self.origin + path, **kwargs) as response:
            data = await response.json()
            if response.status >= 400:
                raise ValueError(f"{method} {path}: {response.status} {data}")
            return data

    async def stats(self) -> dict[str, Any]:
        """``{"total", "by_path", "by_outcome", "tokens": {"prompt", "completion", "cached"},
        "files_uploaded", "batches_created"}``."""
        data: dict[str, Any] = await self._call("GET", "/_fake/stats")
        return data

    async def files_uploaded(self) -> int:
        """How many files ``POST /v1/files`` stored since the start or the last reset."""
        return int((await self.stats()).get("files_uploaded", 0))  # benchmark mode: none

    async def batches_created(self) -> int:
        """How many batches ``POST /v1/batches`` created since the start or the last reset
        (one with an invalid input file counts: it was created, then failed)."""
        return int((await self.stats()).get("batches_created", 0))

    async def reset(self) -> None:
        """Zero stats and the request log, forget files and batches (see ``/_fake/reset``)."""
        await self._call("POST", "/_fake/reset")

    async def requests(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The last ``limit`` logged requests, oldest first: method, path, headers, body."""
        data = await self._call("GET", "/_fake/requests", params={"limit": str(limit)})
        found: list[dict[str, Any]] = data["requests"]
        return found

    async def config(self) -> dict[str, Any]:
        """The current knobs."""
        data: dict[str, Any] = await self._call("GET", "/_fake/config")
        return data

    async def patch(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs (e.g. ``outage=True``); returns the new knobs. ValueError if rejected."""
        data: dict[str, Any] = await self._call("PATCH", "/_fake/config", json=knobs)
        return data
