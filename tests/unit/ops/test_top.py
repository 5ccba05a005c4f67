"""top: a recorded scrape parses into the figures the dashboard shows, the frame shows them
(rate, lag per partition, in flight, circuit, retries, cost per minute, dead letters), a
``--workers`` supervisor's merged scrape sums over its workers, and an address that is not a
running consumer's metrics is one ConfigError naming it."""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from rich.console import Console

from consumer.errors import ConfigError
from consumer.ops.scrape import Snapshot, metrics_url, parse, scrape
from consumer.ops.top import Rates, render, run_top
from tests.fake_server import free_port

pytestmark = pytest.mark.timeout(60)

URL = "http://127.0.0.1:9400/metrics"

#: ``curl localhost:9400/metrics`` of a real ``modstream consume`` mid-backlog (histogram
#: buckets, ``_created`` samples and HELP lines left out).
RECORDED = """\
# TYPE modstream_messages_fetched_total counter
modstream_messages_fetched_total 752.0
# TYPE modstream_messages_processed_total counter
modstream_messages_processed_total{outcome="verdict"} 464.0
modstream_messages_processed_total{outcome="dead_letter"} 38.0
# TYPE modstream_dead_letters_total counter
modstream_dead_letters_total{reason="decode",stage="decode"} 38.0
# TYPE modstream_messages_in_flight gauge
modstream_messages_in_flight 250.0
# TYPE modstream_model_calls_total counter
modstream_model_calls_total{model="gpt-4o-mini",outcome="ok"} 464.0
# TYPE modstream_model_call_duration_seconds histogram
modstream_model_call_duration_seconds_count{model="gpt-4o-mini"} 464.0
modstream_model_call_duration_seconds_sum{model="gpt-4o-mini"} 11.453331305993743
# TYPE modstream_model_reply_problems_total counter
# TYPE modstream_reply_ladder_total counter
# TYPE modstream_reply_salvage_fixes_total counter
# TYPE modstream_retries_total counter
modstream_retries_total{reason="rate_limited"} 0.0
modstream_retries_total{reason="provider_unavailable"} 0.0
# TYPE modstream_tokens_total counter
modstream_tokens_total{kind="prompt",model="gpt-4o-mini"} 236109.0
modstream_tokens_total{kind="completion",model="gpt-4o-mini"} 54736.0
modstream_tokens_total{kind="cached",model="gpt-4o-mini"} 0.0
# TYPE modstream_cost_usd_total counter
modstream_cost_usd_total{model="gpt-4o-mini"} 0.06825794999999994
# TYPE modstream_circuit_state gauge
modstream_circuit_state{state="closed"} 1.0
modstream_circuit_state{state="open"} 0.0
modstream_circuit_state{state="half_open"} 0.0
# TYPE modstream_consumer_lag gauge
modstream_consumer_lag{partition="3",topic="moderation.requests"} 401.0
modstream_consumer_lag{partition="4",topic="moderation.requests"} 523.0
modstream_consumer_lag{partition="1",topic="moderation.requests"} 497.0
modstream_consumer_lag{partition="2",topic="moderation.requests"} 329.0
modstream_consumer_lag{partition="5",topic="moderation.requests"} 399.0
modstream_consumer_lag{partition="0",topic="moderation.requests"} 359.0
# TYPE modstream_assigned_partitions gauge
modstream_assigned_partitions 6.0
# TYPE modstream_commit_duration_seconds histogram
modstream_commit_duration_seconds_count 3.0
modstream_commit_duration_seconds_sum 0.02752511400012736
# TYPE modstream_commit_failures_total counter
modstream_commit_failures_total 0.0
# TYPE modstream_oldest_in_flight_seconds gauge
modstream_oldest_in_flight_seconds 1.5188067340004636
# TYPE modstream_publish_retries_total counter
# TYPE modstream_partition_resets_total counter
modstream_partition_resets_total 0.0
# TYPE modstream_broker_up gauge
modstream_broker_up 1.0
# TYPE modstream_info gauge
modstream_info{model="gpt-4o-mini",policy_version="openai-taxonomy-1",version="0.1.0"} 1.0
"""

