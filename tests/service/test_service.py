"""The gRPC service on a real loopback port, backed by a real vLLM engine (tiny random model)."""

from __future__ import annotations

import json
import logging
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nerve_client.pb import service_pb2 as spb
from nerve_client.pb import types_pb2 as tpb
from prometheus_client import generate_latest

from nerve.engines.vllm import EngineConfig
from nerve.extraction import Extractor
from nerve.ner.card import TaskCard
from nerve.service.server import SERVICE_NAME

pytestmark = pytest.mark.engine


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_extract_and_usage_and_request_id(start_server) -> None:
    r = start_server()
    text = "温格的球队终于又踢了一场经典的比赛，2比1战胜曼联之后"
    resp, call = r.stub.Extract.with_call(spb.ExtractRequest(text=text, return_raw=True),
                                          metadata=(("x-request-id", "req-42"),), timeout=60)
    assert ("x-request-id", "req-42") in call.trailing_metadata()
    json.loads(resp.raw)  # the raw answer is valid JSON
    for e in resp.entities:
        assert text[e.start:e.end] == e.text
    assert resp.usage.prompt_tokens > 0 and resp.usage.total_seconds > 0
    _, call = r.stub.Extract.with_call(spb.ExtractRequest(text="Peter"), timeout=60)
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 32


def test_cached_prompt_tokens_are_reported_and_counted(start_server, tiny_engine) -> None:
    r = start_server()
    text = "温格的球队终于又踢了一场经典的比赛，2比1战胜曼联之后"
    first = r.stub.Extract(spb.ExtractRequest(text=text), timeout=60).usage
    again = r.stub.Extract(spb.ExtractRequest(text=text), timeout=60).usage
    block = tiny_engine._llm.vllm_config.cache_config.block_size
    # The same prompt again: every whole block of it comes from the prefix cache.
    assert again.cached_prompt_tokens == (again.prompt_tokens - 1) // block * block > 0  # the last token is always computed
    assert first.cached_prompt_tokens % block == 0
    counted = r.server.metrics.cached_prompt_tokens._value.get()
    assert counted == first.cached_prompt_tokens + again.cached_prompt_tokens


def test_extract_batch_keeps_input_order(start_server) -> None:
    r = start_server()
    texts = ["Peter Blackburn", "彭小军认为，国内银行现在走的是台湾的发卡模式", "x", "EU rejects German call ."]
    resp = r.stub.ExtractBatch(spb.ExtractBatchRequest(texts=texts), timeout=60)
    assert len(resp.results) == len(texts)
    for text, res in zip(texts, resp.results, strict=True):
        for e in res.entities:
            assert text[e.start:e.end] == e.text


def test_get_model_info(start_server) -> None:
    r = start_server(max_batch_texts=7)
    info = r.stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=10).model_info
    assert info.engine.startswith("vllm")
    assert info.structured_output_backend == "xgrammar"
    assert [lab.name for lab in info.task_card.labels][:2] == ["address", "book"]
    assert json.loads(info.task_card.output_schema_json)["properties"]["entities"]["type"] == "array"
    assert info.limits.max_batch_texts == 7
    assert len(info.task_card.chat_template_sha256) == 64


def test_evaluate_streams_progress_then_report(start_server) -> None:
    r = start_server()
    text = "Alice met Bob in Rome"
    examples = [tpb.Example(text=text, entities=[tpb.Entity(label="name", text="Alice", start=0, end=5)]),
                tpb.Example(text="彭小军认为", entities=[tpb.Entity(label="name", text="彭小军", start=0, end=3)]),
                tpb.Example(text="nothing here")]
    reqs = [spb.EvaluateRequest(config=spb.EvaluateConfig(inline_examples=spb.InlineSource(), include_errors=True))]
    reqs += [spb.EvaluateRequest(example=e) for e in examples]
    responses = list(r.stub.Evaluate(iter(reqs), timeout=120))
    progress = [m.progress for m in responses if m.WhichOneof("kind") == "progress"]
    reports = [m.report for m in responses if m.WhichOneof("kind") == "report"]
    assert len(reports) == 1 and responses[-1].WhichOneof("kind") == "report"
    assert progress[0].done == 0 and progress[-1].done == 3 and progress[-1].total == 3
    rep = reports[0]
    assert rep.examples == 3 and rep.parse_rate == 1.0
    assert rep.micro.support == 2
    assert rep.latency.p50_seconds > 0
    assert len(rep.errors) >= 1  # a random model misses the gold entities


