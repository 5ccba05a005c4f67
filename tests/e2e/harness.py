"""What the end-to-end tests share: a run's topics and settings, the consumer as a real
process, and reading back what it wrote (through the real broker, never a mock)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.settings import Settings
from consumer.tools.report import Summary, summarise

ROOT = Path(__file__).resolve().parents[2]


async def until(what: str, check: Callable[[], Awaitable[bool]], *, within: float = 120) -> None:
    """Poll ``check`` until true; fail naming ``what`` after ``within`` seconds (a bound for a
    stuck run, not a measurement). Tests wait on conditions, never on a tuned sleep."""
    try:
        async with asyncio.timeout(within):
            while not await check():
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what} after {within:.0f} s") from None


@dataclass
class Run:
    """One test's private topics and consumer group on the shared test broker."""

    bootstrap: str
    base_url: str
    name: str
    partitions: int = 6

    @property
    def env(self) -> dict[str, str]:
        """The environment a consumer of this run needs (settings by MODSTREAM_ variables)."""
        return {
            "MODSTREAM_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "MODSTREAM_INPUT_TOPIC": f"{self.name}.in",
            "MODSTREAM_VERDICT_TOPIC": f"{self.name}.verdicts",
            "MODSTREAM_USAGE_TOPIC": f"{self.name}.usage",
            "MODSTREAM_DLQ_TOPIC": f"{self.name}.dlq",
            "MODSTREAM_GROUP_ID": f"{self.name}.group",
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_API_KEY": "sk-test-not-a-real-key",
            "MODSTREAM_COMMIT_INTERVAL_S": "0.5",
        }

    def settings(self, **overrides: object) -> Settings:
        """Settings for an in-process consumer of this run."""
        values: dict[str, object] = {
            k.removeprefix("MODSTREAM_").lower(): v
            for k, v in self.env.items()
            if k.startswith("MODSTREAM_")
        }
        values["openai_base_url"] = self.base_url
        values["openai_api_key"] = "sk-test-not-a-real-key"
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    @property
    def input_topic(self) -> str:
        return f"{self.name}.in"

    async def create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(self.input_topic, self.partitions, 1),
                    NewTopic(f"{self.name}.verdicts", 3, 1),
                    NewTopic(f"{self.name}.usage", 3, 1),
                    NewTopic(f"{self.name}.dlq", 1, 1),
                ]
            )
        finally:
            await admin.close()

    async def produce(self, values: list[bytes | None], *, keyed: bool = True) -> None:
        """Write ``values`` round-robin over the input partitions."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=10)
        async with producer:
            futures = [
                await producer.send(
                    self.input_topic,
                    value,
                    key=f"k{i % 97}".encode() if keyed else None,
                    partition=i % self.partitions,
                )
                for i, value in enumerate(values)
            ]
            await asyncio.gather(*futures)

    async def outputs(self) -> Summary:
        return await summarise(self.settings())

    async def committed(self) -> dict[int, int]:
        """The group's committed offset per input partition (-1 when none)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(f"{self.name}.group")
        finally:
            await admin.close()
        mine = {tp: meta for tp, meta in offsets.items() if tp.topic == self.input_topic}
        return {tp.partition: meta.offset for tp, meta in mine.items()}

    async def end_offsets(self) -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        async with consumer:
            tps = [TopicPartition(self.input_topic, p) for p in range(self.partitions)]
            ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """``modstream consume`` as a real process (so it can be SIGKILLed)."""
        full = {**os.environ, **self.env, "MODSTREAM_LOG_FORMAT": "json", **env}
        return subprocess.Popen(
            [sys.executable, "-m", "consumer", "consume", *args],
            cwd=ROOT,
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )


def new_run(bootstrap: str, base_url: str, partitions: int = 6) -> Run:
    return Run(bootstrap, base_url, f"e2e-{uuid.uuid4().hex[:10]}", partitions)


def outcomes_per_offset(summary: Summary) -> Counter[tuple[int, int]]:
    """How many verdicts plus dead letters each (partition, offset) of the input produced."""
    seen: Counter[tuple[int, int]] = Counter()
    for v in summary.verdicts:
        seen[(v.source.partition, v.source.offset)] += 1
    for d in summary.dead_letters:
        seen[(d.source.partition, d.source.offset)] += 1
    return seen


def expected_offsets(ends: dict[int, int]) -> set[tuple[int, int]]:
    return {(p, o) for p, end in ends.items() for o in range(end)}