#: The same of a ``consume --workers 2`` supervisor (its merged /metrics; the families ``top``
#: reads, ``modstream_info`` left out).
RECORDED_WORKERS = """\
# TYPE modstream_messages_fetched_total counter
modstream_messages_fetched_total{worker="0"} 1355.0
modstream_messages_fetched_total{worker="1"} 645.0
# TYPE modstream_messages_processed_total counter
modstream_messages_processed_total{outcome="verdict",worker="0"} 1044.0
modstream_messages_processed_total{outcome="dead_letter",worker="0"} 72.0
modstream_messages_processed_total{outcome="verdict",worker="1"} 372.0
modstream_messages_processed_total{outcome="dead_letter",worker="1"} 30.0
# TYPE modstream_dead_letters_total counter
modstream_dead_letters_total{reason="decode",stage="decode",worker="0"} 72.0
modstream_dead_letters_total{reason="decode",stage="decode",worker="1"} 30.0
# TYPE modstream_messages_in_flight gauge
modstream_messages_in_flight{worker="0"} 239.0
modstream_messages_in_flight{worker="1"} 243.0
# TYPE modstream_retries_total counter
modstream_retries_total{reason="rate_limited",worker="0"} 0.0
modstream_retries_total{reason="provider_unavailable",worker="0"} 0.0
modstream_retries_total{reason="rate_limited",worker="1"} 0.0
modstream_retries_total{reason="provider_unavailable",worker="1"} 0.0
# TYPE modstream_tokens_total counter
modstream_tokens_total{kind="prompt",model="gpt-4o-mini",worker="0"} 533400.0
modstream_tokens_total{kind="completion",model="gpt-4o-mini",worker="0"} 123689.0
modstream_tokens_total{kind="cached",model="gpt-4o-mini",worker="0"} 0.0
modstream_tokens_total{kind="prompt",model="gpt-4o-mini",worker="1"} 190945.0
modstream_tokens_total{kind="completion",model="gpt-4o-mini",worker="1"} 44239.0
modstream_tokens_total{kind="cached",model="gpt-4o-mini",worker="1"} 0.0
# TYPE modstream_cost_usd_total counter
modstream_cost_usd_total{model="gpt-4o-mini",worker="0"} 0.1542233999999995
modstream_cost_usd_total{model="gpt-4o-mini",worker="1"} 0.055185149999999995
# TYPE modstream_circuit_state gauge
modstream_circuit_state{state="closed",worker="0"} 1.0
modstream_circuit_state{state="open",worker="0"} 0.0
modstream_circuit_state{state="half_open",worker="0"} 0.0
modstream_circuit_state{state="closed",worker="1"} 1.0
modstream_circuit_state{state="open",worker="1"} 0.0
modstream_circuit_state{state="half_open",worker="1"} 0.0
# TYPE modstream_consumer_lag gauge
modstream_consumer_lag{partition="0",topic="moderation.requests",worker="0"} 371.0
modstream_consumer_lag{partition="2",topic="moderation.requests",worker="0"} 547.0
modstream_consumer_lag{partition="4",topic="moderation.requests",worker="0"} 165.0
modstream_consumer_lag{partition="5",topic="moderation.requests",worker="1"} 212.0
modstream_consumer_lag{partition="1",topic="moderation.requests",worker="1"} 0.0
modstream_consumer_lag{partition="3",topic="moderation.requests",worker="1"} 342.0
# TYPE modstream_assigned_partitions gauge
modstream_assigned_partitions{worker="0"} 3.0
modstream_assigned_partitions{worker="1"} 3.0
# TYPE modstream_broker_up gauge
modstream_broker_up{worker="0"} 1.0
modstream_broker_up{worker="1"} 1.0
"""


