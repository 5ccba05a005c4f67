"""Worker ``i`` of ``consume --workers N``: the environment the supervisor starts it with, and
the worker's side of it.

A worker is ``python -m consumer consume`` with these variables on top of the supervisor's
environment (:func:`worker_env`, applied by :func:`child_environ`):

- ``MODSTREAM_WORKER_INDEX=i`` (0..N-1) and ``MODSTREAM_WORKERS=1``, so a child never
  supervises; every log line of worker i carries ``worker=i``;
- its share of the budgets: ``MODSTREAM_RPM`` and ``MODSTREAM_TPM`` split by
  :func:`split_budget` (floor(total/N) each, the remainder one by one to the first workers, so
  the shares add up to the total). ``MODSTREAM_CONCURRENCY`` and ``MODSTREAM_MAX_IN_FLIGHT``
  are not split: they bound one process's window (the memory it holds, the calls its event
  loop drives), exactly as they do for a replica;
- exactly-once: ``MODSTREAM_TRANSACTIONAL_ID=<id>-<i>``, distinct per worker and stable across
  restarts of the same index, so a restarted worker fences its crashed predecessor;
- with ``MODSTREAM_METRICS_PORT`` set: its health server on an ephemeral port of 127.0.0.1,
  reported back over an inherited pipe (``MODSTREAM_WORKER_REPORT_FD``); the supervisor serves
  the configured port for all of them (:mod:`consumer.ops.workers_health`).

The worker reads its place back with :meth:`WorkerRole.from_env`, and stops by itself when its
supervisor is gone (:meth:`WorkerRole.watch_parent`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from consumer.errors import ConfigError
from consumer.settings import Settings

log = structlog.get_logger(__name__)

WORKER_INDEX_ENV = "MODSTREAM_WORKER_INDEX"
WORKER_REPORT_FD_ENV = "MODSTREAM_WORKER_REPORT_FD"


def split_budget(total: int | None, count: int, index: int) -> int | None:
    """Worker ``index``'s share of a per-minute budget: floor(total/count), plus 1 for the first
    ``total mod count`` workers, so the shares add up to ``total``. ``None``: unlimited."""
    if total is None:
        return None
    base, extra = divmod(total, count)
    return base + (1 if index < extra else 0)


def worker_transactional_id(settings: Settings, index: int) -> str:
    """Exactly-once: worker ``index``'s transactional id, the same on every restart."""
    return f"{settings.effective_transactional_id}-{index}"


def worker_env(settings: Settings, index: int, *, report_fd: int | None) -> dict[str, str]:
    """The variables that make a ``modstream consume`` child worker ``index`` of the group."""
    env = {
        "MODSTREAM_WORKERS": "1",
        WORKER_INDEX_ENV: str(index),
        "MODSTREAM_METRICS_PORT": "0",  # the supervisor serves the configured port
        "MODSTREAM_TRANSACTIONAL_ID": worker_transactional_id(settings, index),
    }
    for name, total in (("RPM", settings.rpm), ("TPM", settings.tpm)):
        share = split_budget(total, settings.workers, index)
        if share is not None:
            env[f"MODSTREAM_{name}"] = str(share)
    if report_fd is not None:
        env[WORKER_REPORT_FD_ENV] = str(report_fd)
    return env


def child_environ(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """``base`` with ``overrides`` applied; settings names are case-insensitive, so any spelling
    of an overridden name is dropped first (``modstream_rpm`` must not beat ``MODSTREAM_RPM``)."""
    wanted = {k.upper() for k in overrides}
    return {**{k: v for k, v in base.items() if k.upper() not in wanted}, **overrides}


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """The child's side: which worker this process is, read from its environment."""

    index: int
    report_fd: int | None = None
    parent_pid: int = field(default_factory=os.getppid)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> WorkerRole | None:
        """The role the supervisor gave this process; ``None`` when it is not a worker."""
        raw_index = environ.get(WORKER_INDEX_ENV)
        if raw_index is None:
            return None
        raw_fd = environ.get(WORKER_REPORT_FD_ENV)
        try:
            index = int(raw_index)
            fd = None if raw_fd is None else int(raw_fd)
        except ValueError:
            raise ConfigError(
                f"{WORKER_INDEX_ENV} / {WORKER_REPORT_FD_ENV} must be integers (got "
                f"{raw_index!r}, {raw_fd!r}); they are set by the supervisor, not by hand"
            ) from None
        return cls(index, fd)

    def report_port(self, port: int) -> None:
        """Tell the supervisor where this worker's health server listens."""
        if self.report_fd is None:
            return
        try:
            os.write(self.report_fd, f"{port}\n".encode())
            os.close(self.report_fd)
        except OSError as exc:  # the supervisor is gone: watch_parent stops us
            log.warning("cannot report the health port to the supervisor", error=str(exc))

    async def watch_parent(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Set ``stop`` once the supervisor is gone (this process was re-parented)."""
        # No event tells a process its parent died (short of prctl): poll, once a second.
        while os.getppid() == self.parent_pid:  # noqa: ASYNC110
            await asyncio.sleep(interval_s)
        log.warning("the supervisor is gone; stopping", supervisor_pid=self.parent_pid)
        stop.set()