def test_evaluate_dataset_path(start_server, tmp_path) -> None:
    data = tmp_path / "gold.jsonl"
    data.write_text(json.dumps({"text": "Alice met Bob", "entities": [
        {"label": "name", "text": "Bob", "start": 10, "end": 13}]}) + "\n")
    r = start_server(eval_dataset_roots=[str(tmp_path)])
    cfg = spb.EvaluateConfig(dataset=spb.DatasetSource(path=str(data), format=spb.DATASET_FORMAT_JSONL))
    responses = list(r.stub.Evaluate(iter([spb.EvaluateRequest(config=cfg)]), timeout=120))
    assert responses[-1].report.examples == 1

    def evaluate_code(path: str) -> grpc.StatusCode:
        cfg = spb.EvaluateConfig(dataset=spb.DatasetSource(path=path))
        return code_of(lambda: list(r.stub.Evaluate(iter([spb.EvaluateRequest(config=cfg)]), timeout=30)))

    assert evaluate_code("/etc/passwd") == grpc.StatusCode.PERMISSION_DENIED
    assert evaluate_code(str(tmp_path / "missing.jsonl")) == grpc.StatusCode.NOT_FOUND
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ab", "entities": [{"label": "name", "text": "zz", "start": 0, "end": 2}]}\n')
    assert evaluate_code(str(bad)) == grpc.StatusCode.FAILED_PRECONDITION


def test_invalid_arguments(start_server) -> None:
    r = start_server(max_text_chars=50, max_batch_texts=3, max_batch_bytes=40)
    bad_extract = [spb.ExtractRequest(text=""), spb.ExtractRequest(text="  \n\t"), spb.ExtractRequest(text="x" * 51),
                   spb.ExtractRequest(text="ok", labels=["nope"]), spb.ExtractRequest(text="ok", max_entities=-1)]
    for req in bad_extract:
        assert code_of(r.stub.Extract, req, timeout=10) == grpc.StatusCode.INVALID_ARGUMENT, req
    for req in [spb.ExtractBatchRequest(texts=[]), spb.ExtractBatchRequest(texts=["a", "b", "c", "d"]),
                spb.ExtractBatchRequest(texts=["a" * 30, "b" * 30]), spb.ExtractBatchRequest(texts=["a", ""])]:
        assert code_of(r.stub.ExtractBatch, req, timeout=10) == grpc.StatusCode.INVALID_ARGUMENT
    try:
        r.stub.ExtractBatch(spb.ExtractBatchRequest(texts=["a", " "]), timeout=10)
    except grpc.RpcError as exc:
        assert "texts[1]" in exc.details()
    # malformed Evaluate streams
    example = spb.EvaluateRequest(example=tpb.Example(text="abc"))
    config = spb.EvaluateRequest(config=spb.EvaluateConfig(inline_examples=spb.InlineSource()))
    bad_offsets = spb.EvaluateRequest(example=tpb.Example(text="abc", entities=[
        tpb.Entity(label="name", text="zz", start=0, end=2)]))
    bad_text = spb.EvaluateRequest(example=tpb.Example(text="x" * 51))

    def evaluate_config(**fields) -> spb.EvaluateRequest:
        return spb.EvaluateRequest(config=spb.EvaluateConfig(**fields))

    streams = [[example], [config], [config, config], [config, bad_offsets], [config, example, bad_text],
               [evaluate_config(), example],  # no source
               [evaluate_config(inline_examples=spb.InlineSource(expected_examples=-1)), example],
               [evaluate_config(inline_examples=spb.InlineSource(), limit=-1), example],
               [evaluate_config(inline_examples=spb.InlineSource(), labels=["nope"]), example]]
    for stream in streams:
        c = code_of(lambda s=stream: list(r.stub.Evaluate(iter(s), timeout=30)))
        assert c == grpc.StatusCode.INVALID_ARGUMENT, stream
    with pytest.raises(grpc.RpcError) as err:
        list(r.stub.Evaluate(iter([config, example, bad_text]), timeout=30))
    assert err.value.details().startswith("example 1: ")


def test_max_entities_above_the_card_bound_is_invalid_argument(start_server) -> None:
    r = start_server()
    bound = r.stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=10).model_info.task_card.bounds.max_entities
    config = spb.EvaluateConfig(inline_examples=spb.InlineSource(), max_entities=bound + 1)
    calls = [lambda: r.stub.Extract(spb.ExtractRequest(text="Peter", max_entities=bound + 1), timeout=10),
             lambda: r.stub.ExtractBatch(spb.ExtractBatchRequest(texts=["Peter"], max_entities=bound + 1), timeout=10),
             lambda: list(r.stub.Evaluate(iter([spb.EvaluateRequest(config=config),
                                                spb.EvaluateRequest(example=tpb.Example(text="Peter"))]), timeout=30))]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"[1, {bound}]" in err.value.details() and str(bound + 1) in err.value.details()
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="Peter", max_entities=bound), timeout=60) == \
        grpc.StatusCode.OK


def evaluate_stream(config: spb.EvaluateConfig, examples) -> list:
    return [spb.EvaluateRequest(config=config), *(spb.EvaluateRequest(example=e) for e in examples)]


def split(responses) -> tuple[list, tpb.ScoreReport]:
    kinds = [m.WhichOneof("kind") for m in responses]
    assert kinds.count("report") == 1 and kinds[-1] == "report"
    return [m.progress for m in responses[:-1]], responses[-1].report