def frame(snapshot: Snapshot, rates: Rates | None, problem: str | None = None) -> str:
    console = Console(record=True, width=100)
    console.print(render(snapshot, rates, url=URL, problem=problem))
    return console.export_text()


def test_a_recorded_scrape_parses_into_the_figures() -> None:
    snapshot = parse(RECORDED, URL)
    assert (snapshot.verdicts, snapshot.dead_letters, snapshot.processed) == (464, 38, 502)
    assert (snapshot.fetched, snapshot.in_flight, snapshot.assigned) == (752, 250, 6)
    assert snapshot.broker_up == 1.0
    assert snapshot.tokens == 236109 + 54736  # cached tokens are part of prompt
    assert snapshot.cost_usd == pytest.approx(0.06825795)
    assert snapshot.lag == {
        ("moderation.requests", 0): 359,
        ("moderation.requests", 1): 497,
        ("moderation.requests", 2): 329,
        ("moderation.requests", 3): 401,
        ("moderation.requests", 4): 523,
        ("moderation.requests", 5): 399,
    }
    assert list(snapshot.lag) == sorted(snapshot.lag), "partitions in order"
    assert snapshot.circuit == Counter({"closed": 1})
    assert snapshot.retries == {"rate_limited": 0, "provider_unavailable": 0}
    assert snapshot.dead_letter_reasons == {"decode": 38}
    assert snapshot.info["model"] == "gpt-4o-mini"


def test_the_frame_shows_rate_lag_per_partition_circuit_and_cost() -> None:
    snapshot = parse(RECORDED, URL)
    text = frame(snapshot, Rates(messages_per_s=158.93, cost_per_min=1.27154))
    assert "158.9 msg/s" in text
    assert "502 (464 verdicts, 38 dead letters)" in text
    assert "$1.2715/min" in text and "$0.0683 so far" in text
    for line in ("in flight     250", "lag           2,508", "circuit       closed"):
        assert line in text, text
    assert "retries       none" in text  # zero series are not news
    assert "dead letters  decode 38" in text
    assert "6 assigned, broker up" in text
    rows = [line.split() for line in text.splitlines() if "moderation.requests" in line]
    assert [(row[3], row[5]) for row in rows] == [
        ("0", "359"),
        ("1", "497"),
        ("2", "329"),
        ("3", "401"),
        ("4", "523"),
        ("5", "399"),
    ]


def test_an_open_circuit_and_retries_show() -> None:
    text = RECORDED.replace(
        'modstream_circuit_state{state="closed"} 1.0', 'modstream_circuit_state{state="closed"} 0.0'
    ).replace(
        'modstream_circuit_state{state="open"} 0.0', 'modstream_circuit_state{state="open"} 1.0'
    )
    text = text.replace(
        'modstream_retries_total{reason="provider_unavailable"} 0.0',
        'modstream_retries_total{reason="provider_unavailable"} 17.0',
    )
    shown = frame(parse(text, URL), None)
    assert "circuit       open" in shown
    assert "retries       provider_unavailable 17" in shown
    assert "rate          n/a" in shown, "one scrape has no rate"


def test_a_workers_supervisors_scrape_sums_over_its_workers() -> None:
    snapshot = parse(RECORDED_WORKERS, URL)
    assert (snapshot.verdicts, snapshot.dead_letters) == (1044 + 372, 72 + 30)
    assert (snapshot.in_flight, snapshot.assigned) == (239 + 243, 6)
    assert snapshot.lag[("moderation.requests", 5)] == 212
    assert len(snapshot.lag) == 6
    assert snapshot.circuit == Counter({"closed": 2})
    assert "circuit       closed" in frame(snapshot, None)
    one_open = RECORDED_WORKERS.replace(
        'modstream_circuit_state{state="open",worker="1"} 0.0',
        'modstream_circuit_state{state="open",worker="1"} 1.0',
    ).replace(
        'modstream_circuit_state{state="closed",worker="1"} 1.0',
        'modstream_circuit_state{state="closed",worker="1"} 0.0',
    )
    assert "circuit       closed x1, open x1" in frame(parse(one_open, URL), None)


