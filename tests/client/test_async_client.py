"""AsyncClient parity with Client (run with asyncio.run: no pytest plugin needed)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from nerve_client import (
    AsyncClient,
    CancelledError,
    DeadlineExceededError,
    Entity,
    EvalProgress,
    Example,
    InvalidArgumentError,
    NerveError,
    NotFoundError,
    UnavailableError,
)

from .test_client import ERROR_CLASSES
from .test_evaluate import EXAMPLES

pytestmark = pytest.mark.timeout(60)


def run(coro):
    return asyncio.run(coro)


def test_extract_batch_model_info_and_health(fake_server):
    async def main():
        async with AsyncClient(fake_server.target, token="tok") as client:
            one = await client.extract("😀 Zoë in Zürich", labels=["LOC"], return_raw=True, request_id="a-1")
            many = await client.extract_batch(["Ada", "x", "Bob in Paris"], max_entities=1)
            info = await client.model_info()
            status = await client.health()
            return one, many, info, status

    one, many, info, status = run(main())
    assert one.entities == (Entity("LOC", "Zürich", 9, 15),)
    assert one.raw and one.request_id == "a-1"
    assert [[e.text for e in r.entities] for r in many] == [["Ada"], [], ["Bob"]]
    assert info.task_card is not None and info.task_card.label_names == ["PER", "LOC"]
    assert status == "SERVING"
    call = fake_server.servicer.calls("Extract")[0]
    assert call.metadata["authorization"] == "Bearer tok" and call.metadata["x-request-id"] == "a-1"
    assert fake_server.servicer.calls("ExtractBatch")[0].request.max_entities == 1


@pytest.mark.parametrize("code_name", sorted(ERROR_CLASSES))
def test_status_codes_map_to_the_same_exceptions(fake_server, code_name):
    async def main():
        async with AsyncClient(fake_server.target, retries=0) as client:
            await client.extract(f"fail:{code_name}", request_id="rid")

    with pytest.raises(NerveError) as info:
        run(main())
    assert type(info.value) is ERROR_CLASSES[code_name]
    assert info.value.code == grpc.StatusCode[code_name] and info.value.request_id == "rid"


def test_retry_on_unavailable_then_success_and_no_retry_on_invalid_argument(fake_server):
    fake_server.servicer.failures["Extract"] = [(grpc.StatusCode.UNAVAILABLE, "loading")] * 2 + [
        (grpc.StatusCode.INVALID_ARGUMENT, "bad")
    ]

    async def main():
        async with AsyncClient(fake_server.target, backoff=0.01) as client:
            with pytest.raises(InvalidArgumentError):
                await client.extract("Ada")  # two UNAVAILABLE retried, then INVALID_ARGUMENT is final
            return await client.extract("Ada")

    result = run(main())
    assert [e.text for e in result.entities] == ["Ada"]
    calls = fake_server.servicer.calls("Extract")
    assert len(calls) == 4
    assert len({c.metadata["x-request-id"] for c in calls[:3]}) == 1


def test_deadline(fake_server):
    async def main():
        async with AsyncClient(fake_server.target, timeout=0.3) as client:
            await client.extract("slow")

    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        run(main())
    assert time.monotonic() - start < 2


def test_retries_stay_within_the_deadline(fake_server):
    fake_server.servicer.failures["Extract"] = [(grpc.StatusCode.UNAVAILABLE, "loading")] * 100

    async def main():
        async with AsyncClient(fake_server.target, timeout=0.5, retries=100, backoff=0.05, max_backoff=0.1) as c:
            await c.extract("Ada")

    start = time.monotonic()
    with pytest.raises(UnavailableError):
        run(main())
    assert time.monotonic() - start < 1.5


def test_evaluate_with_async_examples_and_async_progress(fake_server):
    progress: list[EvalProgress] = []

    async def examples():
        for ex in EXAMPLES:
            await asyncio.sleep(0)
            yield ex

    async def on_progress(p: EvalProgress) -> None:
        progress.append(p)

    async def main():
        async with AsyncClient(fake_server.target) as client:
            return await client.evaluate(examples(), include_errors=True, on_progress=on_progress,
                                         request_id="ev-async")

    report = run(main())
    assert [p.done for p in progress] == [1, 2, 3]
    assert (report.micro.tp, report.micro.fp, report.micro.fn) == (4, 1, 1)
    assert report.request_id == "ev-async" and len(report.errors) == 2
    assert [e.text for e in fake_server.servicer.evaluate_examples] == [e.text for e in EXAMPLES]


def test_evaluate_with_a_list_sync_progress_and_limit(fake_server):
    progress: list[EvalProgress] = []

    async def main():
        async with AsyncClient(fake_server.target) as client:
            return await client.evaluate(EXAMPLES, limit=2, on_progress=progress.append)

    report = run(main())
    assert report.examples == 2 and [p.total for p in progress] == [2, 2]


def test_evaluate_dataset_not_found(fake_server):
    async def main():
        async with AsyncClient(fake_server.target) as client:
            await client.evaluate(dataset_path="nope.jsonl", format="jsonl")

    with pytest.raises(NotFoundError):
        run(main())


def test_evaluate_bad_async_example_raises_locally(fake_server):
    async def examples():
        yield EXAMPLES[0]
        yield {"text": 42}

    async def main():
        async with AsyncClient(fake_server.target) as client:
            await client.evaluate(examples())

    with pytest.raises(ValueError, match="needs a str text"):
        run(main())


def test_evaluate_progress_callback_error_cancels(fake_server):
    fake_server.servicer.delay_seconds = 0.05

    async def main():
        async with AsyncClient(fake_server.target) as client:
            await client.evaluate([Example(f"Name{i}") for i in range(50)], on_progress=lambda p: 1 / 0)

    with pytest.raises(ZeroDivisionError):
        run(main())
    assert fake_server.servicer.evaluate_cancelled.wait(5)


def test_task_cancellation_propagates_as_asyncio_cancelled(fake_server):
    async def main():
        async with AsyncClient(fake_server.target) as client:
            task = asyncio.create_task(client.extract("slow"))
            await asyncio.sleep(0.2)
            task.cancel()
            await task

    with pytest.raises(asyncio.CancelledError):
        run(main())
    assert not issubclass(CancelledError, asyncio.CancelledError)


def test_wait_until_serving(fake_server):
    fake_server.set_health("NOT_SERVING")

    async def main():
        async with AsyncClient(fake_server.target) as client:
            with pytest.raises(UnavailableError):
                await client.wait_until_serving(timeout=0.3, poll=0.05)
            fake_server.set_health("SERVING")
            await client.wait_until_serving(timeout=5, poll=0.05)

    run(main())


def test_close_is_idempotent_and_client_reusable_after_close(fake_server):
    async def main():
        client = AsyncClient(fake_server.target)
        await client.close()  # never opened
        await client.extract("Ada")
        await client.close()
        await client.close()
        return await client.extract("Bob")  # a new channel

    assert [e.text for e in run(main()).entities] == ["Bob"]