def test_evaluate_label_subset_ignores_other_card_labels_and_scores_unknown_ones(start_server) -> None:
    r = start_server()
    examples = [
        tpb.Example(text="Alice lives in Rome", entities=[
            tpb.Entity(label="name", text="Alice", start=0, end=5),
            tpb.Entity(label="address", text="Rome", start=15, end=19),
            tpb.Entity(label="address", text="Rome", start=15, end=19)]),  # a duplicate counts once
        tpb.Example(text="Bob read Dune", entities=[
            tpb.Entity(label="book", text="Dune", start=9, end=13),
            tpb.Entity(label="PER", text="Bob", start=0, end=3)]),  # a label the card does not know
    ]
    config = spb.EvaluateConfig(inline_examples=spb.InlineSource(), labels=["name", "company", "name"],
                                include_errors=True)
    _, rep = split(list(r.stub.Evaluate(iter(evaluate_stream(config, examples)), timeout=120)))
    assert [s.label for s in rep.labels] == ["company", "name", "PER"]  # card order, then unknown labels
    assert list(rep.unknown_labels) == ["PER"]
    assert rep.ignored_gold == 2 and rep.gold == 2
    per = next(s for s in rep.labels if s.label == "PER")
    assert (per.support, per.tp, per.fn) == (1, 0, 1)
    assert rep.micro.support == 2 and rep.micro.fn == 2 - rep.micro.tp
    assert rep.micro.label == "" and rep.macro.label == ""
    missing = {(e.label, e.text) for err in rep.errors for e in err.missing}
    assert ("address", "Rome") not in missing and ("book", "Dune") not in missing and ("PER", "Bob") in missing
    spurious = {e.label for err in rep.errors for e in err.spurious}
    assert spurious <= {"name", "company"}  # only the requested labels are extracted

    _, everything = split(list(r.stub.Evaluate(iter(evaluate_stream(
        spb.EvaluateConfig(inline_examples=spb.InlineSource()), examples)), timeout=120)))
    assert everything.ignored_gold == 0 and everything.gold == 4


def test_evaluate_scores_examples_while_the_stream_is_open(start_server) -> None:
    r = start_server()
    scored_two = threading.Event()
    config = spb.EvaluateConfig(inline_examples=spb.InlineSource(expected_examples=4))

    def requests():
        yield spb.EvaluateRequest(config=config)
        time.sleep(1.5)  # counts towards elapsed_seconds: the clock starts at the config
        for i in range(2):
            yield spb.EvaluateRequest(example=tpb.Example(text=f"Alice {i}"))
        assert scored_two.wait(60), "the server did not score the examples it had"
        for i in range(2, 4):
            yield spb.EvaluateRequest(example=tpb.Example(text=f"Alice {i}"))

    responses = []
    for m in r.stub.Evaluate(requests(), timeout=120):
        responses.append(m)
        if m.WhichOneof("kind") == "progress" and m.progress.done == 2:
            assert m.progress.total == 4  # the client's expected_examples while the stream is open
            scored_two.set()
    progress, rep = split(responses)
    assert scored_two.is_set()
    assert [p.done for p in progress] == [0, 1, 2, 3, 4] and {p.total for p in progress} == {4}
    assert progress[-1].elapsed_seconds >= 1.5 and rep.elapsed_seconds >= progress[-1].elapsed_seconds
    assert rep.examples == 4


def test_evaluate_progress_total_is_the_count_once_the_stream_ends(start_server) -> None:
    r = start_server()
    examples = [tpb.Example(text="Alice"), tpb.Example(text="Bob")]

    def totals(**inline) -> tuple[list, list]:
        config = spb.EvaluateConfig(inline_examples=spb.InlineSource(**inline.pop("source", {})), **inline)
        progress, rep = split(list(r.stub.Evaluate(iter(evaluate_stream(config, examples * 3)), timeout=120)))
        return [p.total if p.HasField("total") else None for p in progress], rep

    seen, rep = totals(source={"expected_examples": 10})  # the client was wrong: the count wins at the end
    assert seen[0] == 10 and seen[-1] == 6 and rep.examples == 6
    seen, rep = totals(source={"expected_examples": 10}, limit=4)
    assert seen[0] == 4 and seen[-1] == 4 and rep.examples == 4  # the rest of the stream is ignored
    seen, rep = totals()
    assert seen[0] is None and seen[-1] == 6