def test_rates_between_two_scrapes() -> None:
    before = parse(RECORDED, URL)
    after = Snapshot(verdicts=564, dead_letters=38, cost_usd=before.cost_usd + 0.01)
    rates = Rates.between(before, after, 2.0)
    assert rates is not None
    assert rates.messages_per_s == 50.0
    assert rates.cost_per_min == pytest.approx(0.3)
    assert Rates.between(after, before, 2.0) is None, "a counter went back: a restart"
    assert Rates.between(before, after, 0.0) is None


def test_more_partitions_than_fit_are_summed_in_one_row() -> None:
    lag = {("t", p): 1.0 for p in range(30)}
    text = frame(Snapshot(lag=lag), None)
    assert "6 more" in text and sum(" t " in line for line in text.splitlines()) == 24


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://host:9400", "http://host:9400/metrics"),
        ("http://host:9400/", "http://host:9400/metrics"),
        ("host:9400", "http://host:9400/metrics"),
        ("http://host:9400/custom/metrics", "http://host:9400/custom/metrics"),
    ],
)
def test_the_metrics_path_is_added_to_a_bare_address(given: str, url: str) -> None:
    assert metrics_url(given) == url


def test_a_url_that_is_not_http_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not an http URL"):
        metrics_url("ftp://host/metrics")


@pytest.mark.parametrize(
    "body",
    ["<html><body>hello</body></html>", "# TYPE up gauge\nup 1.0\n", ""],
    ids=["html", "someone else's metrics", "empty"],
)
def test_text_that_is_not_modstreams_metrics_is_an_error(body: str) -> None:
    with pytest.raises(ConfigError, match="answered, but not with modstream's metrics"):
        parse(body, URL)


# ---- over HTTP ------------------------------------------------------------------------------


class Answers:
    """A local HTTP server answering each GET with the next of ``bodies`` (the last repeats);
    a body of None answers 503."""

    def __init__(self, *bodies: str | None) -> None:
        self.bodies = list(bodies)
        self.gets = 0
        answers = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = answers.bodies[min(answers.gets, len(answers.bodies) - 1)]
                answers.gets += 1
                if body is None:
                    self.send_error(503, "Service Unavailable")
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Answers:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def console() -> Iterator[Console]:
    yield Console(record=True, width=100)


def test_once_scrapes_twice_and_prints_one_frame(console: Console) -> None:
    later = RECORDED.replace(
        'modstream_messages_processed_total{outcome="verdict"} 464.0',
        'modstream_messages_processed_total{outcome="verdict"} 564.0',
    )
    with Answers(RECORDED, later) as server:
        run_top(server.url, once=True, console=console, sleep=lambda _: None)
        assert server.gets == 2
    text = console.export_text()
    assert "602 (564 verdicts, 38 dead letters)" in text
    assert "n/a" not in text.split("rate")[1].splitlines()[0], "two scrapes give a rate"
    assert text.count("modstream top") == 1


def test_live_keeps_going_through_a_failed_scrape(console: Console) -> None:
    sleeps = [0]

    def sleep(_: float) -> None:
        sleeps[0] += 1
        if sleeps[0] == 3:
            raise KeyboardInterrupt  # Ctrl-C: the view ends quietly

    with Answers(RECORDED, RECORDED, None) as server:
        run_top(server.url, console=console, sleep=sleep)
    text = console.export_text()
    assert "last scrape failed:" in text and "503" in text
    assert "lag per partition" in text


def test_a_closed_port_is_one_config_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError) as caught:
        scrape(metrics_url(url))
    message = str(caught.value)
    assert message.startswith(f"cannot reach {url}/metrics: ")
    assert "MODSTREAM_METRICS_PORT" in message and "\n" not in message


def test_an_http_error_is_one_config_error() -> None:
    with Answers(None) as server, pytest.raises(ConfigError, match="answered 503"):
        scrape(metrics_url(server.url))
