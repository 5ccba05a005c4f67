"""modstream against an OpenAI-compatible server it did not write: LLMock (PyPI ``llmock``).

Everything else in tests/e2e talks to our own fake (``consumer/testing/fake_openai``), whose
behaviour we chose; here the real broker and modstream itself meet LLMock, an independent
implementation
started as a subprocess on a free port. LLMock answers ``json_schema`` requests with a value
generated from the schema (deterministic: every number 1.0, every string ``mock-<name>``),
reports its own ``usage`` (its estimate, not tiktoken's), and is set up to refuse requests
three ways:

- a scripted 429 with ``retry-after-ms: 2500`` (``retry-after: 3``) for the first requests;
- 429s drawn at random (``--error-rate 429=...``: ``retry-after: 1``, ``retry-after-ms: 1000``);
- a real requests-per-minute quota that modstream is not told about (``--rpm``): more messages
  than the quota admits at once, each refusal a 429 with the true wait in ``retry-after-ms`` and
  ``x-ratelimit-*`` headers.

A relay in front of LLMock (:class:`Tap`) records every answer as the server sent it, so the
usage events can be compared with what the server reported, call by call.

What is asserted:

- every input offset has a verdict, none is dead-lettered, the group commits to the end;
- each verdict holds the scores and rationale of LLMock's reply (so it came from that server);
- 429s happened (all three kinds) and are honoured: LLMock's own judge of the journal finds no
  retry sooner than ``retry-after`` asked and no retried 4xx, and nothing is dead-lettered;
- usage adds up: one usage call per HTTP call the server answered; the ``ok`` events' token
  counts are exactly the ``usage`` of the server's 200s (as a multiset, so per call, not only
  in sum), none estimated locally; the ``rate_limited`` calls are the server's 429s.

Not asserted: LLMock's ``retry_storm`` finding (more than 10 attempts at one call). With a quota
modstream is not told about, the waiters all retry when the first request's worth of quota is
back and only one gets it, so a few messages take more than 10 attempts (about 5 of 300 here,
with about 260 429s in all). That is the price of learning a quota from 429s alone; setting
``MODSTREAM_RPM`` to the provider's limit is the remedy, not a looser retry-after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consumer.app import serve
from schemas import UsageOutcome
from tests.e2e.harness import assert_nothing_lost, clean_values, new_run
from tests.fake_server import free_port, served

pytestmark = pytest.mark.timeout(300)

#: Inputs, and LLMock's quota: the first RPM requests pass at once, the rest at RPM/60 a second.
MESSAGES = 300
RPM = 240
#: The share of requests LLMock refuses at random (with its default ``retry-after``: 1 s).
P_429 = 0.08
#: The scripted refusals at the start, and the wait they ask for (sub-second part included, so
#: only ``retry-after-ms`` says it exactly).
SCRIPTED_429 = 3
SCRIPTED_WAIT_S = 2.5

#: What LLMock answers to a json_schema request: the schema's example value.
LLMOCK_SCORE = 1.0
LLMOCK_RATIONALE = "mock-rationale"

#: LLMock's judge: findings that mean the client mishandled a 429 (or retried a 4xx).
MISHANDLED = {"retry_after_ignored", "retried_non_retryable"}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str, payload: object) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _ready(origin: str) -> bool:
    try:
        return bool(_get(origin + "/health").get("status") == "ok")
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def llmock_process(*args: str, startup_timeout: float = 60.0) -> Iterator[str]:
    """``llmock serve`` on a free port (extra CLI ``args``) as a subprocess, ready once its
    ``/health`` answers; yields its origin URL and stops it on exit (SIGTERM, then SIGKILL)."""
    host, port = "127.0.0.1", free_port()
    origin = f"http://{host}:{port}"
    command = [sys.executable, "-m", "llmock.cli", "serve", "--host", host, "--port", str(port)]
    command += ["--log-level", "warning", *args]
    with served("llmock", command, lambda: _ready(origin), startup_timeout=startup_timeout):
        yield origin


@pytest.fixture
def llmock_origin() -> Iterator[str]:
    """LLMock with this module's quota and random 429s (not named ``llmock``: installing the
    package registers a pytest fixture of that name, an in-process server we do not use)."""
    with llmock_process("--rpm", str(RPM), "--error-rate", f"429={P_429}") as origin:
        yield origin


@dataclass(frozen=True)
class Answer:
    """One response the server sent, as it sent it."""

    path: str
    status: int
    headers: dict[str, str]
    usage: dict[str, Any] | None


#: Headers a relay must not copy: they describe one hop, or a body it re-encodes.
_HOP = {"content-length", "transfer-encoding", "content-encoding", "connection", "keep-alive"}


class Tap:
    """A transparent HTTP relay in front of ``upstream`` that records every answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.answers: list[Answer] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> Tap:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _relay(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", *_HOP}}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as upstream:
            payload = await upstream.read()
            answer_headers = {k.lower(): v for k, v in upstream.headers.items()}
            status = upstream.status
        usage = None
        if status == 200 and request.path.endswith("/chat/completions"):
            usage = json.loads(payload)["usage"]
        self.answers.append(Answer(request.path, status, answer_headers, usage))
        return web.Response(
            status=status,
            body=payload,
            headers={k: v for k, v in answer_headers.items() if k not in _HOP},
        )

    def chat(self, status: int) -> list[Answer]:
        return [
            a for a in self.answers if a.path.endswith("/chat/completions") and a.status == status
        ]


async def test_llmock_verdicts_429s_honoured_usage_adds_up(
    kafka_bootstrap: str, llmock_origin: str
) -> None:
    origin = llmock_origin
    scripted = {"type": "fail", "status": 429, "retry_after": SCRIPTED_WAIT_S}
    _post(origin + "/_llmock/scenario", {"behaviors": [scripted | {"times": SCRIPTED_429}]})
    async with Tap(origin) as tap:
        run = new_run(kafka_bootstrap, tap.base_url, partitions=6)
        await run.create_topics()
        await run.produce(clean_values(MESSAGES))

        # No client-side rpm: modstream meets the quota only through the server's 429s.
        settings = run.settings(concurrency=8, max_in_flight=64, retry_max_backoff_s=2.0)
        await serve(settings, exit_when_idle=3)

        await assert_nothing_lost(run)
        summary = await run.outputs()
    judged = await asyncio.to_thread(_get, origin + "/_llmock/verdict")

    # Verdicts come back, for every input, from LLMock's replies.
    assert summary.dead_letters == []
    assert len(summary.verdicts) == MESSAGES
    for verdict in summary.verdicts:
        assert verdict.rationale == LLMOCK_RATIONALE
        assert {c.score for c in verdict.categories.values()} == {LLMOCK_SCORE}

    # 429s happened, of every kind, and were honoured.
    refused = tap.chat(429)
    waits = Counter(a.headers.get("retry-after-ms") for a in refused)
    assert waits[str(round(SCRIPTED_WAIT_S * 1000))] == SCRIPTED_429, waits
    assert waits["1000"] > 0, f"no random 429 (retry-after 1 s) was drawn: {waits}"
    quota = [a for a in refused if "x-ratelimit-remaining-requests" in a.headers]
    assert quota, "the quota never refused a request: MESSAGES must exceed RPM"
    assert all("retry-after" in a.headers for a in refused)
    mishandled = [
        f"{f['code']}: {f['title']}" for f in judged["findings"] if f["code"] in MISHANDLED
    ]
    assert not mishandled, f"{len(mishandled)} mishandled, e.g. {mishandled[:3]}"

    # Usage adds up: every HTTP call the server answered is in the usage, with its tokens.
    answered = [a for a in tap.answers if a.path.endswith("/chat/completions")]
    assert {a.status for a in answered} == {200, 429}
    calls = Counter[UsageOutcome]()
    for u in summary.usage:
        calls[u.outcome] += u.calls
    assert calls == {UsageOutcome.OK: len(tap.chat(200)), UsageOutcome.RATE_LIMITED: len(refused)}
    ok = [u for u in summary.usage if u.outcome == UsageOutcome.OK]
    assert not any(u.estimated for u in summary.usage)
    reported = sorted(
        (a.usage["prompt_tokens"], a.usage["completion_tokens"]) for a in tap.chat(200) if a.usage
    )
    assert len(reported) == len(tap.chat(200)) == MESSAGES  # one answer per message
    assert sorted((u.prompt_tokens, u.completion_tokens) for u in ok) == reported
    assert Counter(u.content_id for u in ok) == {f"m{i}": 1 for i in range(MESSAGES)}
    failed = [u for u in summary.usage if u.outcome == UsageOutcome.RATE_LIMITED]
    assert sum(u.prompt_tokens + u.completion_tokens for u in failed) == 0
