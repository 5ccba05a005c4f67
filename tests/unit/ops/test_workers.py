"""workers (with worker_role, restarts, workers_health): the budget split, each worker's
environment and transactional id, the restart backoff, what an exit code means, the merged
/metrics and /readyz (real HTTP against real worker health servers), and the supervisor
itself over stand-in worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.parser import text_string_to_metric_families
from tenacity import wait_exponential

from consumer.errors import ConfigError
from consumer.ops.health import HealthServer
from consumer.ops.metrics import Metrics
from consumer.ops.restarts import RESTART_WAIT, Next, RestartPolicy, after_exit
from consumer.ops.worker_role import (
    WORKER_INDEX_ENV,
    WORKER_REPORT_FD_ENV,
    WorkerRole,
    child_environ,
    split_budget,
    worker_env,
    worker_transactional_id,
)
from consumer.ops.workers import Supervisor
from consumer.ops.workers_health import (
    GroupHealth,
    WorkerStatus,
    merge_metrics,
    merge_readiness,
    render,
)
from consumer.settings import Delivery, Settings, load_settings

pytestmark = pytest.mark.timeout(60)

#: prometheus_client's OpenMetrics encoder, which it leaves unannotated.
openmetrics_latest: Callable[[CollectorRegistry], bytes] = openmetrics_exposition.generate_latest


def settings(**values: Any) -> Settings:
    return Settings(kafka_bootstrap_servers="127.0.0.1:1", **values)


# ---- settings and the budget split ----------------------------------------------------------


def test_workers_default_to_one_and_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().workers == 1
    monkeypatch.setenv("MODSTREAM_WORKERS", "4")
    assert load_settings().workers == 4


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_workers_below_one_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("MODSTREAM_WORKERS", bad)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "MODSTREAM_WORKERS" in str(err.value)


def test_a_budget_smaller_than_the_worker_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(workers=4, rpm=3)
    assert "MODSTREAM_RPM (3) is below MODSTREAM_WORKERS (4)" in str(err.value)
    with pytest.raises(ConfigError, match="MODSTREAM_TPM \\(2\\) is below MODSTREAM_WORKERS"):
        load_settings(workers=4, tpm=2)
    assert load_settings(workers=4, rpm=4, tpm=4).rpm == 4


def test_split_budget_examples() -> None:
    assert [split_budget(10, 3, i) for i in range(3)] == [4, 3, 3]
    assert [split_budget(9000, 2, i) for i in range(2)] == [4500, 4500]
    assert split_budget(None, 3, 0) is None


@given(total=st.integers(1, 10**9), count=st.integers(1, 64))
def test_split_budget_adds_up_to_the_total_and_each_share_is_the_floor_or_one_more(
    total: int, count: int
) -> None:
    shares = [split_budget(total, count, i) for i in range(count)]
    assert all(s is not None for s in shares)
    ints = [s for s in shares if s is not None]
    assert sum(ints) <= total
    assert sum(ints) == total  # nothing of the budget is left unused
    assert all(total // count <= s <= total // count + 1 for s in ints)
    if total >= count:
        assert min(ints) >= 1


def test_worker_env_splits_budgets_and_names_the_worker() -> None:
    s = settings(workers=3, rpm=100, tpm=1000, metrics_port=9400)
    envs = [worker_env(s, i, report_fd=7) for i in range(3)]
    assert [e["MODSTREAM_RPM"] for e in envs] == ["34", "33", "33"]
    assert [e["MODSTREAM_TPM"] for e in envs] == ["334", "333", "333"]
    for i, env in enumerate(envs):
        assert env[WORKER_INDEX_ENV] == str(i)
        assert env["MODSTREAM_WORKERS"] == "1"  # a worker never supervises
        assert env["MODSTREAM_METRICS_PORT"] == "0"
        assert env[WORKER_REPORT_FD_ENV] == "7"
    unlimited = worker_env(settings(workers=2), 0, report_fd=None)
    assert "MODSTREAM_RPM" not in unlimited
    assert "MODSTREAM_TPM" not in unlimited
    assert WORKER_REPORT_FD_ENV not in unlimited


def test_transactional_ids_are_distinct_per_worker_and_stable_across_restarts() -> None:
    s = settings(workers=4, delivery=Delivery.EXACTLY_ONCE, transactional_id="pod-7")
    ids = [worker_transactional_id(s, i) for i in range(4)]
    assert ids == ["pod-7-0", "pod-7-1", "pod-7-2", "pod-7-3"]
    again = settings(workers=4, delivery=Delivery.EXACTLY_ONCE, transactional_id="pod-7")
    assert [
        worker_env(again, i, report_fd=None)["MODSTREAM_TRANSACTIONAL_ID"] for i in range(4)
    ] == ids
    default = settings(workers=2, group_id="g")
    assert worker_transactional_id(default, 1) == f"{default.effective_transactional_id}-1"


def test_child_environ_drops_every_spelling_of_an_overridden_name() -> None:
    base = {"modstream_rpm": "900", "MODSTREAM_RPM": "900", "PATH": "/bin"}
    env = child_environ(base, {"MODSTREAM_RPM": "450"})
    assert env == {"MODSTREAM_RPM": "450", "PATH": "/bin"}


def test_worker_settings_read_back_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = settings(workers=2, rpm=7, tpm=101)
    for key, value in worker_env(s, 1, report_fd=None).items():
        monkeypatch.setenv(key, value)
    child = load_settings()
    assert (child.workers, child.rpm, child.tpm, child.metrics_port) == (1, 3, 50, 0)


def test_worker_role_from_env() -> None:
    assert WorkerRole.from_env({}) is None
    role = WorkerRole.from_env({WORKER_INDEX_ENV: "2", WORKER_REPORT_FD_ENV: "9"})
    assert role is not None
    assert (role.index, role.report_fd) == (2, 9)
    with pytest.raises(ConfigError, match=WORKER_INDEX_ENV):
        WorkerRole.from_env({WORKER_INDEX_ENV: "x"})


def test_worker_role_reports_its_port_over_the_pipe() -> None:
    read_fd, write_fd = os.pipe()
    WorkerRole(0, write_fd).report_port(43210)
    with os.fdopen(read_fd, "rb") as pipe:
        assert pipe.read() == b"43210\n"  # and the write end is closed: EOF


async def test_worker_role_stops_when_its_parent_is_gone() -> None:
    stop = asyncio.Event()
    await asyncio.wait_for(WorkerRole(0, None, parent_pid=-1).watch_parent(stop, 0.01), 5)
    assert stop.is_set()


# ---- restarts and exit codes ----------------------------------------------------------------


def test_restart_delays_grow_exponentially_to_the_cap() -> None:
    policy = RestartPolicy(wait=wait_exponential(multiplier=0.5, max=30))
    delays = [policy.delay(ran_s=1.0) for _ in range(9)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_restart_delays_carry_up_to_a_second_of_jitter() -> None:
    policy = RestartPolicy()
    for attempt in range(1, 12):
        floor = min(0.5 * 2 ** (attempt - 1), 30)
        assert floor <= policy.delay(ran_s=0.0) <= floor + 1
    assert RESTART_WAIT is not None


def test_a_healthy_run_resets_the_backoff_and_ends_a_crash_loop() -> None:
    policy = RestartPolicy(wait=wait_exponential(multiplier=0.5, max=30), healthy_after_s=60)
    for _ in range(3):
        policy.delay(ran_s=2.0)
    assert policy.failures == 3
    assert policy.crash_looping(running_for_s=None)  # waiting for its restart
    assert policy.crash_looping(running_for_s=5.0)  # restarted, not yet proven
    assert not policy.crash_looping(running_for_s=61.0)  # ran healthily since
    assert policy.delay(ran_s=120.0) == 0.5  # died after a healthy run: from the start
    assert policy.failures == 1
    assert not policy.crash_looping(running_for_s=None)


@pytest.mark.parametrize(
    ("code", "stopping", "idle", "expected"),
    [
        (2, False, False, Next.STOP_GROUP),
        (3, False, True, Next.STOP_GROUP),
        (3, True, False, Next.STOP_GROUP),
        (-9, False, False, Next.RESTART),  # SIGKILL (the OOM killer, a test)
        (1, False, True, Next.RESTART),  # a crash
        (0, False, False, Next.RESTART),  # exited 0 though nobody asked it to
        (0, False, True, Next.DONE),  # --exit-when-idle: finished
        (0, True, False, Next.DONE),  # stopped by the supervisor
        (-15, True, False, Next.DONE),
        (-9, True, False, Next.DONE),  # killed after the stop timeout
    ],
)
def test_what_an_exit_means(code: int, stopping: bool, idle: bool, expected: Next) -> None:
    assert after_exit(code, stopping=stopping, exit_when_idle=idle) is expected


# ---- merged metrics and readiness -----------------------------------------------------------


def worker_scrape(verdicts: int, latency: float) -> str:
    registry = CollectorRegistry()
    processed = Counter("modstream_messages_processed", "Done.", ["outcome"], registry=registry)
    processed.labels("verdict").inc(verdicts)
    duration = Histogram(
        "modstream_model_call_duration_seconds", "Calls.", buckets=(0.1, 1.0), registry=registry
    )
    duration.observe(latency)
    return openmetrics_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_merge_labels_every_sample_with_its_worker_and_describes_each_family_once() -> None:
    own = CollectorRegistry()
    Counter("modstream_worker_restarts", "Restarts.", ["worker"], registry=own).labels("1").inc()
    families = merge_metrics({0: worker_scrape(5, 0.05), 1: worker_scrape(7, 0.5)}, own.collect())
    text, content_type = render(families, "")
    body = text.decode()
    assert content_type.startswith("text/plain")
    assert body.count("# TYPE modstream_messages_processed_total counter") == 1
    assert body.count("# HELP modstream_messages_processed_total") == 1
    assert body.count("# TYPE modstream_model_call_duration_seconds histogram") == 1
    got = samples(body)
    verdict = "modstream_messages_processed_total"
    assert got[(verdict, frozenset({("outcome", "verdict"), ("worker", "0")}))] == 5
    assert got[(verdict, frozenset({("outcome", "verdict"), ("worker", "1")}))] == 7
    bucket = "modstream_model_call_duration_seconds_bucket"
    assert got[(bucket, frozenset({("le", "0.1"), ("worker", "0")}))] == 1
    assert got[(bucket, frozenset({("le", "0.1"), ("worker", "1")}))] == 0
    assert got[("modstream_worker_restarts_total", frozenset({("worker", "1")}))] == 1
    assert all(("worker" in dict(labels)) for (_, labels) in got)


def test_merge_renders_openmetrics_when_asked() -> None:
    families = merge_metrics({0: worker_scrape(1, 0.05), 3: worker_scrape(2, 0.05)})
    body, content_type = render(families, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.rstrip().endswith("# EOF")
    assert 'modstream_messages_processed_total{outcome="verdict",worker="3"} 2.0' in text


def test_merge_leaves_out_an_unreadable_scrape_and_a_family_of_another_type() -> None:
    gauge = "# TYPE modstream_messages_processed gauge\nmodstream_messages_processed 3.0\n# EOF\n"
    families = merge_metrics({0: worker_scrape(4, 0.05), 1: "not metrics {{{", 2: gauge})
    got = samples(render(families, "")[0].decode())
    workers = {dict(labels)["worker"] for (_, labels) in got}
    assert workers == {"0"}


def test_merge_readiness() -> None:
    assert merge_readiness({0: None, 1: None}) is None
    assert merge_readiness({}) == "no workers"
    reason = merge_readiness({1: "restarting", 0: None, 2: "no partitions assigned"})
    assert reason == "worker 1: restarting; worker 2: no partitions assigned"


@pytest_asyncio.fixture
async def worker_servers() -> AsyncIterator[list[HealthServer]]:
    servers = [HealthServer(Metrics(), port=0), HealthServer(Metrics(), port=0)]
    for server in servers:
        await server.__aenter__()
    try:
        yield servers
    finally:
        for server in servers:
            await server.__aexit__(None, None, None)


async def _ready() -> str | None:
    return None


async def test_group_health_over_http(worker_servers: list[HealthServer]) -> None:
    statuses = [WorkerStatus(i, "running", s.port) for i, s in enumerate(worker_servers)]
    stopping = False
    group = GroupHealth(
        lambda: statuses, CollectorRegistry(), port=0, host="127.0.0.1", stopping=lambda: stopping
    )
    async with group, aiohttp.ClientSession() as session:
        origin = f"http://127.0.0.1:{group.port}"

        async def get(path: str) -> tuple[int, Any]:
            async with session.get(origin + path) as response:
                kind = response.headers["Content-Type"]
                return response.status, await (
                    response.json() if "json" in kind else response.text()
                )

        status, body = await get("/readyz")  # the workers' Kafka clients are "starting"
        assert status == 503
        assert body["workers"]["0"].startswith("starting")
        for server in worker_servers:
            server.readiness = _ready
        assert await get("/readyz") == (
            200,
            {"status": "ready", "workers": {"0": "ready", "1": "ready"}},
        )
        statuses[1] = WorkerStatus(1, "restarting", None, crash_looping=True)
        status, body = await get("/readyz")
        assert (status, body["reason"]) == (503, "worker 1: restarting")
        assert await get("/healthz") == (503, {"status": "crash-looping", "workers": [1]})
        status, text = await get("/metrics")
        assert status == 200
        assert 'modstream_circuit_state{state="closed",worker="0"} 1.0' in text
        assert 'worker="1"' not in text  # restarting: left out of this scrape
        statuses[1] = WorkerStatus(1, "running", worker_servers[1].port)
        assert (await get("/healthz"))[0] == 200
        stopping = True
        status, body = await get("/readyz")
        assert status == 503 and body["workers"] == {"0": "stopping", "1": "stopping"}


# ---- the supervisor over stand-in workers ---------------------------------------------------

#: A stand-in worker: behaves as MODSTREAM_TEST_PLAN_<index> says, one word per start
#: (counted in a file): "crash" exits 1, "fatal" exits 3, "done" exits 0, "serve" waits for
#: SIGTERM and exits 0, "stubborn" ignores SIGTERM.
STAND_IN = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    index = os.environ["MODSTREAM_WORKER_INDEX"]
    plan = os.environ["MODSTREAM_TEST_PLAN_" + index].split(",")
    count = Path(os.environ["MODSTREAM_TEST_DIR"]) / f"starts-{index}"
    starts = int(count.read_text()) if count.exists() else 0
    count.write_text(str(starts + 1))
    step = plan[min(starts, len(plan) - 1)]
    if step == "crash": sys.exit(1)
    if step == "fatal": sys.exit(3)
    if step == "done": sys.exit(0)
    if step == "stubborn": signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else: signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    (count.parent / f"serving-{index}").touch()
    while True: time.sleep(0.05)
    """
)


