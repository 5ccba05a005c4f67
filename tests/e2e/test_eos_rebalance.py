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

from collections.abc import Awaitable, Callable

import pytest

from tests.e2e.harness import Consumer, Run, assert_nothing_lost, clean_values, new_run, until
from tests.fake_server import fake_openai_server

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

MESSAGES = 4000


class Group:
    """The members of the run's consumer group: ``modstream consume`` processes, each with a
    transactional id of its own."""

    def __init__(self, run: Run, env: dict[str, str]) -> None:
        self.run = run
        self.env = env
        self.members: list[Consumer] = []
        self.exits: dict[str, int] = {}

    def join(self, name: str, transactional_id: str | None = None) -> Consumer:
        txn = f"{self.run.name}-{transactional_id or name}"
        member = self.run.start(name=name, **self.env, MODSTREAM_TRANSACTIONAL_ID=txn)
        self.members.append(member)
        return member

    async def leave(self, member: Consumer) -> None:
        self.exits[member.name] = await member.stop()

    def crashed(self) -> str | None:
        """The tails of members that exited on their own (none of them should)."""
        gone = [m for m in self.members if m.name not in self.exits and m.exited()]
        return "\n".join(m.tail() for m in gone) if gone else None

    def tails(self) -> str:
        return "\n".join(m.tail(30) for m in self.members)

    async def wait(
        self, condition: Callable[[], Awaitable[bool]], what: str, timeout: float
    ) -> None:
        await until(what, condition, within=timeout, unless=self.crashed, context=self.tails)

    async def progress(self, by: int, what: str) -> None:
        """Wait until the group's committed offsets moved ``by`` (or reached the end)."""
        target = min(await self.run.committed_total() + by, MESSAGES)

        async def moved() -> bool:
            return await self.run.committed_total() >= target

        await self.wait(moved, f"{by} more committed offsets ({what})", timeout=180)

    async def assigned(self, member: Consumer, times: int = 1) -> None:
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
                return await run.committed() == ends

            await group.wait(everything_committed, "every offset committed", timeout=300)
        finally:
            for member in group.members:
                if member.name not in group.exits:
                    group.exits[member.name] = await member.stop()

        assert all(code == 0 for code in group.exits.values()), f"{group.exits}\n{group.tails()}"
        await assert_nothing_lost(run, max_duplicates=0, ends=ends)  # read_committed
