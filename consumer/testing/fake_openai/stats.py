"""Request counting and a bounded log of request bodies, read by tests over ``/_fake/*``.

Only API requests (``/v1/...``) are counted and logged: a test polling ``/_fake/stats`` must
not change what it measures.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from consumer.testing.fake_openai.faults import Outcome

#: Headers never written to the request log.
HIDDEN_HEADERS = frozenset({"authorization", "api-key", "openai-api-key"})


class Stats:
    """Counters by path and outcome, tokens served, and the last request bodies."""

    def __init__(self, log_size: int) -> None:
        self.log: deque[tuple[float, str, str, Any, Any]] = deque(maxlen=log_size)
        self.by_path: Counter[str] = Counter()
        self.by_outcome: Counter[str] = Counter()
        self.reset()

    def request(self, method: str, path: str, headers: Any, body: Any) -> None:
        """Count an API request and log its body and headers (credentials left out)."""
        self.total += 1
        self.by_path[path] += 1
        # The (immutable) headers object is kept as is and filtered when read: copying it on
        # every request would cost more than the rest of the bookkeeping.
        self.log.append((time.time(), method, path, headers, body))

    def outcome(self, outcome: Outcome) -> None:
        """Count what the request got."""
        self.by_outcome[outcome.value] += 1

    def file_uploaded(self) -> None:
        """Count a ``POST /v1/files`` that stored a file."""
        self.files_uploaded += 1

    def batch_created(self) -> None:
        """Count a ``POST /v1/batches`` that created a batch (valid input or not)."""
        self.batches_created += 1

    def tokens(self, prompt: int, completion: int, cached: int) -> None:
        """Add the usage of a reply that was sent."""
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cached_tokens += cached

    def resize(self, log_size: int) -> None:
        """Change how many bodies are kept, keeping the newest."""
        if log_size != self.log.maxlen:
            self.log = deque(self.log, maxlen=log_size)

    def reset(self) -> None:
        """Zero every counter and empty the log."""
        self.total = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.files_uploaded = 0
        self.batches_created = 0
        self.by_path.clear()
        self.by_outcome.clear()
        self.log.clear()

    def snapshot(self) -> dict[str, Any]:
        """The ``GET /_fake/stats`` document."""
        return {
            "total": self.total,
            "by_path": dict(self.by_path),
            "by_outcome": dict(self.by_outcome),
            "tokens": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "cached": self.cached_tokens,
            },
            "files_uploaded": self.files_uploaded,
            "batches_created": self.batches_created,
        }

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` logged requests, oldest first."""
        if limit <= 0:
            return []
        return [
            {
                "time": when,
                "method": method,
                "path": path,
                "headers": {k: v for k, v in headers.items() if k.lower() not in HIDDEN_HEADERS},
                "body": body,
            }
            for when, method, path, headers, body in list(self.log)[-limit:]
        ]
