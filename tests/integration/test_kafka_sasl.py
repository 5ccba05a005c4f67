"""Kafka security against a real broker with SASL_PLAINTEXT (SCRAM users) and TLS listeners.

This module starts its own broker (not the session's PLAINTEXT one) through
``deploy/kafka/kafka.sh`` with ``deploy/kafka/sasl.properties`` appended and two SCRAM users
created at format time (``kafka-storage format --add-scram``), and stops it at the end. On top,
an SSL listener that requires a client certificate, with a throw-away CA made by ``openssl``.
It listens on 39300 (PLAINTEXT, for set-up), 39301 (controller), 39302 (SASL_PLAINTEXT) and
39303 (SSL), data in ``.run/kafka-sasl``; a concurrent session moves to the next slot (+10).

- the right password works with every mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512): the
  clients ``consumer.kafka.client.kafka_options`` configures round-trip a record;
- a wrong password or an unknown user fails fast (seconds) with a ConfigError that names the
  problem, from ``serve`` and from the ``modstream consume`` CLI (exit 2), never echoing it;
- the whole pipeline runs over SASL, and the password appears nowhere it wrote;
- TLS with the CA, a client certificate and an encrypted key works; a missing CA or client
  certificate, a wrong key password, or a protocol that does not match the listener is a
  ConfigError that says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from consumer.app import serve, summary
from consumer.errors import ConfigError
from consumer.kafka.client import kafka_options, kafka_start_problem
from consumer.settings import Settings
from tests.e2e.harness import Run
from tests.e2e.scan import raw_bytes, secret_forms
from tests.fake_server import fake_openai_server, free_port
from tests.kafka_script import RUN_DIR, NoFreeSlot, claim_slot, run_kafka_sh

ROOT = Path(__file__).resolve().parents[2]
SASL_PROPS = ROOT / "deploy" / "kafka" / "sasl.properties"
BASE_PORT = 39300

#: The PLAIN user is listed in sasl.properties; the SCRAM user is this module's own.
PLAIN_USER, PLAIN_PASSWORD = "alice", "alice-secret"
SCRAM_USER = "svc-modstream"
SCRAM_PASSWORD = f"scram-pw-{uuid.uuid4().hex}"
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: A wrong password must fail well inside this (it takes under a second locally).
FAIL_FAST_S = 10.0

pytestmark = pytest.mark.timeout(300)


KEY_PASSWORD = f"client-key-pw-{uuid.uuid4().hex[:8]}"
STORE_PASSWORD = "broker-store-pw"


@dataclass(frozen=True)
class SaslBroker:
    plaintext: str  # for set-up: topics, reading outputs
    sasl: str  # what modstream connects to
    ssl: str  # TLS, client certificate required
    tls: Path  # ca.pem, client.crt, client.key (encrypted with KEY_PASSWORD)


def _make_tls(tls: Path) -> None:
    """A CA, a broker keystore (PKCS12) for localhost, and a client certificate whose key is
    encrypted: everything a mutual-TLS listener and its client need."""
    tls.mkdir(parents=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tls, check=True, capture_output=True, timeout=60)

    days = ["-days", "2"]
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        *days,
        "-subj",
        "/CN=modstream-test-ca",
    )
    for who in ("broker", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{who}.plain.key",
            "-out",
            f"{who}.csr",
            "-subj",
            f"/CN={who}",
        )
    (tls / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who, ext in (("broker", ["-extfile", "san.ext"]), ("client", [])):
        openssl(
            "x509",
            "-req",
            "-in",
            f"{who}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{who}.crt",
            *days,
            *ext,
        )
    openssl(
        "pkcs12",
        "-export",
        "-in",
        "broker.crt",
        "-inkey",
        "broker.plain.key",
        "-certfile",
        "ca.pem",
        "-out",
        "broker.p12",
        "-passout",
        f"pass:{STORE_PASSWORD}",
    )
    openssl(
        "pkey",
        "-in",
        "client.plain.key",
        "-aes256",
        "-passout",
        f"pass:{KEY_PASSWORD}",
        "-out",
        "client.key",
    )


def _extra_props(data: Path, port: int) -> Path:
    """sasl.properties plus an SSL listener on port+3 (later keys win)."""
    tls = data / "tls"
    lines = [
        SASL_PROPS.read_text(),
        "listeners=PLAINTEXT://localhost:@PORT@,CONTROLLER://localhost:@CONTROLLER_PORT@,"
        f"SASL_PLAINTEXT://localhost:@SASL_PORT@,SSL://localhost:{port + 3}",
        "advertised.listeners=PLAINTEXT://localhost:@PORT@,SASL_PLAINTEXT://localhost:@SASL_PORT@,"
        f"SSL://localhost:{port + 3}",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
        "SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL",
        "listener.name.ssl.ssl.keystore.type=PKCS12",
        f"listener.name.ssl.ssl.keystore.location={tls / 'broker.p12'}",
        f"listener.name.ssl.ssl.keystore.password={STORE_PASSWORD}",
        f"listener.name.ssl.ssl.key.password={STORE_PASSWORD}",
        "listener.name.ssl.ssl.truststore.type=PEM",
        f"listener.name.ssl.ssl.truststore.location={tls / 'ca.pem'}",
        "listener.name.ssl.ssl.client.auth=required",
    ]
    path = data / "extra.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def _kafka_sh(
    command: str, port: int, data: Path, extra: Path = SASL_PROPS
) -> subprocess.CompletedProcess[str]:
    scram = f"[name={SCRAM_USER},password={SCRAM_PASSWORD}]"
    return run_kafka_sh(
        command,
        port,
        data,
        KAFKA_EXTRA_PROPS=str(extra),
        KAFKA_FORMAT_ARGS=f"--add-scram SCRAM-SHA-256={scram} --add-scram SCRAM-SHA-512={scram}",
    )


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[SaslBroker]:
    """A fresh broker with a SASL_PLAINTEXT listener, for this module only."""
    try:
        port, data, lock = claim_slot(
            BASE_PORT,
            lambda p: RUN_DIR / ("kafka-sasl" if p == BASE_PORT else f"kafka-sasl-{p}"),
            ports=4,
        )
    except NoFreeSlot as exc:
        pytest.fail(f"SASL broker: {exc}", pytrace=False)
    try:
        shutil.rmtree(data, ignore_errors=True)  # SCRAM users are created at format time
        _make_tls(data / "tls")
        result = _kafka_sh("up", port, data, _extra_props(data, port))
        if result.returncode != 0:
            log = data / "kafka.out"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            pytest.fail(
                f"SASL broker did not start:\n{result.stdout}{result.stderr}\n--- {log}:\n{tail}",
                pytrace=False,
            )
        try:
            yield SaslBroker(
                f"localhost:{port}", f"localhost:{port + 2}", f"localhost:{port + 3}", data / "tls"
            )
        finally:
            _kafka_sh("down", port, data)
    finally:
        lock.close()


def sasl_settings(
    broker: SaslBroker, mechanism: str, *, user: str | None = None, password: str | None = None
) -> Settings:
    if user is None:
        user = PLAIN_USER if mechanism == "PLAIN" else SCRAM_USER
    if password is None:
        password = PLAIN_PASSWORD if mechanism == "PLAIN" else SCRAM_PASSWORD
    return Settings(
        kafka_bootstrap_servers=broker.sasl,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_username=user,
        sasl_password=password,
        openai_base_url="http://127.0.0.1:9/v1",  # never reached by these tests
    )


@pytest_asyncio.fixture(loop_scope="session")
async def topic(sasl_broker: SaslBroker) -> AsyncIterator[str]:
    name = f"sasl-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=sasl_broker.plaintext)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    yield name


async def read_until(options: dict[str, Any], topic: str, value: bytes) -> list[bytes]:
    """Partition 0 of ``topic`` from the beginning over ``options``, until ``value`` is read
    (each fetch waits up to 500 ms for records) or 30 s have passed; what was read."""
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
    async with consumer:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while value not in seen and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            seen.extend(r.value for r in batch.get(tp, []) if r.value is not None)
    return seen


# ---- kafka_options -----------------------------------------------------------------------


def test_kafka_options_carry_the_sasl_settings_and_the_password_in_clear_only_there() -> None:
    settings = Settings(
        kafka_bootstrap_servers="b:1",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="pw-in-options",
    )
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "u"
    assert options["sasl_plain_password"] == "pw-in-options"
    assert options["ssl_context"].check_hostname  # TLS verifies the broker's name
    assert "pw-in-options" not in repr(settings)


# ---- the right password --------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_right_password_round_trips_a_record(
    sasl_broker: SaslBroker, topic: str, mechanism: str
) -> None:
    options = kafka_options(sasl_settings(sasl_broker, mechanism))
    value = f"over {mechanism}".encode()
    async with AIOKafkaProducer(**options, acks="all", enable_idempotence=True) as producer:
        await producer.send_and_wait(topic, value)
    assert value in await read_until(options, topic, value)


# ---- a wrong password ----------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("wrong", ["password", "user"])
async def test_wrong_credentials_fail_fast_with_a_clear_error(
    sasl_broker: SaslBroker, mechanism: str, wrong: str
) -> None:
    bad = f"not-the-password-{uuid.uuid4().hex[:8]}"
    settings = (
        sasl_settings(sasl_broker, mechanism, password=bad)
        if wrong == "password"
        else sasl_settings(sasl_broker, mechanism, user="mallory", password=bad)
    )
    # aiokafka on its own: fast, but a bare "Unable to bootstrap" that hides the reason.
    producer = AIOKafkaProducer(**kafka_options(settings))
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()

    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        await serve(settings, exit_when_idle=1)
    elapsed = time.monotonic() - started
    message = caught.value.message
    assert elapsed < FAIL_FAST_S
    assert "rejected the SASL" in message
    assert mechanism in message
    assert "MODSTREAM_SASL_PASSWORD" in message
    assert sasl_broker.sasl in message
    assert bad not in message


@pytest.mark.timeout(30)
async def test_sasl_against_a_plaintext_listener_names_the_listener(
    sasl_broker: SaslBroker,
) -> None:
    settings = sasl_settings(sasl_broker, "SCRAM-SHA-256").model_copy(
        update={"kafka_bootstrap_servers": sasl_broker.plaintext}
    )
    with pytest.raises(ConfigError, match="does not accept SASL SCRAM-SHA-256"):
        await serve(settings, exit_when_idle=1)


@pytest.mark.timeout(30)
async def test_an_unreachable_broker_is_not_called_a_credentials_problem(
    sasl_broker: SaslBroker,
) -> None:
    options = kafka_options(sasl_settings(sasl_broker, "SCRAM-SHA-256"))
    options["bootstrap_servers"] = f"127.0.0.1:{free_port()}"
    problem = await kafka_start_problem(options)
    assert problem is not None
    assert "connection refused" in problem.message
    assert "SASL" not in problem.message


@pytest.mark.timeout(60)
def test_cli_exits_2_naming_the_problem_without_the_password(sasl_broker: SaslBroker) -> None:
    bad = f"cli-wrong-{uuid.uuid4().hex[:8]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MODSTREAM_", "OPENAI_"))},
        "MODSTREAM_KAFKA_BOOTSTRAP_SERVERS": sasl_broker.sasl,
        "MODSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "MODSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
        "MODSTREAM_SASL_USERNAME": SCRAM_USER,
        "MODSTREAM_SASL_PASSWORD": bad,
        "MODSTREAM_LOG_LEVEL": "DEBUG",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "consume", "--exit-when-idle", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert time.monotonic() - started < 30
    assert "rejected the SASL SCRAM-SHA-512 login" in output
    assert "Traceback" not in output
    assert bad not in output


# ---- the whole pipeline over SASL ----------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512"])
async def test_pipeline_over_sasl_and_the_secrets_appear_nowhere(
    sasl_broker: SaslBroker, mechanism: str
) -> None:
    api_key = f"sk-canary-{uuid.uuid4().hex}"
    with fake_openai_server(api_key=api_key, seed=9) as url:
        run = Run(sasl_broker.plaintext, url, f"sasl-{uuid.uuid4().hex[:10]}", partitions=2)
        await run.create_topics()
        values: list[bytes | None] = [
            json.dumps({"id": f"m{i}", "text": f"hello number {i}"}).encode() for i in range(20)
        ]
        values.append(b"not json at all")  # a dead letter too
        await run.produce(values)
        over_sasl = {
            "kafka_bootstrap_servers": sasl_broker.sasl,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_username": SCRAM_USER,
            "sasl_password": SCRAM_PASSWORD,
            "openai_api_key": api_key,
        }
        pipeline = await serve(run.settings(**over_sasl), exit_when_idle=2)
        counts = summary(pipeline.metrics)
        assert (counts.verdicts, counts.dead_letters) == (20, 1)

        # The same through the CLI, as a process whose stderr we keep (debug logs on).
        process = run.spawn(
            "--exit-when-idle",
            "2",
            MODSTREAM_KAFKA_BOOTSTRAP_SERVERS=sasl_broker.sasl,
            MODSTREAM_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            MODSTREAM_SASL_MECHANISM=mechanism,
            MODSTREAM_SASL_USERNAME=SCRAM_USER,
            MODSTREAM_SASL_PASSWORD=SCRAM_PASSWORD,
            OPENAI_API_KEY=api_key,
            MODSTREAM_GROUP_ID=f"{run.name}.second",
            MODSTREAM_LOG_LEVEL="DEBUG",
        )
        _, stderr = await asyncio.to_thread(process.communicate, timeout=120)
        assert process.returncode == 0, stderr.decode()[-3000:]
        assert b"consuming" in stderr

        topics = [f"{run.name}.{t}" for t in ("verdicts", "usage", "dlq")]
        written = await raw_bytes(run.settings(), topics)
        outputs = await run.outputs()
        assert len(outputs.verdicts) == 40  # two groups, each judged everything
        for secret in (SCRAM_PASSWORD, api_key):
            for form in secret_forms(secret):
                assert form not in written, "a secret reached an output topic"
                assert form not in stderr, "a secret reached the logs"


# ---- TLS -----------------------------------------------------------------------------------


def tls_settings(broker: SaslBroker, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "kafka_bootstrap_servers": broker.ssl,
        "security_protocol": "SSL",
        "ssl_cafile": broker.tls / "ca.pem",
        "ssl_certfile": broker.tls / "client.crt",
        "ssl_keyfile": broker.tls / "client.key",
        "ssl_key_password": KEY_PASSWORD,
        "openai_base_url": "http://127.0.0.1:9/v1",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def test_tls_with_a_client_certificate_round_trips_a_record(
    sasl_broker: SaslBroker, topic: str
) -> None:
    options = kafka_options(tls_settings(sasl_broker))
    async with AIOKafkaProducer(**options, acks="all") as producer:
        await producer.send_and_wait(topic, b"over TLS")
    seen = await read_until(options, topic, b"over TLS")
    assert b"over TLS" in seen


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no CA", "certificate verify failed"),
        ("no client certificate", "TLS with Kafka at"),
        ("plain to the TLS port", "closed it on the first request"),
        ("TLS to the plain port", "during the TLS handshake"),
    ],
)
async def test_tls_mistakes_are_named(sasl_broker: SaslBroker, case: str, expected: str) -> None:
    mistakes: dict[str, dict[str, object]] = {
        "no CA": {"ssl_cafile": None},
        "no client certificate": {
            "ssl_certfile": None,
            "ssl_keyfile": None,
            "ssl_key_password": None,
        },
        "plain to the TLS port": {"security_protocol": "PLAINTEXT"},
        "TLS to the plain port": {"kafka_bootstrap_servers": sasl_broker.plaintext},
    }
    overrides = mistakes[case]
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        await serve(tls_settings(sasl_broker, **overrides), exit_when_idle=1)
    assert time.monotonic() - started < FAIL_FAST_S
    assert expected in caught.value.message
    assert KEY_PASSWORD not in caught.value.message


def test_a_wrong_key_password_is_a_config_error_without_the_password(
    sasl_broker: SaslBroker,
) -> None:
    wrong = f"wrong-key-pw-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError) as caught:
        kafka_options(tls_settings(sasl_broker, ssl_key_password=wrong))
    message = caught.value.message
    assert "MODSTREAM_SSL_KEY_PASSWORD" in message
    assert wrong not in message and KEY_PASSWORD not in message
    missing = sasl_broker.tls / "missing.pem"
    with pytest.raises(ConfigError, match="MODSTREAM_SSL_CAFILE"):
        kafka_options(tls_settings(sasl_broker, ssl_cafile=missing))