def test_evaluate_example_limits(start_server, tmp_path) -> None:
    lines = [json.dumps({"text": f"Alice {i}", "entities": [{"label": "name", "text": "Alice", "start": 0, "end": 5}]})
             for i in range(3)]
    (tmp_path / "gold.jsonl").write_text("\n".join(lines) + "\n")
    inline = spb.EvaluateConfig(inline_examples=spb.InlineSource())
    three = [tpb.Example(text=f"Alice {i}") for i in range(3)]

    def dataset(limit: int = 0) -> list:
        return [spb.EvaluateRequest(config=spb.EvaluateConfig(dataset=spb.DatasetSource(path="gold.jsonl"),
                                                              limit=limit))]

    unlimited = start_server(max_eval_examples=0, eval_dataset_roots=[str(tmp_path)])  # 0: no server limit
    assert split(list(unlimited.stub.Evaluate(iter(evaluate_stream(inline, three)), timeout=120)))[1].examples == 3
    assert split(list(unlimited.stub.Evaluate(iter(dataset()), timeout=120)))[1].examples == 3
    info = unlimited.stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=10).model_info
    assert info.limits.max_evaluate_examples == 0

    r = start_server(max_eval_examples=2, eval_dataset_roots=[str(tmp_path)])
    for stream in (evaluate_stream(inline, three), dataset(), dataset(limit=3)):
        with pytest.raises(grpc.RpcError) as err:
            list(r.stub.Evaluate(iter(stream), timeout=120))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit is 2" in err.value.details()
    limited = spb.EvaluateConfig(inline_examples=spb.InlineSource(), limit=2)
    assert split(list(r.stub.Evaluate(iter(evaluate_stream(limited, three)), timeout=120)))[1].examples == 2
    assert split(list(r.stub.Evaluate(iter(dataset(limit=2)), timeout=120)))[1].examples == 2


def test_evaluate_dataset_scheme_applies_to_conll_only(start_server, tmp_path) -> None:
    (tmp_path / "gold.jsonl").write_text(json.dumps({"text": "Alice met Bob", "entities": [
        {"label": "name", "text": "Bob", "start": 10, "end": 13}]}) + "\n")
    (tmp_path / "gold.conll").write_text("Alice B-name\nmet O\nBob B-name\n\n")
    r = start_server(eval_dataset_roots=[str(tmp_path)])

    def evaluate(path: str, fmt: int, scheme: str) -> tpb.ScoreReport:
        config = spb.EvaluateConfig(dataset=spb.DatasetSource(path=path, format=fmt, scheme=scheme))
        return split(list(r.stub.Evaluate(iter([spb.EvaluateRequest(config=config)]), timeout=120)))[1]

    assert evaluate("gold.jsonl", spb.DATASET_FORMAT_JSONL, "bioes").gold == 1
    assert evaluate("gold.jsonl", spb.DATASET_FORMAT_UNSPECIFIED, "nonsense").gold == 1  # detected: not CoNLL
    assert evaluate("gold.conll", spb.DATASET_FORMAT_CONLL, "bio").gold == 2
    assert evaluate("gold.conll", spb.DATASET_FORMAT_UNSPECIFIED, "iob2").gold == 2
    with pytest.raises(grpc.RpcError) as err:
        evaluate("gold.conll", spb.DATASET_FORMAT_CONLL, "nonsense")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "scheme" in err.value.details()


def test_request_texts_are_logged_only_when_asked(start_server, caplog) -> None:
    text = 'Zoë said "hi"\nin Paris'
    quiet, verbose = start_server(), start_server(log_texts=True)
    with caplog.at_level(logging.INFO, logger="nerve.service"):
        quiet.stub.Extract(spb.ExtractRequest(text=text), timeout=60)
        verbose.stub.Extract(spb.ExtractRequest(text=text), metadata=(("x-request-id", "logged-1"),), timeout=60)
        verbose.stub.ExtractBatch(spb.ExtractBatchRequest(texts=[text, "Bob"]),
                                  metadata=(("x-request-id", "logged-2"),), timeout=60)
        code_of(verbose.stub.Extract, spb.ExtractRequest(text="x" * 5000), metadata=(("x-request-id", "logged-3"),),
                timeout=60)
        lines = {}
        for _ in range(50):  # the line is written when the call closes, which may be after the client has its answer
            lines = {rec.getMessage().split("request_id=")[1].split()[0]: rec.getMessage()
                     for rec in caplog.records if rec.getMessage().startswith("rpc=")}
            if {"logged-1", "logged-2", "logged-3"} <= set(lines):
                break
            time.sleep(0.1)
    assert all("\n" not in line for line in lines.values())  # one line per request
    assert lines["logged-1"].endswith(" request_texts=" + json.dumps([text], ensure_ascii=False))
    assert lines["logged-2"].endswith(" request_texts=" + json.dumps([text, "Bob"], ensure_ascii=False))
    assert "code=INVALID_ARGUMENT" in lines["logged-3"] and "x" * 5000 in lines["logged-3"]
    quiet_lines = [line for rid, line in lines.items() if not rid.startswith("logged-")]
    assert quiet_lines and not any("request_texts=" in line or "Zoë" in line for line in quiet_lines)


def test_not_ready_is_unavailable_and_health_transitions(start_server, tiny_engine) -> None:
    r = start_server(ready=False)
    assert r.status() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert r.status(SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="hi"), timeout=10) == grpc.StatusCode.UNAVAILABLE
    r.make_ready(Extractor(tiny_engine, TaskCard.load(tiny_engine.config.model)))
    assert r.status() == health_pb2.HealthCheckResponse.SERVING
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="hi"), timeout=60) == grpc.StatusCode.OK


