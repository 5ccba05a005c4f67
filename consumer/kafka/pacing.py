"""Pace aiokafka's metadata refresh while the broker is unreachable.

aiokafka 0.14 retries a failed metadata update as soon as anything waits on one, with no pause:
during a broker outage with produce requests pending, the producer's sender (a partition
leader it cannot reach) and the fetcher ask again the moment the previous attempt failed, about
1,800 connection attempts a second and most of a core (measured by
``tests/e2e/test_broker_restart.py``). No aiokafka setting paces that loop (``retry_backoff_ms``
paces the others). :func:`pace_metadata_refresh` wraps one client's metadata update so that a
failed one returns only after ``backoff_s``; every waiter then retries at that pace. A
successful update is untouched, so nothing is slower while the broker answers.

This reaches into aiokafka's private ``_metadata_update`` (aiokafka is pinned); when it is not
there, nothing is changed and the function says so.
"""

from __future__ import annotations

import asyncio
from typing import Any


def pace_metadata_refresh(kafka: Any, backoff_s: float) -> bool:
    """Make a failed metadata update of ``kafka`` (a consumer or producer) wait ``backoff_s``.

    Call it after constructing the client, before starting it. Returns whether it applied.
    """
    client = getattr(kafka, "_client", None) or getattr(kafka, "client", None)
    update = getattr(client, "_metadata_update", None)
    if client is None or update is None or getattr(update, "_modstream_paced", False):
        return False

    async def paced(cluster_metadata: Any, topics: Any) -> Any:
        updated = await update(cluster_metadata, topics)
        if not updated:
            await asyncio.sleep(backoff_s)
        return updated

    paced._modstream_paced = True  # type: ignore[attr-defined]
    client._metadata_update = paced
    return True
