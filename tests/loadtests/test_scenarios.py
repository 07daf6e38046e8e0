"""The load shapes stop by themselves and reach the requested users."""

from __future__ import annotations

import pytest

from loadtests.run import parse_duration
from loadtests.scenarios import SCENARIOS, make


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_shape_stops_at_the_duration(name: str) -> None:
    shape = make(name, users=8, duration=60)
    ticks = [shape.tick(t) for t in range(0, 61)]
    assert all(t is not None for t in ticks[:60]) and ticks[60] is None
    users = [t[0] for t in ticks[:60]]
    assert max(users) == 8 and min(users) >= 1
    assert all(t[1] > 0 for t in ticks[:60])


def test_steady_holds() -> None:
    assert {make("steady", 8, 60).tick(t)[0] for t in range(60)} == {8}
    assert make("steady", 8, 60, spawn_rate=2).tick(0) == (8, 2)


def test_ramp_grows_then_holds() -> None:
    users = [make("ramp", 10, 100).tick(t)[0] for t in range(100)]
    assert users == sorted(users) and users[0] == 1 and users[70] < 10 and users[80:] == [10] * 20


def test_burst_has_three_bursts() -> None:
    users = [make("burst", 16, 90).tick(t)[0] for t in range(90)]
    assert set(users) == {4, 16}
    starts = [t for t in range(1, 90) if users[t] == 16 and users[t - 1] == 4]
    assert len(starts) == 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        make("soak", 1, 10)
    with pytest.raises(ValueError):
        make("steady", 0, 10)


@pytest.mark.parametrize(("text", "seconds"), [("60", 60), ("60s", 60), ("2m", 120), ("1h30m", 5400), ("1.5m", 90)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "abc", "5x", "1m5", "0.2s"])
def test_parse_duration_rejects(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