def test_internal_errors_are_generic(start_server) -> None:
    r = start_server()

    async def boom(*args, **kwargs):
        raise RuntimeError("secret detail")

    r.server.state.extractor.extract = boom
    try:
        r.stub.Extract(spb.ExtractRequest(text="hi"), timeout=10)
        raise AssertionError("expected an error")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in exc.details() and "internal error" in exc.details()


def test_deadline_expiry(start_server) -> None:
    r = start_server(constrained=False)  # unconstrained random model: long generations
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="a" * 300), timeout=0.3) == grpc.StatusCode.DEADLINE_EXCEEDED
    counts = r.server.metrics.requests.labels("Extract", "DEADLINE_EXCEEDED", "grpc")
    for _ in range(50):
        if counts._value.get() >= 1:
            break
        time.sleep(0.1)
    assert counts._value.get() == 1


def test_cancelled_call_frees_its_slot(start_server, tiny_engine) -> None:
    r = start_server(constrained=False)
    future = r.stub.Extract.future(spb.ExtractRequest(text="a" * 300), timeout=60)
    for _ in range(100):
        if tiny_engine.num_unfinished:
            break
        time.sleep(0.05)
    assert r.server.state.inflight == 1
    future.cancel()
    for _ in range(100):
        if not tiny_engine.num_unfinished and not r.server.state.inflight:
            break
        time.sleep(0.05)
    assert tiny_engine.num_unfinished == 0
    assert r.server.state.inflight == 0


def test_overload_is_resource_exhausted_and_bounded(start_server, tiny_engine) -> None:
    r = start_server(constrained=False, max_queue=2)
    futures = [r.stub.Extract.future(spb.ExtractRequest(text="a" * 300), timeout=60) for _ in range(2)]
    for _ in range(100):
        if r.server.state.inflight == 2:
            break
        time.sleep(0.05)
    t0 = time.perf_counter()
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="b"), timeout=10) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(r.stub.ExtractBatch, spb.ExtractBatchRequest(texts=["a"]), timeout=10) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.perf_counter() - t0 < 2  # refused at once, not queued
    assert r.server.state.inflight <= 2
    for f in futures:
        f.cancel()


def test_metrics_families_after_traffic(start_server) -> None:
    r = start_server()
    r.stub.Extract(spb.ExtractRequest(text="Peter Blackburn"), timeout=60)
    code_of(r.stub.Extract, spb.ExtractRequest(text=""), timeout=10)
    # The status reaches the client before the server's bookkeeping finishes: poll briefly.
    for _ in range(50):
        text = generate_latest(r.server.metrics.registry).decode()
        if 'code="INVALID_ARGUMENT"' in text:
            break
        time.sleep(0.1)
    for family in ["nerve_requests_total", "nerve_request_seconds", "nerve_queue_seconds", "nerve_engine_seconds",
                   "nerve_first_token_seconds", "nerve_batch_texts", "nerve_prompt_tokens_total",
                   "nerve_completion_tokens_total", "nerve_inflight_requests", "nerve_queued_requests",
                   "nerve_parse_failures_total", "nerve_grammar_schemas_total", "nerve_grammar_first_use_seconds",
                   "nerve_model_info", "nerve_ready"]:
        assert f"# TYPE {family.removesuffix('_total')}" in text, family
    assert 'nerve_requests_total{code="OK",method="Extract",transport="grpc"} 1.0' in text
    assert 'nerve_requests_total{code="INVALID_ARGUMENT",method="Extract",transport="grpc"} 1.0' in text
    assert "nerve_parse_failures_total 0.0" in text


def test_auth_token(start_server) -> None:
    r = start_server(auth_token="s3cret")
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="hi"), timeout=10) == grpc.StatusCode.UNAUTHENTICATED
    bad = (("authorization", "Bearer wrong"),)
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="hi"), metadata=bad, timeout=10) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: list(r.stub.Evaluate(iter([]), timeout=10))) == grpc.StatusCode.UNAUTHENTICATED
    good = (("authorization", "Bearer s3cret"),)
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="hi"), metadata=good, timeout=60) == grpc.StatusCode.OK
    assert r.status() == health_pb2.HealthCheckResponse.SERVING  # probes need no token


def test_reflection_lists_the_services(start_server) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    r = start_server()
    db = ProtoReflectionDescriptorDatabase(r.channel)
    services = set(db.get_services())
    assert {"nerve.v1.NerveService", "grpc.health.v1.Health"} <= services
    desc = db.FindFileContainingSymbol("nerve.v1.NerveService")
    assert desc.package == "nerve.v1"


