"""Load shapes: how many users run at each moment of a test. Pure functions of time, used by the locustfile's
``LoadTestShape`` (and tested without locust).

    steady  ramp up to ``users`` within ~10 % of the run (at least 1 s), then hold
    ramp    grow linearly from 1 to ``users`` over 80 % of the run, then hold: finds the knee of the curve
    burst   a base load of users/4 with three bursts to ``users``, spawned at once, each in the middle fifth
            of its third of the run: tests queueing, RESOURCE_EXHAUSTED and recovery

Every shape returns ``None`` once ``duration`` has passed, so a run always stops by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    users: int
    duration: float
    spawn_rate: float | None = None

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError("users must be at least 1")
        if self.duration <= 0:
            raise ValueError("duration must be positive")

    def tick(self, t: float) -> tuple[int, float] | None:
        """(target users, spawn rate per second) at ``t`` seconds, or ``None`` to stop."""
        if t >= self.duration:
            return None
        return self.at(t)

    def at(self, t: float) -> tuple[int, float]:
        raise NotImplementedError


class Steady(Shape):
    def at(self, t: float) -> tuple[int, float]:
        rate = self.spawn_rate or self.users / max(1.0, 0.1 * self.duration)
        return self.users, rate


class Ramp(Shape):
    def at(self, t: float) -> tuple[int, float]:
        rise = 0.8 * self.duration
        users = self.users if t >= rise else max(1, math.ceil(self.users * t / rise))
        return users, self.spawn_rate or float(self.users)


class Burst(Shape):
    bursts = 3
    burst_fraction = 0.2
    """Share of each period spent at the peak, centred in the period."""

    def at(self, t: float) -> tuple[int, float]:
        base = max(1, self.users // 4)
        period = self.duration / self.bursts
        phase = (t % period) / period
        in_burst = abs(phase - 0.5) < self.burst_fraction / 2
        return (self.users if in_burst else base), self.spawn_rate or float(self.users * 10)


SCENARIOS: dict[str, type[Shape]] = {"steady": Steady, "ramp": Ramp, "burst": Burst}


def make(name: str, users: int, duration: float, spawn_rate: float | None = None) -> Shape:
    try:
        cls = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
    return cls(users=users, duration=duration, spawn_rate=spawn_rate)
