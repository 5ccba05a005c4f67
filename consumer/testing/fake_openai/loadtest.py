"""Measure how fast a running fake answers: ``python -m consumer.testing.fake_openai.loadtest``.

    modstream fake-openai --port 8400 &
    python -m consumer.testing.fake_openai.loadtest --url http://127.0.0.1:8400/v1 --pid $! -n 20000

    python -m consumer.testing.fake_openai.loadtest --compare -n 5000   # normal vs benchmark mode

Sends classifier-shaped chat requests (a ~500-token system prompt, a ``<content>`` block and the
13-category strict json_schema) from ``--concurrency`` aiohttp workers, and prints requests per
second. With ``--pid`` (Linux) it also prints the server's CPU use and requests per CPU-second,
which, unlike wall-clock rate, does not depend on how busy the client or the machine is.

``--compare`` starts the fake itself (``python -m consumer fake-openai`` in a subprocess, a
fresh one per run) in normal mode, in benchmark mode (``MODSTREAM_FAKE_BENCHMARK=1``) and in
benchmark mode on plain asyncio (``MODSTREAM_FAKE_LOOP=asyncio``), ``--runs`` times each, and
prints the server process's CPU microseconds per request (user + system from
``/proc/<pid>/stat`` over the measured requests, warm-up excluded; the client's CPU is not in
it), the median of the runs and each run. ``--latency-ms`` sets ``MODSTREAM_FAKE_LATENCY_MS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from consumer.testing.fake_openai.heuristic import KEYS

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


@dataclass(frozen=True)
class Measured:
    """One load run: requests sent, wall seconds, server CPU seconds (None without a pid)."""

    sent: int
    elapsed: float
    cpu: float | None

    @property
    def cpu_us(self) -> float:
        """Server CPU microseconds per request."""
        return 1e6 * (self.cpu or 0.0) / self.sent


async def measure(url: str, total: int, concurrency: int, pid: int | None, small: bool) -> Measured:
    """Send ``total`` requests (after 50 to warm up) and measure them."""
    per_worker = max(1, total // concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _worker(session, url, -1, 50, small)  # warm up: connections, caches
        cpu_start, start = (_cpu_seconds(pid) if pid else 0.0), time.perf_counter()
        await asyncio.gather(
            *(_worker(session, url, w, per_worker, small) for w in range(concurrency))
        )
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds(pid) - cpu_start if pid else None
    return Measured(per_worker * concurrency, elapsed, cpu)


async def run(url: str, total: int, concurrency: int, pid: int | None, small: bool) -> str:
    """Send ``total`` requests and describe the rate."""
    m = await measure(url, total, concurrency, pid, small)
    line = f"{m.sent} requests, concurrency {concurrency}: {m.sent / m.elapsed:.0f} req/s"
    if m.cpu is not None:
        line += (
            f"; server CPU {100 * m.cpu / m.elapsed:.0f}%, {m.sent / m.cpu:.0f} req per "
            f"CPU-second, {m.cpu_us:.0f} us per request"
        )
    return line


#: The modes ``--compare`` runs: a name and the fake's environment.
MODES: dict[str, dict[str, str]] = {
    "normal": {},
    "benchmark": {"MODSTREAM_FAKE_BENCHMARK": "1"},
    "benchmark, asyncio loop": {"MODSTREAM_FAKE_BENCHMARK": "1", "MODSTREAM_FAKE_LOOP": "asyncio"},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def spawned(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """A fake in a subprocess with ``env`` (MODSTREAM_FAKE_*); yields its URL and pid."""
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("MODSTREAM_FAKE_")}
    command = [sys.executable, "-m", "consumer", "fake-openai", "--port", str(port)]
    process = subprocess.Popen(  # noqa: S603  (our own command line)
        command, env=clean | env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    origin = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(origin + "/_fake/health", timeout=1):  # noqa: S310
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    error = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"the fake did not start: {error}") from None
                time.sleep(0.05)
        yield origin + "/v1", process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def compare(total: int, concurrency: int, runs: int, latency_ms: float, small: bool) -> str:
    """Run each of :data:`MODES` ``runs`` times; a table of server CPU us per request."""
    lines = [
        f"server CPU per request, median of {runs} runs of {total} requests, concurrency "
        f"{concurrency}, latency {latency_ms:g} ms:"
    ]
    for name, env in MODES.items():
        results = []
        for _ in range(runs):
            knobs = env | ({"MODSTREAM_FAKE_LATENCY_MS": str(latency_ms)} if latency_ms else {})
            with spawned(knobs) as (url, pid):
                results.append(asyncio.run(measure(url, total, concurrency, pid, small)))
        each = ", ".join(f"{m.cpu_us:.0f}" for m in results)
        rate = statistics.median(m.sent / m.elapsed for m in results)
        lines.append(
            f"  {name:24s} {statistics.median(m.cpu_us for m in results):6.1f} us/request"
            f"  (runs: {each}; {rate:.0f} req/s wall)"
        )
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8400/v1")
    parser.add_argument("-n", "--requests", type=int, default=20000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--pid", type=int, help="the fake's process id, to measure its CPU")
    parser.add_argument("--small", action="store_true", help="tiny prompts, plain-text replies")
    parser.add_argument(
        "--compare", action="store_true", help="start the fake: normal vs benchmark mode"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per mode with --compare")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the fake's latency")
    args = parser.parse_args()
    if args.compare:
        print(compare(args.requests, args.concurrency, args.runs, args.latency_ms, args.small))
        return
    print(asyncio.run(run(args.url, args.requests, args.concurrency, args.pid, args.small)))


if __name__ == "__main__":
    main()
