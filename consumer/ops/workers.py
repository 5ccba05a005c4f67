"""``modstream consume --workers N``: N consumer processes of one group under one supervisor.

With ``MODSTREAM_WORKERS=1`` (the default) none of this runs: ``consume`` is one process. With
N > 1 the supervisor (this module, in the process the user started) spawns N children, each
``python -m consumer consume`` with the environment :func:`worker_env` gives it:

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

The supervisor forwards SIGTERM/SIGINT to every worker as SIGTERM and waits for them to stop
(their grace period plus a margin, then SIGKILL); it exits 0. A worker that dies otherwise is
restarted after a backoff (:class:`RestartPolicy`). A worker that exits with code 2 (invalid
configuration) or 3 (a fatal error) stops the whole group with that code: a restart would only
fail again. With ``--exit-when-idle`` a worker that exits 0 is done; the supervisor exits 0
once every worker is. A worker whose supervisor is gone (SIGKILLed) stops by itself.

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
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import Enum

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from tenacity import RetryCallState, Retrying, wait_exponential, wait_random
from tenacity.wait import wait_base

from consumer.errors import ConfigError
from consumer.ops.workers_health import GroupHealth, WorkerStatus
from consumer.settings import Settings

log = structlog.get_logger(__name__)

WORKER_INDEX_ENV = "MODSTREAM_WORKER_INDEX"
WORKER_REPORT_FD_ENV = "MODSTREAM_WORKER_REPORT_FD"
#: Exit codes of a worker that stop the group (see consumer.cli): restarting would loop.
GROUP_FATAL_CODES = frozenset({2, 3})
#: A worker that ran this long before it died starts its backoff from the beginning again.
HEALTHY_AFTER_S = 60.0
#: Failures in a row (none of them after a healthy run) that make a worker crash-looping.
CRASH_LOOP_AFTER = 3
#: Time a worker gets to close after its grace period, before the SIGKILL.
STOP_MARGIN_S = 15.0
#: Restart waits: 0.5, 1, 2, 4 ... 30 s, plus up to 1 s of jitter so workers spread out.
RESTART_WAIT: wait_base = wait_exponential(multiplier=0.5, max=30) + wait_random(0, 1)


# -- what each worker gets -------------------------------------------------------------------


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


# -- restarts and exits ----------------------------------------------------------------------


class RestartPolicy:
    """When a worker that died is started again: tenacity's exponential wait with jitter over
    the failures in a row; a worker that ran :data:`HEALTHY_AFTER_S` starts from 1 again."""

    def __init__(
        self,
        *,
        wait: wait_base = RESTART_WAIT,
        healthy_after_s: float = HEALTHY_AFTER_S,
        crash_loop_after: int = CRASH_LOOP_AFTER,
    ) -> None:
        self._wait = wait
        self.healthy_after_s = healthy_after_s
        self.crash_loop_after = crash_loop_after
        self.failures = 0

    def delay(self, ran_s: float) -> float:
        """A worker died after running ``ran_s`` seconds: seconds to wait before its restart."""
        if ran_s >= self.healthy_after_s:
            self.failures = 0
        self.failures += 1
        state = RetryCallState(Retrying(), None, (), {})
        state.attempt_number = self.failures
        return float(self._wait(state))

    def crash_looping(self, running_for_s: float | None) -> bool:
        """Failed ``crash_loop_after`` times in a row, and not running healthily since."""
        if running_for_s is not None and running_for_s >= self.healthy_after_s:
            return False
        return self.failures >= self.crash_loop_after


class Next(Enum):
    """What the supervisor does after a worker exited."""

    RESTART = "restart"
    DONE = "done"  # not restarted; the others go on
    STOP_GROUP = "stop_group"  # stop every worker, exit with this worker's code


def after_exit(code: int, *, stopping: bool, exit_when_idle: bool) -> Next:
    """The decision for a worker that exited with ``code`` (negative: killed by a signal)."""
    if code in GROUP_FATAL_CODES:
        return Next.STOP_GROUP
    if stopping or (code == 0 and exit_when_idle):
        return Next.DONE
    return Next.RESTART  # a crash, a SIGKILL (the OOM killer), or a 0 nobody asked for


# -- the supervisor --------------------------------------------------------------------------


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
    from consumer.ops.logs import configure_logging  # noqa: PLC0415

    configure_logging(settings)
    log.info("supervising workers", workers=settings.workers, group=settings.group_id)
    return asyncio.run(Supervisor(settings, exit_when_idle=exit_when_idle).run())
