"""Run ``deploy/kafka/kafka.sh`` for a test or benchmark broker of its own.

Shared by the test session's broker (tests/conftest.py), the SASL broker of
tests/integration/test_kafka_sasl.py and the benchmark broker (tests/benchmarks/infra.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