def test_reflection_v1_answers_like_v1alpha(start_server) -> None:
    """Tools that ask for grpc.reflection.v1 first (grpcurl, Postman) get the same answers as from v1alpha."""
    from grpc_reflection.v1alpha import reflection_pb2

    r = start_server()
    answers = {}
    for version in ("v1", "v1alpha"):
        info = r.channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                       request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                       response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="nerve.v1.NerveService")]
        listed, file = list(info(iter(requests), timeout=10))
        answers[version] = ({s.name for s in listed.list_services_response.service},
                            file.file_descriptor_response.file_descriptor_proto)
    services, files = answers["v1"]
    assert {"nerve.v1.NerveService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert answers["v1"] == answers["v1alpha"] and files


def test_in_process_drain_finishes_in_flight_calls(start_server) -> None:
    r = start_server()
    futures = [r.stub.Extract.future(spb.ExtractRequest(text=f"Peter Blackburn {i}"), timeout=60) for i in range(6)]
    for _ in range(500):
        if r.server.state.inflight == 6:
            break
        time.sleep(0.01)
    assert r.server.state.inflight == 6, "all calls must be in flight before the drain starts"
    r.loop_thread.run(r.server.drain(30))
    assert [f.code() for f in futures] == [grpc.StatusCode.OK] * 6
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="late"), timeout=5) == grpc.StatusCode.UNAVAILABLE


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80), labels=st.lists(st.sampled_from(["name", "book", "??", ""]), max_size=3),
       max_entities=st.integers(-3, 40), raw=st.booleans())
def test_fuzzed_requests_always_get_a_status(start_server, text, labels, max_entities, raw) -> None:
    if not hasattr(test_fuzzed_requests_always_get_a_status, "server"):
        test_fuzzed_requests_always_get_a_status.server = start_server()
    r = test_fuzzed_requests_always_get_a_status.server
    req = spb.ExtractRequest(text=text, labels=labels, max_entities=max_entities, return_raw=raw)
    code = code_of(r.stub.Extract, req, timeout=60)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)
    assert r.status() == health_pb2.HealthCheckResponse.SERVING


def test_engine_config_overrides_reach_the_engine() -> None:
    from nerve.service.config import load_config

    cfg = load_config(None, {"engine": {"max_model_len": "4096"}}, environ={"NERVE_PORT": "6000"})
    assert cfg.engine.max_model_len == 4096 and cfg.port == 6000
    assert isinstance(cfg.engine, EngineConfig)


def _open_v2_server(start_server, tiny_engine, open_labels: bool = True):
    from dataclasses import replace

    from nerve.ner.labels import LabelSet

    r = start_server(ready=False)
    base = TaskCard.load(tiny_engine.config.model)
    card = replace(base, template="nerve-ner-v2", open_labels=open_labels,
                   labels=LabelSet.from_names(["person", "location", "organization"]))
    r.make_ready(Extractor(tiny_engine, card))
    return r


def test_v2_card_answers_always_parse_and_model_info_says_so(start_server, tiny_engine) -> None:
    """A random model under the v2 (pairs) schema: every answer is a parseable list of [label, text] pairs."""
    r = _open_v2_server(start_server, tiny_engine)
    texts = ["Peter Blackburn met officials in Brussels .", "彭小军认为，国内银行现在走的是台湾的发卡模式", "x",
             "EU rejects German call to boycott British lamb .", "🙂🙂 Angela Merkel visited Paris ."]
    resp = r.stub.ExtractBatch(spb.ExtractBatchRequest(texts=texts, return_raw=True), timeout=120)
    for res in resp.results:
        answer = json.loads(res.raw)
        assert isinstance(answer, list) and all(len(p) == 2 and p[0] in ("person", "location", "organization")
                                                for p in answer)
    info = r.stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=10).model_info
    assert info.task_card.open_labels and info.task_card.template_id == "nerve-ner-v2"
    assert json.loads(info.task_card.output_schema_json)["type"] == "array"
    assert info.dtype in ("bfloat16", "float32") and info.dtype_reason


def test_open_labels_per_request(start_server, tiny_engine) -> None:
    r = _open_v2_server(start_server, tiny_engine)
    text = "Aspirin helps Bob in Rome"
    resp = r.stub.Extract(spb.ExtractRequest(text=text, labels=["drug", "person"], return_raw=True,
                                             label_descriptions={"drug": "medicines"}), timeout=60)
    assert all(label in ("drug", "person") for label, _ in json.loads(resp.raw))
    for e in resp.entities:
        assert e.label in ("drug", "person") and text[e.start:e.end] == e.text
    bad = [
        spb.ExtractRequest(text=text, labels=["1drug"]),  # not a valid name
        spb.ExtractRequest(text=text, labels=[f"l{i}" for i in range(33)]),  # too many
        spb.ExtractRequest(text=text, labels=["drug"], label_descriptions={"drug": "x" * 201}),
        spb.ExtractRequest(text=text, labels=["drug"], label_descriptions={"dose": "amounts"}),
        spb.ExtractRequest(text=text, labels=["drug"], label_descriptions={"drug": "line\nbreak"}),
        spb.ExtractRequest(text=text, label_descriptions={"drug": "medicines"}),
    ]
    for request in bad:
        assert code_of(r.stub.Extract, request, timeout=30) == grpc.StatusCode.INVALID_ARGUMENT, request
    batch = spb.ExtractBatchRequest(texts=[text, "Ibuprofen"], labels=["drug"])
    assert len(r.stub.ExtractBatch(batch, timeout=60).results) == 2


