"""``modstream consume --workers N``: N consumer processes of one group under one supervisor.

With ``MODSTREAM_WORKERS=1`` (the default) none of this runs: ``consume`` is one process. With
N > 1 the supervisor (this module, in the process the user started) spawns N children, each
``python -m consumer consume`` with the environment that makes it worker i
(:mod:`consumer.ops.worker_role`: its index, its share of RPM and TPM, its transactional id,
the pipe that reports its health port). With ``MODSTREAM_METRICS_PORT`` set the supervisor
serves that port for all of them (:mod:`consumer.ops.workers_health`).

The supervisor forwards SIGTERM/SIGINT to every worker as SIGTERM and waits for them to stop
(their grace period plus a margin, then SIGKILL); it exits 0. A worker that dies otherwise is
restarted after a backoff; one that exits with code 2 (invalid configuration) or 3 (a fatal
error) stops the whole group with that code (:mod:`consumer.ops.restarts`). With
``--exit-when-idle`` a worker that exits 0 is done; the supervisor exits 0 once every worker
is. A worker whose supervisor is gone (SIGKILLed) stops by itself.

Log lines of all processes share stderr; each is one ``write()`` (``consumer.ops.logs``), so lines
up to the pipe's atomic size (4 KiB) never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from consumer.ops.logs import configure_logging
from consumer.ops.restarts import Next, RestartPolicy, after_exit
from consumer.ops.worker_role import WorkerRole, child_environ, worker_env
from consumer.ops.workers_health import GroupHealth, WorkerStatus
from consumer.settings import Settings

# WorkerRole lives in worker_role; named here too because consumer.app imports it from here.
__all__ = ["STOP_MARGIN_S", "Supervisor", "WorkerRole", "supervise"]

log = structlog.get_logger(__name__)

#: Time a worker gets to close after its grace period, before the SIGKILL.
STOP_MARGIN_S = 15.0


@dataclass
class _Worker:
    index: int
    policy: RestartPolicy
    state: str = "starting"
    pid: int | None = None
    port: int | None = None
    started_at: float | None = None


class Supervisor:
    """Runs ``settings.workers`` workers until a signal, a fatal exit, or all are done."""

    def __init__(
        self,
        settings: Settings,
        *,
        exit_when_idle: float | None = None,
        policy: Callable[[], RestartPolicy] = RestartPolicy,
        stop_timeout_s: float | None = None,
        command: Sequence[str] = (sys.executable, "-m", "consumer", "consume"),
    ) -> None:
        self.settings = settings
        self.command = list(command)
        self.exit_when_idle = exit_when_idle
        self.stop_timeout_s = stop_timeout_s or settings.shutdown_grace_s + STOP_MARGIN_S
        self.exit_code = 0
        self._stopping = asyncio.Event()
        self._workers = [_Worker(i, policy()) for i in range(settings.workers)]
        self.registry = CollectorRegistry(auto_describe=True)
        self._restarts = Counter(
            "modstream_worker_restarts",
            "Workers restarted by the supervisor after they died.",
            ["worker"],
            registry=self.registry,
        )
        self._up = Gauge(
            "modstream_worker_up",
            "1 while the worker process runs.",
            ["worker"],
            registry=self.registry,
        )
        for worker in self._workers:
            self._restarts.labels(str(worker.index))
            self._up.labels(str(worker.index)).set_function(self._is_up(worker))

    @staticmethod
    def _is_up(worker: _Worker) -> Callable[[], float]:
        return lambda: 1.0 if worker.pid is not None else 0.0

    def statuses(self) -> list[WorkerStatus]:
        """Each worker as the health server sees it."""
        now = time.monotonic()
        return [
            WorkerStatus(
                w.index,
                w.state,
                w.port,
                w.policy.crash_looping(None if w.started_at is None else now - w.started_at),
            )
            for w in self._workers
        ]

    def stop(self) -> None:
        """Stop every worker (forwarded as SIGTERM), then exit."""
        if not self._stopping.is_set():
            log.info("stop requested; stopping the workers", workers=len(self._workers))
            self._stopping.set()

    async def run(self) -> int:
        """Supervise until done; the process's exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        settings = self.settings
        health: AbstractAsyncContextManager[object] = (
            GroupHealth(
                self.statuses,
                self.registry,
                port=settings.metrics_port,
                host=settings.metrics_host,
                stopping=self._stopping.is_set,
            )
            if settings.metrics_port
            else contextlib.nullcontext()
        )
        try:
            async with health, asyncio.TaskGroup() as group:
                for worker in self._workers:
                    group.create_task(self._keep(worker))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("workers stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker, restarting it after a crash, until it is done or the group stops."""
        while not self._stopping.is_set():
            code, ran_s = await self._run_once(worker)
            decision = after_exit(
                code,
                stopping=self._stopping.is_set(),
                exit_when_idle=self.exit_when_idle is not None,
            )
            if decision is Next.STOP_GROUP:
                log.error(
                    "worker failed for good; stopping the group", worker=worker.index, code=code
                )
                self.exit_code = self.exit_code or code
                worker.state = "exited"
                self.stop()
                return
            if decision is Next.DONE:
                worker.state = "exited"
                return
            delay = worker.policy.delay(ran_s)
            worker.state = "restarting"
            self._restarts.labels(str(worker.index)).inc()
            log.warning(
                "worker died; restarting",
                worker=worker.index,
                code=code,
                ran_s=round(ran_s, 1),
                failures=worker.policy.failures,
                delay_s=round(delay, 2),
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                continue

    async def _run_once(self, worker: _Worker) -> tuple[int, float]:
        """Start the worker, wait for its exit (stopping it when the group stops): its exit code
        and how long it ran."""
        read_fd, write_fd = os.pipe() if self.settings.metrics_port else (None, None)
        idle = self.exit_when_idle
        args = [] if idle is None else ["--exit-when-idle", str(idle)]
        env = child_environ(os.environ, worker_env(self.settings, worker.index, report_fd=write_fd))
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                *args,
                env=env,
                pass_fds=() if write_fd is None else (write_fd,),
            )
        except BaseException:
            if read_fd is not None:
                os.close(read_fd)
            raise
        finally:
            if write_fd is not None:
                os.close(write_fd)
        started = worker.started_at = time.monotonic()
        worker.pid, worker.state = process.pid, "running"
        log.info("worker started", worker=worker.index, pid=process.pid)
        reader = None if read_fd is None else asyncio.create_task(self._read_port(worker, read_fd))
        try:
            code = await self._wait(worker, process)
        finally:
            if process.returncode is None:  # cancelled (the supervisor failed): no orphan
                process.kill()
            if reader is not None:
                reader.cancel()
        worker.pid = worker.port = worker.started_at = None
        ran_s = time.monotonic() - started
        log.info(
            "worker exited", worker=worker.index, pid=process.pid, code=code, ran_s=round(ran_s, 1)
        )
        return code, ran_s

    async def _wait(self, worker: _Worker, process: asyncio.subprocess.Process) -> int:
        """The worker's exit code; when the group stops first, SIGTERM it, SIGKILL it after
        the stop timeout."""
        exited = asyncio.create_task(process.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not exited.done():
            worker.state = "stopping"
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), self.stop_timeout_s)
            except TimeoutError:
                log.warning("worker did not stop in time; killing it", worker=worker.index)
                process.kill()
        return await exited

    async def _read_port(self, worker: _Worker, read_fd: int) -> None:
        """Read the port the worker reports; EOF (it died first) leaves it unknown."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(read_fd, "rb")
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe
            )
        except BaseException:
            pipe.close()
            raise
        try:
            line = await reader.readline()
            if line.strip().isdigit():
                worker.port = int(line)
        finally:
            transport.close()
            pipe.close()


def supervise(settings: Settings, *, exit_when_idle: float | None = None) -> int:
    """Blocking entry for the CLI: run the workers; the exit code."""
    configure_logging(settings)
    log.info("supervising workers", workers=settings.workers, group=settings.group_id)
    return asyncio.run(Supervisor(settings, exit_when_idle=exit_when_idle).run())
