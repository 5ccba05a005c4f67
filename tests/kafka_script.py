"""Run ``deploy/kafka/kafka.sh`` for a test or benchmark broker of its own.

Shared by the test session's broker (tests/conftest.py), the SASL broker of
tests/integration/test_kafka_sasl.py and the benchmark broker (tests/benchmarks/infra.py).
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / ".run"
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
_PER_BROKER = frozenset(
    {
        "KAFKA_PORT",
        "KAFKA_CONTROLLER_PORT",
        "KAFKA_DATA_DIR",
        "KAFKA_EXTRA_PROPS",
        "KAFKA_FORMAT_ARGS",
    }
)


def run_kafka_sh(
    command: str, port: int, data: Path, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``kafka.sh COMMAND`` for the broker on ``port`` with its data in ``data``.

    The caller's own instance variables (port, data dir, extra properties, format arguments)
    are dropped so a developer's dev-broker shell cannot leak into this broker; ``settings``
    adds others (``KAFKA_EXTRA_PROPS``, ``KAFKA_FORMAT_ARGS``).
    """
    env = {k: v for k, v in os.environ.items() if k not in _PER_BROKER}
    env |= {"KAFKA_PORT": str(port), "KAFKA_DATA_DIR": str(data), "KAFKA_PYTHON": sys.executable}
    env |= settings
    return subprocess.run(
        ["bash", str(KAFKA_SH), command],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


class NoFreeSlot(RuntimeError):
    """Every (port, data dir) slot tried is locked by another session or its port is taken."""


def answers(port: int) -> bool:
    """Something accepts TCP connections on localhost:port."""
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def claim_slot(
    first_port: int,
    data_dir: Callable[[int], Path],
    *,
    slots: int = 5,
    step: int = 10,
    ports: int = 2,
) -> tuple[int, Path, IO[str]]:
    """Lock a broker slot (port, data dir) no other session uses; return it and the held lock.

    Slot ``i`` is ``first_port + i * step`` with ``data_dir(port)``; it is free when its lock
    file in ``.run`` can be taken and none of its ``ports`` ports answers once a broker a
    killed session left behind there is stopped (through its pid file). The caller keeps the
    lock file open for as long as it uses the slot.
    """
    RUN_DIR.mkdir(exist_ok=True)
    tried = []
    for slot in range(slots):
        port = first_port + slot * step
        data = data_dir(port)
        lock = (RUN_DIR / f"{data.name}.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            tried.append(f"{port} (another test session holds {data.name}.lock)")
            continue
        run_kafka_sh("down", port, data)
        if any(answers(p) for p in range(port, port + ports)):
            lock.close()
            tried.append(f"{port} (a port of {port}..{port + ports - 1} is in use)")
            continue
        return port, data, lock
    raise NoFreeSlot("no free broker slot: tried " + ", ".join(tried))
