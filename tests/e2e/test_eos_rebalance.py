"""Exactly-once under churn: members join and leave while transactions are open.

One member runs throughout; others join and leave (real processes, each with a transactional id
of its own), so partitions are revoked from members that have a transaction open: with
``MODSTREAM_COMMIT_INTERVAL_S=0.05`` a transaction commits every 50 ms, so nearly every revoke
lands on one. Each step waits on a condition (a member logged an assignment, the group's
committed offsets moved), never on a sleep.

At the end: every member exited 0 (nobody crashed on a revoke), a read_committed reader sees
exactly one verdict or dead letter per input offset, and the committed offsets reach the end.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from tests.e2e.harness import Run, clean_values, expected_offsets, new_run, outcomes_per_offset
from tests.fake_server import fake_openai_server

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

MESSAGES = 4000


@dataclass
class Member:
    """One ``modstream consume`` process of the group, its stderr read as it comes."""

    name: str
    process: subprocess.Popen[bytes]
    lines: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.lines.append(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def events(self) -> list[dict[str, object]]:
        found = []
        for line in list(self.lines):
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"event": line.decode(errors="replace")})
        return found

    def assignments(self) -> int:
        """How many non-empty assignments this member has logged."""
        return sum(
            1 for e in self.events() if e.get("event") == "partitions assigned" and e["partitions"]
        )

    def tail(self, n: int = 30) -> str:
        """The last log events (rebalances, commits) and the last raw lines (a traceback)."""
        events = [
            f"{e.get('timestamp', '')} {e.get('level', '')} {e.get('event')} "
            + " ".join(f"{k}={v}" for k, v in e.items() if k not in {"timestamp", "level", "event"})
            for e in self.events()
            if "timestamp" in e
        ][-15:]
        raw = b"".join(self.lines[-n:]).decode(errors="replace")
        return f"--- {self.name} ---\n" + "\n".join(events) + "\n... last lines:\n" + raw

    async def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.process.wait, 90)
        self._reader.join(10)
        return code


class Group:
    def __init__(self, run: Run, env: dict[str, str]) -> None:
        self.run = run
        self.env = env
        self.members: list[Member] = []
        self.exits: dict[str, int] = {}

    def join(self, name: str, transactional_id: str | None = None) -> Member:
        txn = f"{self.run.name}-{transactional_id or name}"
        process = self.run.spawn(**self.env, MODSTREAM_TRANSACTIONAL_ID=txn)
        member = Member(name, process)
        self.members.append(member)
        return member

    async def leave(self, member: Member) -> None:
        self.exits[member.name] = await member.stop()

    def crashed(self) -> str | None:
        """The tails of members that exited on their own (none of them should)."""
        gone = [
            m for m in self.members if m.name not in self.exits and m.process.poll() is not None
        ]
        if not gone:
            return None
        return "\n".join(f"{m.name} exited {m.process.returncode}\n{m.tail()}" for m in gone)

    async def committed(self) -> int:
        return sum(max(0, o) for o in (await self.run.committed()).values())

    async def wait(
        self, condition: Callable[[], Awaitable[bool]], what: str, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not await condition():
            crashed = self.crashed()
            if crashed:
                pytest.fail(f"a member crashed while waiting for {what}:\n{crashed}")
            if time.monotonic() > deadline:
                tails = "\n".join(m.tail() for m in self.members)
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
            await asyncio.sleep(0.1)

    async def progress(self, by: int, what: str) -> None:
        """Wait until the group's committed offsets moved ``by`` (or reached the end)."""
        start = await self.committed()
        target = min(start + by, MESSAGES)

        async def moved() -> bool:
            return await self.committed() >= target

        await self.wait(moved, f"{by} more committed offsets ({what})", timeout=180)

    async def assigned(self, member: Member, times: int = 1) -> None:
        async def logged() -> bool:
            return member.assignments() >= times

        await self.wait(logged, f"{member.name} assigned partitions", timeout=120)


async def test_members_join_and_leave_while_transactions_are_open(kafka_bootstrap: str) -> None:
    with fake_openai_server(latency_ms=20, latency_dist="exponential", seed=41) as url:
        run = new_run(kafka_bootstrap, url, partitions=6)
        await run.create_topics()
        await run.produce(clean_values(MESSAGES))
        ends = await run.end_offsets()
        group = Group(
            run,
            {
                "MODSTREAM_DELIVERY": "exactly_once",
                "MODSTREAM_COMMIT_INTERVAL_S": "0.05",
                "MODSTREAM_CONCURRENCY": "8",
                "MODSTREAM_MAX_IN_FLIGHT": "32",
            },
        )
        try:
            steady = group.join("steady")
            await group.assigned(steady)
            await group.progress(200, "steady alone")

            # One joins (revokes from steady), another joins (revokes from both), the first
            # leaves, the second leaves: four rebalances, each with transactions open.
            first = group.join("first")
            await group.assigned(first)
            await group.progress(200, "steady and first")
            second = group.join("second")
            await group.assigned(second)
            await group.progress(200, "three members")
            await group.leave(first)
            await group.progress(200, "first left")
            await group.leave(second)
            await group.progress(200, "second left")
            # And once more, the same transactional id rejoining after a clean leave.
            again = group.join("first-again", transactional_id="first")
            await group.assigned(again)
            await group.leave(again)

            async def everything_committed() -> bool:
                return await group.committed() >= MESSAGES

            await group.wait(everything_committed, "every offset committed", timeout=300)
        finally:
            for member in group.members:
                if member.name not in group.exits:
                    group.exits[member.name] = await member.stop()

        tails = "\n".join(m.tail() for m in group.members)
        assert all(code == 0 for code in group.exits.values()), f"{group.exits}\n{tails}"
        summary = await run.outputs()  # read_committed
        seen = outcomes_per_offset(summary)
        want = expected_offsets(ends)
        missing = want - set(seen)
        assert not missing, f"{len(missing)} input offsets have no verdict or dead letter"
        duplicates = {k: n for k, n in seen.items() if n > 1}
        assert not duplicates, f"{len(duplicates)} input offsets have more than one verdict"
        assert await run.committed() == ends
