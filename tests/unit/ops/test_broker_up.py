"""metrics.modstream_broker_up: read at scrape time from the Kafka client's live connections."""

from __future__ import annotations

from types import SimpleNamespace

from consumer.ops.metrics import Metrics, kafka_connected


class Conn:
    def __init__(self, up: bool) -> None:
        self.up = up

    def connected(self) -> bool:
        return self.up


def client(*conns: Conn) -> SimpleNamespace:
    """What kafka_connected reads of an AIOKafkaConsumer: ``_client._conns``."""
    keys = [(i, "default") for i in range(len(conns))]
    return SimpleNamespace(_client=SimpleNamespace(_conns=dict(zip(keys, conns, strict=True))))


def gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("modstream_broker_up")


def test_kafka_connected_reads_the_live_connections() -> None:
    assert kafka_connected(client(Conn(False), Conn(True)))
    assert not kafka_connected(client(Conn(False)))
    assert not kafka_connected(client()), "no connection at all: not up"
    assert not kafka_connected(object()), "unknown internals read as down, never raise"


def test_gauge_is_read_at_scrape_time() -> None:
    metrics = Metrics()
    assert gauge(metrics) == 0, "never watched: not up"
    conn = Conn(True)
    metrics.watch_broker(lambda: kafka_connected(client(conn)))
    assert gauge(metrics) == 1
    conn.up = False
    assert gauge(metrics) == 0
    conn.up = True
    assert gauge(metrics) == 1