def fast_policy() -> RestartPolicy:
    return RestartPolicy(wait=wait_exponential(multiplier=0.01, max=0.05))


def supervisor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, plans: list[str], **kwargs: Any
) -> Supervisor:
    monkeypatch.setenv("MODSTREAM_TEST_DIR", str(tmp_path))
    for index, plan in enumerate(plans):
        monkeypatch.setenv(f"MODSTREAM_TEST_PLAN_{index}", plan)
    return Supervisor(
        settings(workers=len(plans)),
        policy=fast_policy,
        command=[sys.executable, "-c", STAND_IN],
        **kwargs,
    )


def starts(tmp_path: Path, index: int) -> int:
    path = tmp_path / f"starts-{index}"
    return int(path.read_text()) if path.exists() else 0


async def test_crashed_workers_restart_and_the_group_ends_when_all_are_done(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    group = supervisor(monkeypatch, tmp_path, ["crash,crash,done", "done"], exit_when_idle=1.0)
    assert await asyncio.wait_for(group.run(), 30) == 0
    assert (starts(tmp_path, 0), starts(tmp_path, 1)) == (3, 1)
    restarts = {
        s.labels["worker"]: s.value
        for m in group.registry.collect()
        for s in m.samples
        if s.name == "modstream_worker_restarts_total"
    }
    assert restarts == {"0": 2.0, "1": 0.0}


async def test_a_fatal_exit_stops_the_group_with_its_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    group = supervisor(monkeypatch, tmp_path, ["serve", "fatal"])
    assert await asyncio.wait_for(group.run(), 30) == 3
    assert starts(tmp_path, 1) == 1, "a fatal exit is never restarted"


async def test_sigterm_stops_every_worker_and_kills_a_stubborn_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    group = supervisor(monkeypatch, tmp_path, ["serve", "stubborn"], stop_timeout_s=0.5)
    running = asyncio.create_task(group.run())

    async def both_running() -> None:  # started, their SIGTERM handlers in place
        while not all((tmp_path / f"serving-{i}").exists() for i in (0, 1)):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(both_running(), 20)
    os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's own handler
    assert await asyncio.wait_for(running, 20) == 0
    assert all(s.state == "exited" for s in group.statuses())
    assert (starts(tmp_path, 0), starts(tmp_path, 1)) == (1, 1), "nothing restarted on stop"


def test_the_cli_rejects_workers_below_one_naming_the_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MODSTREAM_")}
    env["MODSTREAM_KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "consume", "--workers", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "MODSTREAM_WORKERS" in result.stderr
    assert "Traceback" not in result.stderr
