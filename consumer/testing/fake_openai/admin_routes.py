"""The ``/_fake/*`` routes tests use to read counters and change knobs while the fake runs:
:func:`add` registers them on the aiohttp app. Benchmark mode's lean server answers the same
paths from the same knobs (:class:`~consumer.testing.fake_openai.state.Knobs`), all but the
request log (:mod:`.lean_http`).

GET   /_fake/health             {"status": "ok"}: readiness probe, never counted
GET   /_fake/stats              counts: total, by_path, by_outcome, tokens, files_uploaded,
                                batches_created
POST  /_fake/reset              zero stats and the request log, forget cached prefixes and
                                every file and batch, refill the rate-limit buckets, re-seed
                                the fault dice
GET   /_fake/requests?limit=N   {"requests": [...]}: the last N logged requests (oldest first)
GET   /_fake/config             the current knobs (api_key masked)
PATCH /_fake/config             JSON object of knobs to change; returns the new knobs
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from consumer.testing.fake_openai.faults import error_body
from consumer.testing.fake_openai.state import dumps

if TYPE_CHECKING:
    from consumer.testing.fake_openai.state import FakeState

#: Every admin path (a known path with another method is a 405).
PATHS = frozenset(
    {"/_fake/health", "/_fake/stats", "/_fake/reset", "/_fake/requests", "/_fake/config"}
)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(data), status=status, content_type="application/json")


def _bad(message: str) -> web.Response:
    return web.Response(
        body=error_body(message, "invalid_request_error", None),
        status=400,
        content_type="application/json",
    )


def add(app: web.Application, state: FakeState) -> None:
    """Register the admin routes for ``state`` on ``app``."""

    async def health(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def stats(request: web.Request) -> web.Response:
        return _json(state.stats.snapshot())

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return _json(state.stats.snapshot())

    async def requests(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return _bad("limit must be an integer")
        return _json({"requests": state.stats.recent(limit)})

    async def get_config(request: web.Request) -> web.Response:
        return _json(state.config.public())

    async def patch_config(request: web.Request) -> web.Response:
        try:
            state.patch(await request.read())
        except ValueError as exc:
            return _bad(str(exc))
        return _json(state.config.public())

    app.router.add_get("/_fake/health", health)
    app.router.add_get("/_fake/stats", stats)
    app.router.add_post("/_fake/reset", reset)
    app.router.add_get("/_fake/requests", requests)
    app.router.add_get("/_fake/config", get_config)
    app.router.add_patch("/_fake/config", patch_config)
