"""Measure how fast a running fake answers: ``python -m consumer.fake_openai.loadtest``.

    modstream fake-openai --port 8400 &
    python -m consumer.fake_openai.loadtest --url http://127.0.0.1:8400/v1 --pid $! -n 20000

Sends classifier-shaped chat requests (a ~500-token system prompt, a ``<content>`` block and the
13-category strict json_schema) from ``--concurrency`` aiohttp workers, and prints requests per
second. With ``--pid`` (Linux) it also prints the server's CPU use and requests per CPU-second,
which, unlike wall-clock rate, does not depend on how busy the client or the machine is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from consumer.fake_openai.heuristic import KEYS

_SCORES = {
    "type": "object",
    "properties": {key: {"type": "number"} for key in KEYS},
    "required": list(KEYS),
    "additionalProperties": False,
}
_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "moderation_reply",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"scores": _SCORES, "rationale": {"type": "string"}},
            "required": ["scores", "rationale"],
            "additionalProperties": False,
        },
    },
}
_SYSTEM = "You are a content-moderation classifier. Reply with JSON only. " * 50


def request_body(worker: int, serial: int, *, small: bool) -> dict[str, Any]:
    """One request; every content differs, as in a real stream."""
    if small:
        return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {serial}"}]}
    content = f"<content>\nmessage {worker}-{serial}: you are an idiot\n</content>"
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": content}],
        "response_format": _FORMAT,
        "max_tokens": 300,
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _worker(
    session: aiohttp.ClientSession, url: str, worker: int, count: int, small: bool
) -> None:
    for serial in range(count):
        body = request_body(worker, serial, small=small)
        async with session.post(url + "/chat/completions", json=body) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}: set the fake's faults to 0")


async def run(url: str, total: int, concurrency: int, pid: int | None, small: bool) -> str:
    """Send ``total`` requests and describe the rate."""
    per_worker = max(1, total // concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _worker(session, url, -1, 50, small)  # warm up: connections, caches
        cpu_start, start = (_cpu_seconds(pid) if pid else 0.0), time.perf_counter()
        await asyncio.gather(
            *(_worker(session, url, w, per_worker, small) for w in range(concurrency))
        )
        elapsed = time.perf_counter() - start
    sent = per_worker * concurrency
    line = f"{sent} requests, concurrency {concurrency}: {sent / elapsed:.0f} req/s"
    if pid:
        cpu = _cpu_seconds(pid) - cpu_start
        line += f"; server CPU {100 * cpu / elapsed:.0f}%, {sent / cpu:.0f} req per CPU-second"
    return line


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8400/v1")
    parser.add_argument("-n", "--requests", type=int, default=20000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--pid", type=int, help="the fake's process id, to measure its CPU")
    parser.add_argument("--small", action="store_true", help="tiny prompts, plain-text replies")
    args = parser.parse_args()
    print(asyncio.run(run(args.url, args.requests, args.concurrency, args.pid, args.small)))


if __name__ == "__main__":
    main()