def test_closed_cards_refuse_labels_they_do_not_know(start_server, tiny_engine) -> None:
    r = _open_v2_server(start_server, tiny_engine, open_labels=False)
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="Bob", labels=["person"]), timeout=60) == grpc.StatusCode.OK
    for request in (spb.ExtractRequest(text="Bob", labels=["drug"]),
                    spb.ExtractRequest(text="Bob", labels=["person"], label_descriptions={"person": "people"})):
        assert code_of(r.stub.Extract, request, timeout=30) == grpc.StatusCode.INVALID_ARGUMENT
    try:
        r.stub.Extract(spb.ExtractRequest(text="Bob", labels=["y" * 5000]), timeout=30)
    except grpc.RpcError as exc:
        assert len(exc.details()) < 400  # an unknown name is echoed cut short


def test_each_text_is_prepared_once_per_request(start_server, monkeypatch) -> None:
    """Chat template, tokenisation and schema are built once per text, however the text arrives."""
    r = start_server()
    ex = r.server.state.extractor
    calls: list[str] = []
    real = ex.prepare

    def counting(text, *args, **kwargs):
        calls.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(ex, "prepare", counting)
    r.stub.Extract(spb.ExtractRequest(text="Peter Blackburn"), timeout=60)
    assert calls == ["Peter Blackburn"]
    calls.clear()
    texts = ["EU rejects German call", "Peter Blackburn", "温格的球队"]
    r.stub.ExtractBatch(spb.ExtractBatchRequest(texts=texts), timeout=120)
    assert sorted(calls) == sorted(texts)
    calls.clear()
    examples = [tpb.Example(text=t) for t in texts[:2]]
    list(r.stub.Evaluate(iter(evaluate_stream(spb.EvaluateConfig(inline_examples=spb.InlineSource()), examples)), timeout=120))
    assert sorted(calls) == sorted(texts[:2])


OFFSETS_TEXT = "🙂🙂 Angela Merkel visited Paris with Ame\u0301lie ."
"""Astral characters (2 UTF-16 units, 4 UTF-8 bytes each) before the entities, a combining accent inside one."""


def _spans_extractor(r) -> None:
    """Make the server's extractor return fixed, grounded spans of OFFSETS_TEXT (the model is random)."""
    from nerve.extraction import ExtractionResult
    from nerve.ner.types import Entity

    async def extract(text, **kwargs):
        spans = [("PER", "Angela Merkel"), ("LOC", "Paris"), ("PER", "Ame\u0301lie")]
        return ExtractionResult([Entity(start=text.index(t), end=text.index(t) + len(t), label=lab, text=t)
                                 for lab, t in spans if t in text], "", True)

    r.server.state.extractor.extract = extract


@pytest.mark.parametrize("unit, index", [
    (tpb.OFFSET_UNIT_UNSPECIFIED, lambda t, a, b: t[a:b]),
    (tpb.OFFSET_UNIT_CODE_POINT, lambda t, a, b: t[a:b]),
    (tpb.OFFSET_UNIT_UTF16, lambda t, a, b: t.encode("utf-16-le")[2 * a:2 * b].decode("utf-16-le")),
    (tpb.OFFSET_UNIT_UTF8, lambda t, a, b: t.encode("utf-8")[a:b].decode("utf-8")),
])
def test_offsets_in_the_unit_asked_for(start_server, unit, index) -> None:
    r = start_server()
    _spans_extractor(r)
    one = r.stub.Extract(spb.ExtractRequest(text=OFFSETS_TEXT, offset_unit=unit), timeout=30)
    batch = r.stub.ExtractBatch(spb.ExtractBatchRequest(texts=["x " + OFFSETS_TEXT, OFFSETS_TEXT], offset_unit=unit),
                                timeout=30)
    for text, entities in [(OFFSETS_TEXT, one.entities), ("x " + OFFSETS_TEXT, batch.results[0].entities),
                           (OFFSETS_TEXT, batch.results[1].entities)]:
        assert [index(text, e.start, e.end) for e in entities] == ["Angela Merkel", "Paris", "Ame\u0301lie"]
    if unit == tpb.OFFSET_UNIT_UTF16:
        assert (one.entities[0].start, one.entities[0].end) == (5, 18)  # each 🙂 counts 2 units
    if unit == tpb.OFFSET_UNIT_UTF8:
        assert one.entities[0].start == 9  # each 🙂 counts 4 bytes


