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
