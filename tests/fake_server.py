"""Run the fake OpenAI server as a subprocess, the way benchmarks and end-to-end tests need it.

    from tests.fake_server import fake_openai_server

    with fake_openai_server(latency_ms=20, p_429=0.1) as base_url:   # "http://127.0.0.1:PORT/v1"
        client = AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0)
        ...

Knobs are ``FakeConfig`` field names; they reach the child as ``MODSTREAM_FAKE_<NAME>``
variables, exactly as an operator would set them. The context manager picks a free port,
starts ``python -m consumer fake-openai --port P``, waits until ``/_fake/health`` answers,
and on exit sends SIGTERM (then SIGKILL after ``stop_timeout``). Use
``consumer.testing.fake_openai.FakeAdmin(base_url)`` for stats and runtime knob changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ENV_PREFIX = "MODSTREAM_FAKE_"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def knob_env(knobs: dict[str, Any]) -> dict[str, str]:
    """``{"p_429": 0.5}`` -> ``{"MODSTREAM_FAKE_P_429": "0.5"}`` (booleans as true/false)."""
    env = {}
    for name, value in knobs.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[ENV_PREFIX + name.upper()] = text
    return env


def health_answers(origin: str) -> bool:
    """The fake at ``origin`` (``http://host:port``) answers ``/_fake/health``."""
    try:
        with urllib.request.urlopen(origin + "/_fake/health", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ready(
    name: str, process: subprocess.Popen[Any], ready: Callable[[], bool], *, within: float
) -> None:
    """Poll ``ready()`` until true (every 50 ms: the poll interval, not a wait for anything);
    raise ``RuntimeError`` naming ``name`` if ``process`` exits first or ``within`` seconds
    pass."""
    deadline = time.monotonic() + within
    while not ready():
        code = process.poll()
        if code is not None:
            raise RuntimeError(f"{name} exited with {code} before it answered")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer within {within:.0f} s")
        time.sleep(0.05)


#: The older private name, which tests/unit and tests/benchmarks still import.
_ready = health_answers


@contextlib.contextmanager
def served(
    name: str,
    command: list[str],
    ready: Callable[[], bool],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    startup_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` as a server subprocess until the block ends, yielding the process: ready
    once ``ready()`` is true (polled, never a tuned sleep); a start-up failure raises with its
    output; on exit SIGTERM, then SIGKILL after ``stop_timeout``."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            try:
                wait_until_ready(name, process, ready, within=startup_timeout)
            except RuntimeError as exc:
                output.seek(0)
                log = output.read().decode(errors="replace")
                raise RuntimeError(f"{exc}:\n{log}") from None
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@contextlib.contextmanager
def fake_openai_server(
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    startup_timeout: float = 30.0,
    stop_timeout: float = 10.0,
    **knobs: Any,
) -> Iterator[str]:
    """Start the fake in a subprocess with ``knobs``; yield its base URL (``.../v1``)."""
    port = port or free_port(host)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env |= knob_env(knobs)
    command = [sys.executable, "-m", "consumer", "fake-openai", "--host", host, "--port", str(port)]
    origin = f"http://{host}:{port}"
    with served(
        "fake-openai",
        command,
        lambda: health_answers(origin),
        env=env,
        startup_timeout=startup_timeout,
        stop_timeout=stop_timeout,
    ):
        yield origin + "/v1"