def test_unknown_offset_unit_is_invalid_argument(start_server) -> None:
    r = start_server()
    assert code_of(r.stub.Extract, spb.ExtractRequest(text="Peter", offset_unit=7), timeout=10) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_sdk_asks_for_offsets(start_server) -> None:
    from nerve_client import Client

    r = start_server()
    _spans_extractor(r)
    with Client(r.target) as c:
        utf16 = c.extract(OFFSETS_TEXT, offsets="utf16").entities[0]
        utf8 = c.extract_batch([OFFSETS_TEXT], offsets="utf8")[0].entities[0]
        assert (utf16.start, utf16.end) == (5, 18) and (utf8.start, utf8.end) == (9, 22)
        with pytest.raises(ValueError, match="offsets must be one of code_points, utf16, utf8"):
            c.extract(OFFSETS_TEXT, offsets="bytes")


def _scored_extractor(r, scored: list[tuple[str, str, float]]) -> None:
    """Make the server's extractor return fixed, grounded and scored spans (the tiny model is random and mostly
    answers no entities; scores from the real engine are checked in tests/nerve/test_engine.py)."""
    from nerve.extraction import ExtractionResult
    from nerve.ner.types import Entity

    async def extract(text, **kwargs):
        return ExtractionResult([Entity(start=text.index(t), end=text.index(t) + len(t), label=lab, text=t,
                                        score=s) for lab, t, s in scored if t in text], '{"raw":1}', True)

    r.server.state.extractor.extract = extract


SCORED = [("PER", "Angela Merkel", 0.935), ("LOC", "Paris", 0.415), ("PER", "Ame\u0301lie", 0.705)]


def test_entity_scores_and_min_score(start_server) -> None:
    """Entities carry the model's confidence; min_score leaves out those below it (after decoding: the same
    answer); a threshold outside [0, 1] is INVALID_ARGUMENT."""
    from nerve_client import Client

    r = start_server()
    _scored_extractor(r, SCORED)
    text = OFFSETS_TEXT
    full = r.stub.Extract(spb.ExtractRequest(text=text, return_raw=True), timeout=60)
    assert [(e.text, round(e.score, 4)) for e in full.entities] == [(t, s) for _, t, s in SCORED]
    assert all(e.HasField("score") for e in full.entities)
    kept = r.stub.Extract(spb.ExtractRequest(text=text, min_score=0.7, return_raw=True), timeout=60)
    assert kept.raw == full.raw
    assert [e.text for e in kept.entities] == ["Angela Merkel", "Ame\u0301lie"]  # 0.7 itself is kept
    batch = r.stub.ExtractBatch(spb.ExtractBatchRequest(texts=[text, "Paris"], min_score=0.9), timeout=60)
    assert [[e.text for e in b.entities] for b in batch.results] == [["Angela Merkel"], []]
    for bad in (-0.1, 1.5, float("nan")):
        assert code_of(r.stub.Extract, spb.ExtractRequest(text=text, min_score=bad), timeout=10) == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(r.stub.ExtractBatch, spb.ExtractBatchRequest(texts=[text], min_score=bad), timeout=10) == \
            grpc.StatusCode.INVALID_ARGUMENT
    with Client(r.target) as c:
        got = c.extract(text, min_score=0.5)
        assert [e.score for e in got.entities] == pytest.approx([0.935, 0.705])
        assert all(e.to_dict()["score"] == e.score for e in got.entities)
        assert [e.text for e in c.extract_batch([text], min_score=0.95)[0].entities] == []
        with pytest.raises(ValueError, match="min_score"):
            c.extract(text, min_score=2)


def test_evaluate_reports_a_threshold_curve(start_server) -> None:
    from nerve_client import Client, Entity, Example

    r = start_server()
    _scored_extractor(r, SCORED)
    text = OFFSETS_TEXT
    s = text.index("Angela Merkel")
    p = text.index("Paris")
    gold = [Entity(label="PER", text="Angela Merkel", start=s, end=s + 13),
            Entity(label="LOC", text="Paris", start=p, end=p + 5)]
    with Client(r.target) as c:
        report = c.evaluate([Example(text=text, entities=gold)])
    curve = report.threshold_curve
    assert [round(p.threshold, 2) for p in curve] == [i / 100 for i in range(100)]
    assert curve[0].precision == pytest.approx(report.micro.precision) == pytest.approx(2 / 3)
    assert curve[0].recall == pytest.approx(report.micro.recall) == 1.0
    assert all(a.predicted >= b.predicted and a.recall >= b.recall for a, b in zip(curve, curve[1:], strict=False))
    at = {round(p.threshold, 2): p for p in curve}
    assert (at[0.41].predicted, at[0.41].recall) == (3, 1.0)
    assert (at[0.42].predicted, at[0.42].precision, at[0.42].recall) == (2, 0.5, 0.5)  # Paris (0.41) is gone
    assert (at[0.71].predicted, at[0.71].precision, at[0.71].recall) == (1, 1.0, 0.5)  # the wrong PER is gone
    assert (at[0.94].predicted, at[0.94].recall) == (0, 0.0)
