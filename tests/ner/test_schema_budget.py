"""New output schemas (grammar compilations) are bounded per minute; the set of known schemas is bounded."""

from __future__ import annotations

import grpc
import pytest
from nerve_client.pb import service_pb2 as spb

from nerve.extraction import Extractor, Limits, SchemaBudget
from nerve.ner.card import TaskCard


def test_budget_refills_at_its_rate() -> None:
    now = [0.0]
    budget = SchemaBudget(2, clock=lambda: now[0])
    assert budget.take() and budget.take()
    assert not budget.take()  # the burst is spent
    now[0] += 15  # a quarter minute: half a compilation back
    assert not budget.take()
    now[0] += 15
    assert budget.take() and not budget.take()
    assert all(SchemaBudget(0).take() for _ in range(1000))  # 0: no limit


@pytest.mark.engine
def test_new_schemas_beyond_the_budget_are_resource_exhausted(start_server, tiny_engine) -> None:
    r = start_server()
    card = TaskCard.load(tiny_engine.config.model)
    ex = Extractor(tiny_engine, card, limits=Limits(new_schemas_per_minute=2))
    r.make_ready(ex)
    names = [lab.name for lab in card.labels]
    text = "温格的球队终于又踢了一场经典的比赛"
    for subset in (names[:1], names[:2]):
        r.stub.Extract(spb.ExtractRequest(text=text, labels=subset), timeout=60)
    with pytest.raises(grpc.RpcError) as err:
        r.stub.Extract(spb.ExtractRequest(text=text, labels=names[:3]), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "new output schemas" in err.value.details()
    r.stub.Extract(spb.ExtractRequest(text=text, labels=names[:1]), timeout=60)  # a known schema still works
    assert r.server.metrics.grammar_schemas.labels("new")._value.get() == 2


@pytest.mark.engine
def test_known_schemas_are_bounded(loop_thread, tiny_engine, monkeypatch) -> None:
    import nerve.extraction.generative as generative

    monkeypatch.setattr(generative, "SCHEMAS_REMEMBERED", 2)
    card = TaskCard.load(tiny_engine.config.model)
    ex = Extractor(tiny_engine, card)
    names = [lab.name for lab in card.labels]
    text = "温格的球队终于又踢了一场经典的比赛"
    new = [loop_thread.run(ex.extract(text, labels=names[:n])).new_schema for n in (1, 2, 3, 3, 1)]
    assert len(ex._schemas_seen) == 2
    assert new == [True, True, True, False, True]  # the first schema was forgotten, least recently used
