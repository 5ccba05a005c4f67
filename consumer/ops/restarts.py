"""What the ``--workers`` supervisor does after a worker exits: restart it after a backoff,
let it be, or stop the whole group.

A worker that exits with the code of a configuration error (2) or another fatal error (3)
stops the group with that code: a restart would only fail again. One that dies otherwise (a
crash, the OOM killer's SIGKILL) is restarted after tenacity's exponential wait with jitter,
counted over its failures in a row; a run of :data:`HEALTHY_AFTER_S` starts the count afresh.
:data:`CRASH_LOOP_AFTER` failures in a row, with no healthy run since, make it crash-looping,
which ``/healthz`` reports (:mod:`consumer.ops.workers_health`).
"""

from __future__ import annotations

from enum import Enum

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random
from tenacity.wait import wait_base

from consumer.errors import ConfigError, FatalError

#: Exit codes of a worker that stop the group (see consumer.cli): restarting would loop.
GROUP_FATAL_CODES = frozenset({ConfigError.exit_code, FatalError.exit_code})
#: A worker that ran this long before it died starts its backoff from the beginning again.
HEALTHY_AFTER_S = 60.0
#: Failures in a row (none of them after a healthy run) that make a worker crash-looping.
CRASH_LOOP_AFTER = 3
#: Restart waits: 0.5, 1, 2, 4 ... 30 s, plus up to 1 s of jitter so workers spread out.
RESTART_WAIT: wait_base = wait_exponential(multiplier=0.5, max=30) + wait_random(0, 1)


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
