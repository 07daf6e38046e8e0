"""Deadline-aware admission: the drain rate, the decision, and refusals through a real server."""

from __future__ import annotations

import time

import grpc
import pytest
from nerve_client.pb import service_pb2 as spb

from nerve.service import admission
from nerve.service.admission import DrainRate, late_reason


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drained(rate_per_second: float, texts: int = 32, clock: Clock | None = None) -> DrainRate:
    """A DrainRate that has seen ``texts`` texts finish, one at a time, at ``rate_per_second`` while busy."""
    clock = clock or Clock()
    rate = DrainRate(clock=clock)
    rate.update(texts)
    for left in range(texts - 1, -1, -1):
        clock.now += 1 / rate_per_second
        rate.update(left)
    return rate


def test_rate_is_finished_texts_per_busy_second() -> None:
    rate = drained(4.0)
    assert rate.per_second == pytest.approx(4.0, rel=1e-6)
    assert rate.expected_seconds(inflight=10, n=2) == pytest.approx(3.0, rel=1e-6)


def test_idle_time_does_not_slow_the_rate() -> None:
    clock = Clock()
    rate = drained(2.0, clock=clock)
    clock.now += 3600  # an idle hour
    rate.update(0)
    rate.update(5)
    clock.now += 0.5
    rate.update(4)
    assert rate.per_second == pytest.approx(2.0, rel=0.05)


def test_recent_speed_outweighs_old() -> None:
    clock = Clock()
    rate = drained(1.0, clock=clock)
    slow = rate.per_second
    rate.update(200)
    for left in range(199, -1, -1):  # 200 texts at 10/s: 20 s, most of a half-life
        clock.now += 0.1
        rate.update(left)
    assert slow == pytest.approx(1.0)
    assert 5.0 < rate.per_second < 10.0


def test_no_rate_until_enough_texts_finished() -> None:
    rate = drained(4.0, texts=admission.MIN_FINISHED - 1)
    assert rate.per_second is None
    assert late_reason(rate, inflight=100, n=1, capacity=4, remaining=0.1) is None


def test_decision() -> None:
    rate = drained(2.0)  # 2 texts/s
    # 9 in flight + 1: 5 s expected.
    assert late_reason(rate, inflight=9, n=1, capacity=4, remaining=4.0) is not None
    assert late_reason(rate, inflight=9, n=1, capacity=4, remaining=6.0) is None
    assert late_reason(rate, inflight=9, n=1, capacity=4, remaining=None) is None  # no deadline
    assert late_reason(rate, inflight=3, n=1, capacity=4, remaining=0.01) is None  # a free engine slot
    reason = late_reason(rate, inflight=9, n=3, capacity=4, remaining=5.5)  # 12 texts: 6 s
    assert reason is not None and "9 texts in flight" in reason and "5.5 s left" in reason


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("shed", [True, False])
def test_a_call_that_would_expire_in_the_queue_is_refused_at_once(start_server, tiny_engine, monkeypatch,
                                                                   shed: bool) -> None:
    r = start_server(constrained=False, shed_late_calls=shed)
    servicer = r.server.servicer
    monkeypatch.setattr(servicer, "_capacity", lambda: 1)
    servicer._drain_rate = drained(0.5)  # this server is known to finish half a text per second
    busy = r.stub.Extract.future(spb.ExtractRequest(text="a" * 300), timeout=60)
    try:
        for _ in range(100):
            if r.server.state.inflight == 1:
                break
            time.sleep(0.05)
        assert r.server.state.inflight == 1
        t0 = time.perf_counter()
        code = code_of(r.stub.Extract, spb.ExtractRequest(text="b"), timeout=2.0)  # expects 4 s: too late
        took = time.perf_counter() - t0
        if shed:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert took < 1.0
            assert r.server.metrics.shed_late._value.get() == 1
        else:
            assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK)
            assert r.server.metrics.shed_late._value.get() == 0
        # ExtractBatch is judged by its number of texts: 1 + 3 texts at 0.5/s is 8 s.
        batch = spb.ExtractBatchRequest(texts=["c", "d", "e"])
        assert (code_of(r.stub.ExtractBatch, batch, timeout=6.0) == grpc.StatusCode.RESOURCE_EXHAUSTED) == shed
    finally:
        busy.cancel()
