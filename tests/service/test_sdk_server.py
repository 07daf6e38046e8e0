"""The SDK (nerve_client) against the real server on loopback (tiny random model in vLLM)."""

from __future__ import annotations

import asyncio
import json

import pytest
from nerve_client import AsyncClient, Client, Example, InvalidArgumentError, UnauthenticatedError

pytestmark = pytest.mark.engine


def test_sync_client_round_trip(start_server, tmp_path) -> None:
    (tmp_path / "gold.jsonl").write_text(json.dumps({"text": "Alice met Bob", "entities": [
        {"label": "name", "text": "Bob", "start": 10, "end": 13}]}) + "\n")
    r = start_server(eval_dataset_roots=[str(tmp_path)])
    with Client(r.target, timeout=120) as c:
        assert c.health() == "SERVING"
        info = c.model_info()
        assert info.task_card.labels[0].name == "address"
        text = "彭小军认为，国内银行现在走的是台湾的发卡模式"
        res = c.extract(text, return_raw=True, request_id="sdk-1")
        assert res.request_id == "sdk-1"
        json.loads(res.raw)
        assert all(text[e.start:e.end] == e.text for e in res.entities)
        batch = c.extract_batch([text, "Peter Blackburn"])
        assert len(batch) == 2
        seen = []
        report = c.evaluate([Example(text="Alice met Bob"), {"text": "x", "entities": []}],
                            include_errors=True, on_progress=seen.append)
        assert report.examples == 2 and report.parse_rate == 1.0
        assert seen and seen[-1].done == 2
        by_path = c.evaluate(dataset_path="gold.jsonl")  # relative to the allowed folder
        assert by_path.examples == 1 and by_path.micro.support == 1
        with pytest.raises(InvalidArgumentError) as err:
            c.extract("   ")
        assert err.value.request_id


def test_async_client_and_auth(start_server) -> None:
    r = start_server(auth_token="t0k")

    async def main() -> None:
        async with AsyncClient(r.target, timeout=120) as anon:
            with pytest.raises(UnauthenticatedError):
                await anon.extract("Peter")
            assert await anon.health() == "SERVING"
        async with AsyncClient(r.target, timeout=120, token="t0k") as c:
            results = await asyncio.gather(*(c.extract(t) for t in ["Peter", "北京", "Rome"]))
            assert len(results) == 3
            report = await c.evaluate([Example(text="Peter Blackburn")])
            assert report.examples == 1

    asyncio.run(main())


def test_evaluate_progress_totals_from_the_real_server(start_server) -> None:
    """The SDK's evaluate against the server's side of the contract (the fake in tests/client mirrors it)."""
    r = start_server()
    with Client(r.target, timeout=120) as c:
        seen: list = []
        report = c.evaluate([Example(text=f"Alice {i}") for i in range(3)], on_progress=seen.append)
        assert {p.total for p in seen} == {3}  # a list's length is sent as expected_examples
        assert seen[-1].done == 3 and seen[-1].fraction == 1.0 and report.examples == 3

        seen.clear()
        report = c.evaluate((Example(text=f"Bob {i}") for i in range(2)), on_progress=seen.append)
        assert seen[0].total is None  # a generator has no length: unknown until the stream ends
        assert (seen[-1].done, seen[-1].total) == (2, 2) and report.examples == 2

        sent: list[int] = []

        def many():
            for i in range(100):
                sent.append(i)
                yield Example(text=f"Carl {i}")

        seen.clear()
        report = c.evaluate(many(), limit=2, on_progress=seen.append)
        assert report.examples == 2 and (seen[-1].done, seen[-1].total) == (2, 2)
        assert len(sent) <= 3  # neither side read on after the limit
        assert report.elapsed_seconds >= seen[-1].elapsed_seconds > 0


def test_evaluate_labels_and_bounds_on_the_real_server(start_server) -> None:
    r = start_server()
    examples = [
        {"text": "Alice lives in Rome", "entities": [{"label": "name", "text": "Alice", "start": 0, "end": 5},
                                                     {"label": "address", "text": "Rome", "start": 15, "end": 19}]},
        {"text": "Acme hired Bob", "entities": [{"label": "ORG", "text": "Acme", "start": 0, "end": 4}]},
    ]
    with Client(r.target, timeout=120) as c:
        report = c.evaluate(examples, labels=["name"])
        assert list(report.labels) == ["name", "ORG"] and report.unknown_labels == ("ORG",)
        assert report.ignored_gold == 1 and report.gold == 2 and report.micro.support == 2
        assert report.labels["ORG"].fn == 1 and report.micro.label == "" and report.macro.label == ""
        bound = c.model_info().task_card.bounds.max_entities
        with pytest.raises(InvalidArgumentError, match=rf"\[1, {bound}\]"):
            c.evaluate(examples, max_entities=bound + 1)
        with pytest.raises(InvalidArgumentError, match=rf"\[1, {bound}\]"):
            c.extract("Alice", max_entities=bound + 1)
        with pytest.raises(InvalidArgumentError, match="example 1"):
            c.evaluate([Example(text="Alice"), Example(text="")])
        with pytest.raises(InvalidArgumentError, match="unknown labels"):
            c.evaluate(examples, labels=["nope"])
