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
    from tuning.export import export_checkpoint

    tmp = tmp_path_factory.mktemp("tagger")
    examples = synth_examples(5, seed=4)
    run = overfit_tagger(tiny_bert_dir, examples, tmp)
    return export_checkpoint(run, tmp / "export", progress=False), examples


@pytest.fixture(scope="module")
def tagger_server(loop_thread, exported_tagger):
    from service.config import ServeConfig
    from service.server import NerveServer
    from tests.conftest import Running

    path, examples = exported_tagger
    server = NerveServer(ServeConfig(model=str(path), port=0, metrics_port=0, encoder_max_wait_ms=50))
    loop_thread.run(server.start())
    loop_thread.run(server.wait_ready())
    running = Running(loop_thread, server)
    yield running, examples
    running.stop()


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
    before = len(engine.batch_sizes)

    async def calls() -> list:
        async with AsyncClient(running.target) as client:
            return await asyncio.gather(*(client.extract(examples[i % 5].text) for i in range(12)))

    results = asyncio.run(calls())
    assert all(len(r.entities) == len(examples[i % 5].entities) for i, r in enumerate(results))
    sizes = engine.batch_sizes[before:]
    assert sum(sizes) == 12 and max(sizes) > 1, sizes  # the micro-batcher grouped concurrent calls


def test_a_cancelled_request_costs_no_forward_pass(loop_thread, exported_tagger) -> None:
    from service.encoder_engine import EncoderConfig, EncoderEngine

    path, examples = exported_tagger

    async def body() -> tuple[list[int], list]:
        engine = await EncoderEngine.start(EncoderConfig(model=str(path), max_wait_ms=200))
        try:
            doomed = asyncio.ensure_future(engine.tag(examples[0].text))
            kept = asyncio.ensure_future(engine.tag(examples[1].text))
            await asyncio.sleep(0.01)
            doomed.cancel()
            ents, queued, took = await kept
            return engine.batch_sizes, ents
        finally:
            engine.close()

    sizes, ents = loop_thread.run(body())
    assert sizes == [1] and ents == examples[1].entities


def test_encoder_checkpoint_is_detected(exported_tagger, tmp_path) -> None:
    from service.encoder_engine import EncoderConfig, EncoderEngine, is_encoder_checkpoint

    path, _ = exported_tagger
    assert is_encoder_checkpoint(path) and not is_encoder_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="token-classification"):
        asyncio.run(EncoderEngine.start(EncoderConfig(model=str(tmp_path))))


def test_deadline_is_honoured(tagger_server) -> None:
    running, examples = tagger_server
    from nerve_client._proto.nerve.v1 import service_pb2 as spb

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
