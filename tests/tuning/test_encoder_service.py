"""A token-classification checkpoint served by `nerve serve`: same API, micro-batched encoder engine."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from tests.tuning.conftest import overfit_tagger, synth_examples, write_jsonl


@pytest.fixture(scope="module")
def exported_tagger(tiny_bert_dir, tmp_path_factory):
    """A tiny CRF tagger overfit on five sentences, exported like a user would."""
    from nerve.tuning.export import export_checkpoint

    tmp = tmp_path_factory.mktemp("tagger")
    examples = synth_examples(5, seed=4)
    run = overfit_tagger(tiny_bert_dir, examples, tmp)
    return export_checkpoint(run, tmp / "export", progress=False), examples


@pytest.fixture(scope="module")
def tagger_server(loop_thread, exported_tagger):
    from nerve.service.config import ServeConfig
    from nerve.service.server import NerveServer
    from tests.conftest import Running

    path, examples = exported_tagger
    server = NerveServer(ServeConfig(model=str(path), port=0, metrics_port=0, encoder_max_wait_ms=50))
    loop_thread.run(server.start())
    loop_thread.run(server.wait_ready())
    running = Running(loop_thread, server)
    yield running, examples
    running.stop()


def test_what_loading_made_is_frozen_out_of_the_collector(tagger_server) -> None:
    """After the model loads, the objects it made sit in the collector's permanent generation, so a full
    collection while serving does not walk them (and hold the event loop, health checks with it)."""
    import gc

    running, _ = tagger_server
    assert running.status() == 1
    assert gc.get_freeze_count() > 10_000


def test_serves_the_tagger_through_the_same_api(tagger_server) -> None:
    from nerve_client import Client, InvalidArgumentError

    running, examples = tagger_server
    assert running.status() == 1  # SERVING after load and warm-up
    with Client(running.target) as client:
        info = client.model_info()
        assert info.engine.startswith("nerve-encoder") and info.structured_output_backend == "none"
        assert set(info.task_card.label_names) >= {"PER", "LOC", "ORG"}
        one = client.extract(examples[0].text)
        assert [(e.label, e.text, e.start, e.end) for e in one.entities] == [
            (e.label, e.text, e.start, e.end) for e in examples[0].entities]
        batch = client.extract_batch([ex.text for ex in examples])
        for ex, r in zip(examples, batch, strict=True):
            assert [(e.label, e.start, e.end) for e in r.entities] == [(e.label, e.start, e.end) for e in ex.entities]
        only_loc = client.extract(examples[0].text, labels=["LOC"])
        assert only_loc.entities and all(e.label == "LOC" for e in only_loc.entities)
        report = client.evaluate(examples)
        assert report.micro.f1 == 1.0 and report.parse_rate == 1.0 and report.examples == 5
        with pytest.raises(InvalidArgumentError):
            client.extract("   ")
        with pytest.raises(InvalidArgumentError, match="label"):
            client.extract(examples[0].text, labels=["NOPE"])


def test_concurrent_calls_share_forward_passes(tagger_server) -> None:
    from nerve_client import AsyncClient

    running, examples = tagger_server
    engine = running.server.engine
    before = engine.batches

    async def calls() -> list:
        async with AsyncClient(running.target) as client:
            return await asyncio.gather(*(client.extract(examples[i % 5].text) for i in range(12)))

    results = asyncio.run(calls())
    assert all(len(r.entities) == len(examples[i % 5].entities) for i, r in enumerate(results))
    sizes = list(engine.batch_sizes)[len(engine.batch_sizes) - (engine.batches - before):]
    assert sum(sizes) == 12 and max(sizes) > 1, sizes  # the micro-batcher grouped concurrent calls


def test_a_cancelled_request_costs_no_forward_pass(loop_thread, exported_tagger) -> None:
    from nerve.engines.encoder import EncoderConfig, EncoderEngine

    path, examples = exported_tagger

    async def body() -> tuple[list[int], list]:
        engine = await EncoderEngine.start(EncoderConfig(model=str(path), max_wait_ms=200))
        try:
            doomed = asyncio.ensure_future(engine.tag(examples[0].text))
            kept = asyncio.ensure_future(engine.tag(examples[1].text))
            await asyncio.sleep(0.01)
            doomed.cancel()
            ents, queued, took = await kept
            return list(engine.batch_sizes), ents
        finally:
            engine.close()

    sizes, ents = loop_thread.run(body())
    assert sizes == [1] and ents == examples[1].entities


BAD = "This sentence breaks the tagger ."


class _FailingTokenizer:
    """The tagger's tokenizer, raising on any batch of texts that holds ``bad``."""

    def __init__(self, inner, bad: str) -> None:
        self.inner = inner
        self.bad = bad

    def __call__(self, texts, *args, **kwargs):
        if self.bad in texts:
            raise ValueError("this text cannot be tokenised")
        return self.inner(texts, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


async def _tag_together(engine, texts: list[str]) -> list:
    """Tag ``texts`` concurrently (so that they share a batch): each result or exception, in order."""
    calls = asyncio.gather(*(engine.tag(t) for t in texts), return_exceptions=True)
    return await asyncio.wait_for(calls, 30)  # a lost request fails the test instead of hanging it


def test_a_failure_outside_the_forward_pass_fails_only_its_call(loop_thread, exported_tagger, monkeypatch) -> None:
    from nerve.engines.encoder import EncoderConfig, EncoderEngine
    from nerve.engines.vllm import EngineError

    path, examples = exported_tagger

    async def body():
        engine = await EncoderEngine.start(EncoderConfig(model=str(path), max_wait_ms=200))
        real = engine._model.extract

        def extract(texts: list[str]) -> list:  # drops the bad text's result: results no longer match texts
            return [r for t, r in zip(texts, real(texts), strict=True) if t != BAD]

        monkeypatch.setattr(engine._model, "extract", extract)
        try:
            together = await _tag_together(engine, [examples[0].text, BAD, examples[1].text])
            later = await asyncio.wait_for(engine.tag(examples[2].text), 30)
            return together, later, list(engine.batch_sizes), engine.failed_batches, engine.dead
        finally:
            engine.close()

    (first, bad, second), later, sizes, failed, dead = loop_thread.run(body())
    assert isinstance(bad, EngineError) and "results for 1 texts" in str(bad)
    assert first[0] == examples[0].entities and second[0] == examples[1].entities
    assert later[0] == examples[2].entities  # the worker still serves
    assert failed == 1 and sizes == [1, 1, 1] and not dead  # one batch of three, then one by one


def test_a_bad_text_fails_only_its_own_call(loop_thread, exported_tagger, monkeypatch) -> None:
    from nerve.engines.encoder import EncoderConfig, EncoderEngine

    path, examples = exported_tagger
    texts = [examples[0].text, examples[1].text, BAD, examples[3].text]

    async def body():
        engine = await EncoderEngine.start(EncoderConfig(model=str(path), max_wait_ms=200))
        monkeypatch.setattr(engine._model, "tokenizer", _FailingTokenizer(engine._model.tokenizer, BAD))
        try:
            together = await _tag_together(engine, texts)
            again = await _tag_together(engine, [examples[4].text, examples[2].text])
            return together, again, list(engine.batch_sizes), engine.failed_batches
        finally:
            engine.close()

    together, again, sizes, failed = loop_thread.run(body())
    assert isinstance(together[2], ValueError) and "tokenised" in str(together[2])
    for i, result in ((0, together[0]), (1, together[1]), (3, together[3])):
        assert not isinstance(result, BaseException), result
        assert result[0] == examples[i].entities
    assert [r[0] for r in again] == [examples[4].entities, examples[2].entities]
    assert failed == 1 and sizes == [1, 1, 1, 2]  # the failed batch's good texts one by one, then a batch of two


def test_a_dead_worker_fails_calls_at_once(loop_thread, exported_tagger) -> None:
    from nerve.engines.encoder import BATCH_SIZE_HISTORY, EncoderConfig, EncoderEngine
    from nerve.engines.vllm import EngineDead, EngineError

    path, examples = exported_tagger

    async def body() -> float:
        engine = await EncoderEngine.start(EncoderConfig(model=str(path), max_wait_ms=500))
        assert engine.batch_sizes.maxlen == BATCH_SIZE_HISTORY
        try:
            held = asyncio.ensure_future(engine.tag(examples[0].text))
            await asyncio.sleep(0.05)  # the worker holds it, waiting for more texts to batch with
            assert not engine.dead
            await engine.check_health()
            engine._worker.cancel()
            with pytest.raises(EngineDead):
                await asyncio.wait_for(held, 5)
            assert engine.dead
            t0 = time.perf_counter()
            with pytest.raises(EngineDead):
                await asyncio.wait_for(engine.tag(examples[1].text), 5)
            took = time.perf_counter() - t0
            with pytest.raises(EngineDead):
                await engine.check_health()
        finally:
            engine.close()
        assert not engine.dead  # closed: an engine shut down on purpose is not dead
        with pytest.raises(EngineError, match="closed") as closed:
            await engine.tag(examples[1].text)
        assert not isinstance(closed.value, EngineDead)
        return took

    assert loop_thread.run(body()) < 1


def test_the_server_stops_when_the_encoder_worker_dies(loop_thread, exported_tagger) -> None:
    from nerve.service.config import ServeConfig
    from nerve.service.server import NerveServer
    from tests.conftest import Running

    path, _ = exported_tagger
    server = NerveServer(ServeConfig(model=str(path), port=0, metrics_port=0, warmup=False))
    loop_thread.run(server.start())
    loop_thread.run(server.wait_ready())
    running = Running(loop_thread, server)
    try:
        assert running.status() == 1
        loop_thread.loop.call_soon_threadsafe(server.engine._worker.cancel)
        loop_thread.run(asyncio.wait_for(server.wait_stopped(), 10))  # the watchdog noticed and stopped it
        assert server.failure is not None and server.state.draining
    finally:
        running.channel.close()
        loop_thread.run(server.drain(0))


def test_encoder_checkpoint_is_detected(exported_tagger, tmp_path) -> None:
    from nerve.engines.encoder import EncoderConfig, EncoderEngine, is_encoder_checkpoint

    path, _ = exported_tagger
    assert is_encoder_checkpoint(path) and not is_encoder_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="token-classification"):
        asyncio.run(EncoderEngine.start(EncoderConfig(model=str(tmp_path))))


