"""An event loop on virtual time, for tests of timing: no real waiting, no wall clock.

Its clock moves only when every task waits: the loop then jumps straight to the next timer.
Code that reads ``loop.time`` (a ``clock=`` argument) and waits with asyncio timeouts sees
exact times ("the probe goes out 5 s after the opening") and the test takes no real time. A
wait that nothing can ever end is a deadlock and fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class _JumpingSelector:
    def __init__(self, loop: VirtualTimeLoop, selector: Any) -> None:
        self._loop = loop
        self._selector = selector

    def select(self, timeout: float | None = None) -> Any:
        if timeout is None:
            raise RuntimeError("deadlock: every task waits and no timer is due")
        self._loop.now += max(timeout, 0.0)
        self._loop.wakeups += 1
        return self._selector.select(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose ``time()`` is virtual (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.wakeups = 0  # loop iterations (select calls)
        self._selector = _JumpingSelector(self, self._selector)  # type: ignore[has-type]

    def time(self) -> float:
        return self.now


def on_virtual_time(play: Callable[[VirtualTimeLoop], Awaitable[None]]) -> None:
    """Run ``play(loop)`` to its end on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(play(loop))
    finally:
        loop.close()
