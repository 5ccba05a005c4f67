"""Read a running consumer's ``/metrics`` over HTTP into a typed snapshot (for ``modstream top``).

The text is parsed with prometheus-client's own parser; the families are the ones
:mod:`consumer.ops.families` declares. A ``--workers`` supervisor's merged ``/metrics`` reads
the same way: its ``worker`` label is summed over (each partition has one owner at a time).
An address that does not answer, or answers with something other than modstream's metrics, is
a :class:`~consumer.errors.ConfigError` saying which.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from consumer.errors import ConfigError

#: The family every modstream consumer serves from its start (consumer.ops.families).
_MARKER = "modstream_messages_processed"


@dataclass(frozen=True)
class Snapshot:
    """One scrape of a consumer's metrics, the figures ``top`` shows."""

    verdicts: float = 0.0
    dead_letters: float = 0.0
    fetched: float = 0.0
    in_flight: float = 0.0
    assigned: float = 0.0
    broker_up: float | None = None
    cost_usd: float = 0.0
    tokens: float = 0.0
    #: (topic, partition) -> messages behind the commit point
    lag: dict[tuple[str, int], float] = field(default_factory=dict)
    #: circuit state -> how many processes are in it (one, or one per worker)
    circuit: Counter[str] = field(default_factory=Counter)
    retries: dict[str, float] = field(default_factory=dict)
    dead_letter_reasons: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    @property
    def processed(self) -> float:
        """Messages finished: verdicts and dead letters."""
        return self.verdicts + self.dead_letters


def metrics_url(url: str) -> str:
    """``url`` with ``/metrics`` added when it names only the host and port."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--metrics-url {url!r} is not an http URL (e.g. http://localhost:9400)")
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return parts._replace(path=path).geturl()


def fetch(url: str, *, timeout_s: float = 3.0) -> str:
    """The text ``url`` answers; a ConfigError naming it when it cannot be read."""
    hint = "is `modstream consume` running with MODSTREAM_METRICS_PORT set?"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310  (http(s) only, checked)
            return str(response.read().decode("utf-8", errors="replace"))
    except urllib.error.HTTPError as exc:
        answer = f"{exc.code} {exc.reason}"
        raise ConfigError(f"{url} answered {answer}: not a metrics endpoint") from None
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        raise ConfigError(f"cannot reach {url}: {reason}; {hint}") from None
    except (OSError, TimeoutError) as exc:  # a reset or a read timeout after connecting
        raise ConfigError(f"cannot read {url}: {exc or type(exc).__name__}; {hint}") from None


def parse(text: str, url: str) -> Snapshot:
    """The snapshot in ``text``; a ConfigError when it is not modstream's metrics."""
    not_ours = ConfigError(f"{url} answered, but not with modstream's metrics")
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        raise not_ours from None
    if not any(f.name == _MARKER for f in families):
        raise not_ours
    sums: defaultdict[str, float] = defaultdict(float)
    lag: defaultdict[tuple[str, int], float] = defaultdict(float)
    circuit: Counter[str] = Counter()
    retries: defaultdict[str, float] = defaultdict(float)
    reasons: defaultdict[str, float] = defaultdict(float)
    info: dict[str, str] = {}
    broker: list[float] = []
    for family in families:
        for s in family.samples:
            labels = s.labels
            if s.name == "modstream_messages_processed_total":
                sums[labels.get("outcome", "")] += s.value
            elif s.name == "modstream_consumer_lag":
                tp = (labels.get("topic", ""), int(labels.get("partition", "0")))
                lag[tp] += s.value
            elif s.name == "modstream_circuit_state" and s.value:
                circuit[labels.get("state", "?")] += 1
            elif s.name == "modstream_retries_total":
                retries[labels.get("reason", "?")] += s.value
            elif s.name == "modstream_dead_letters_total":
                reasons[labels.get("reason", "?")] += s.value
            elif s.name == "modstream_tokens_total" and labels.get("kind") != "cached":
                sums["tokens"] += s.value  # cached tokens are part of prompt tokens
            elif s.name == "modstream_broker_up":
                broker.append(s.value)
            elif s.name == "modstream_info":
                info = {k: v for k, v in labels.items() if k != "worker"}
            elif s.name in _SUMMED:
                sums[_SUMMED[s.name]] += s.value
    return Snapshot(
        verdicts=sums["verdict"],
        dead_letters=sums["dead_letter"],
        fetched=sums["fetched"],
        in_flight=sums["in_flight"],
        assigned=sums["assigned"],
        broker_up=min(broker) if broker else None,
        cost_usd=sums["cost"],
        tokens=sums["tokens"],
        lag=dict(sorted(lag.items())),
        circuit=circuit,
        retries=dict(retries),
        dead_letter_reasons=dict(reasons),
        info=info,
    )


#: Samples summed over every label (and every worker), by the key they are summed under.
_SUMMED = {
    "modstream_messages_fetched_total": "fetched",
    "modstream_messages_in_flight": "in_flight",
    "modstream_assigned_partitions": "assigned",
    "modstream_cost_usd_total": "cost",
}


def scrape(url: str) -> Snapshot:
    """Fetch and parse ``url`` (a metrics URL, see :func:`metrics_url`)."""
    return parse(fetch(url), url)