def test_deadline_is_honoured(tagger_server) -> None:
    running, examples = tagger_server
    from nerve_client.pb import service_pb2 as spb

    t0 = time.perf_counter()
    with pytest.raises(grpc.RpcError) as err:
        running.stub.Extract(spb.ExtractRequest(text=examples[0].text), timeout=0.0001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.perf_counter() - t0 < 5


def test_cli_extract_and_eval_use_the_encoder(exported_tagger, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from nerve.cli import app

    path, examples = exported_tagger
    data = write_jsonl(tmp_path / "gold.jsonl", examples)
    runner = CliRunner()
    res = runner.invoke(app, ["extract", "--model", str(path), examples[0].text])
    assert res.exit_code == 0, res.output
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert [(e["label"], e["start"], e["end"]) for e in line["entities"]] == [
        (e.label, e.start, e.end) for e in examples[0].entities]
    res = runner.invoke(app, ["eval", "--model", str(path), "--data", str(data), "--out", str(tmp_path / "rep"),
                              "--name", "tagger"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "rep" / "tagger.json").read_text())
    assert report["micro"]["f1"] == 1.0 and report["parse_rate"] == 1.0 and (tmp_path / "rep" / "tagger.png").is_file()
    res = runner.invoke(app, ["eval", "--model", str(path), "--data", str(data), "--grounded"])
    assert res.exit_code == 2 and "token classifier" in res.output


def test_a_forward_pass_that_does_not_return_counts_as_stalled(loop_thread) -> None:
    """The server's watchdog reads ``stalled``: a tagger stuck in one forward pass must show."""
    import threading

    from nerve.engines.encoder import EncoderConfig, EncoderEngine

    release = threading.Event()

    class StuckTagger:
        tokenizer, max_length, labels = None, 16, ["name"]

        def extract(self, texts):
            release.wait(30)
            return [[] for _ in texts]

    async def scenario():
        engine = EncoderEngine(EncoderConfig(model="stuck", max_wait_ms=0), StuckTagger())
        engine._worker = asyncio.ensure_future(engine._run())
        before = engine.stalled(0.05)
        call = asyncio.ensure_future(engine.tag("Alice"))
        await asyncio.sleep(0.3)
        during = engine.stalled(0.05), engine.stalled(60)
        release.set()
        await call
        after = engine.stalled(0.05)
        engine.close()
        return before, during, after

    before, (stuck, not_yet), after = loop_thread.run(scenario())
    assert not before and stuck and not not_yet and not after


def test_a_tagger_gives_no_scores_so_min_score_is_refused(tagger_server) -> None:
    from nerve_client import Client, FailedPreconditionError

    running, examples = tagger_server
    with Client(running.target) as client:
        assert all(e.score is None for e in client.extract(examples[0].text).entities)
        assert client.extract(examples[0].text, min_score=0).entities
        with pytest.raises(FailedPreconditionError, match="no entity scores"):
            client.extract(examples[0].text, min_score=0.5)
        assert client.evaluate(examples).threshold_curve == ()
