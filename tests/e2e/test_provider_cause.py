"""What ``modstream consume`` says when the model provider cannot be used, end to end: the real
command on the real broker, its provider a closed port or the fake model refusing the key.

- A closed port: the circuit opens in a line naming the base URL and what the calls ran into
  (``connection refused``); SIGTERM still stops the consumer cleanly (exit 0: an outage is
  transient, nothing is fatal about it).
- A wrong key (the fake expects another one and answers 401): ``ProviderAuthError`` is fatal,
  so the consumer stops by itself with exit 3 and one line naming the URL and the status.

In both, the key given never appears on stdout or stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import pytest

from tests.e2e.harness import Consumer, Run, clean_values, new_run, until
from tests.fake_server import fake_openai_server, free_port

pytestmark = pytest.mark.timeout(300)

SECRET = "sk-test-SECRET123"
MESSAGES = 6

#: Few failures open the circuit and a short grace ends the stop, so the test is short.
QUICK = {
    "OPENAI_API_KEY": SECRET,
    "MODSTREAM_CIRCUIT_FAILURE_THRESHOLD": "3",
    "MODSTREAM_RETRY_MAX_BACKOFF_S": "0.5",
    "MODSTREAM_CONCURRENCY": "3",
    "MODSTREAM_SHUTDOWN_GRACE_S": "2",
}


async def backlog(kafka_bootstrap: str, base_url: str) -> Run:
    """A run whose topics exist, with a few clean messages waiting."""
    run = new_run(kafka_bootstrap, base_url, partitions=2)
    await run.create_topics()
    await run.produce(clean_values(MESSAGES))
    return run


def output(consumer: Consumer, stdout: IO[bytes]) -> str:
    """Everything the (exited) consumer wrote, stdout and stderr."""
    stdout.seek(0)
    return stdout.read().decode(errors="replace") + consumer.logs.text()


async def test_a_closed_port_opens_the_circuit_naming_the_url_never_the_key(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    run = await backlog(kafka_bootstrap, url)
    with (tmp_path / "stdout").open("w+b") as stdout:
        run.stdout = stdout
        consumer = run.start(**QUICK)
        try:

            async def circuit_open() -> bool:
                return bool(consumer.logs.events("circuit open"))

            await until(
                "the circuit-open line", circuit_open, unless=consumer.exited, context=consumer.tail
            )
            code = await consumer.stop()
        finally:
            consumer.kill_if_running()
        written = output(consumer, stdout)
    assert code == 0, consumer.tail()
    opened = consumer.logs.events("circuit open")[0]
    assert opened["base_url"].rstrip("/") == url, opened
    assert opened["cause"] == "connection refused", opened
    assert opened["status"] is None, opened
    assert consumer.logs.events("stopped"), consumer.tail()
    assert "Traceback" not in written, written
    assert SECRET not in written


async def test_a_rejected_key_stops_consume_with_exit_3_naming_the_url_and_401(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    with fake_openai_server(api_key="sk-test-the-key-the-fake-expects") as url:
        run = await backlog(kafka_bootstrap, url)
        with (tmp_path / "stdout").open("w+b") as stdout:
            run.stdout = stdout
            consumer = run.start(**QUICK)
            try:
                # A rejected key is fatal: the consumer stops by itself, no signal sent.
                code = await consumer.wait(timeout=120)
            finally:
                consumer.kill_if_running()
            written = output(consumer, stdout)
    assert code == 3, consumer.tail()
    [line] = [r for r in consumer.logs.raw if r.startswith("modstream: ")]
    assert f"HTTP 401 from the model provider at {url}" in line, line
    assert "OPENAI_API_KEY" in line, line
    assert "Traceback" not in written, written
    assert SECRET not in written
