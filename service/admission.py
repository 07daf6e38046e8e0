"""Deadline-aware admission: refuse at once a call that would outlive its deadline in the queue.

A text admitted behind a long queue whose client gives up before the engine reaches it costs the server a slot
and the client its whole deadline, only to end DEADLINE_EXCEEDED. :class:`DrainRate` measures how fast the
server finishes texts while it is busy; with Little's law the call that would find ``inflight`` texts ahead of
its ``n`` expects to finish after about ``(inflight + n) / rate`` seconds. When that is past the call's
remaining deadline, and the call would have to wait for an engine slot at all, it is refused with
RESOURCE_EXHAUSTED while the client still has the time to retry elsewhere (the SDK retries that code).

A call that finds a free engine slot is never refused this way: its time is its own text's, not the queue's,
and a short deadline there ends DEADLINE_EXCEEDED as it should.
"""

from __future__ import annotations

import time
from collections.abc import Callable

HALF_LIFE_SECONDS = 30.0
"""How fast old observations fade from the rate: a minute ago weighs a quarter of now."""
MIN_FINISHED = 16
"""Texts that must have finished (since start) before the rate is trusted."""


class DrainRate:
    """Texts finished per busy second, exponentially weighted over time (half-life :data:`HALF_LIFE_SECONDS`).

    Fed with every change of the number of texts in flight (:meth:`update`): time with texts in flight counts
    as busy, and every decrease counts as texts that left the queue (finished, failed or cancelled: any of them
    makes room for the next). Idle time counts for nothing, so an idle hour does not make the server look slow.
    """

    def __init__(self, half_life: float = HALF_LIFE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._half_life = half_life
        self._clock = clock
        self._last = clock()
        self._inflight = 0
        self._finished = 0.0
        self._busy = 0.0
        self.finished_total = 0
        """Texts that left the queue since start (unweighted)."""

    def update(self, inflight: int) -> None:
        """Record that ``inflight`` texts are in flight from now on."""
        now = self._clock()
        decay = 0.5 ** ((now - self._last) / self._half_life)
        self._finished *= decay
        self._busy *= decay
        if self._inflight > 0:
            self._busy += now - self._last
        if inflight < self._inflight:
            left = self._inflight - inflight
            self._finished += left
            self.finished_total += left
        self._inflight, self._last = inflight, now

    @property
    def per_second(self) -> float | None:
        """Texts finished per busy second; ``None`` until :data:`MIN_FINISHED` texts have finished."""
        if self.finished_total < MIN_FINISHED or self._busy <= 0:
            return None
        return self._finished / self._busy

    def expected_seconds(self, inflight: int, n: int) -> float | None:
        """When the last of ``n`` texts admitted now behind ``inflight`` others is expected to finish
        (Little's law); ``None`` while the rate is unknown."""
        rate = self.per_second
        return None if rate is None else (inflight + n) / rate


def late_reason(rate: DrainRate, inflight: int, n: int, capacity: int, remaining: float | None) -> str | None:
    """Why ``n`` texts with ``remaining`` seconds of deadline should be refused now, or ``None`` to admit them.

    Only calls that would wait for an engine slot (``inflight + n > capacity``) and have a deadline are judged.
    """
    if remaining is None or inflight + n <= capacity:
        return None
    expected = rate.expected_seconds(inflight, n)
    if expected is None or expected <= remaining:
        return None
    return (f"the queue would outlast the call's deadline: {inflight} texts in flight, about {expected:.1f} s to "
            f"finish at the recent {rate.per_second:.2f} texts/s, {max(remaining, 0):.1f} s left; retry later or "
            "on another replica")
