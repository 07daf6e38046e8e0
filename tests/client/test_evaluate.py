"""Client.evaluate: examples streamed up, progress streamed down, one report at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import pytest
from nerve_client import (
    Client,
    Entity,
    EvalProgress,
    EvalReport,
    Example,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from nerve_client.pb import types_pb2 as tpb

pytestmark = pytest.mark.timeout(60)

EXAMPLES = [
    Example("Ada lives in Paris.", (Entity("PER", "Ada", 0, 3), Entity("LOC", "Paris", 13, 18)), id="e0"),
    # The toy model also tags "The" (a spurious PER) and misses nothing.
    Example("The man from Berlin.", (Entity("LOC", "Berlin", 13, 19),), id="e1"),
    # Gold has a lower-case entity the toy model cannot find (a missing PER).
    Example("bob met Carl.", (Entity("PER", "bob", 0, 3), Entity("PER", "Carl", 8, 12)), id="e2"),
]


def test_inline_examples_stream_up_and_report_comes_back(fake_server):
    progress: list[EvalProgress] = []
    with Client(fake_server.target) as client:
        report = client.evaluate(EXAMPLES, include_errors=True, on_progress=progress.append, request_id="ev-1")
    sent = fake_server.servicer.evaluate_examples
    assert [e.text for e in sent] == [e.text for e in EXAMPLES]
    assert [e.id for e in sent] == ["e0", "e1", "e2"]
    assert [(e.label, e.start, e.end) for e in sent[0].entities] == [("PER", 0, 3), ("LOC", 13, 18)]
    config = fake_server.servicer.calls("Evaluate")[0].request.config
    assert config.WhichOneof("source") == "inline_examples"
    assert config.inline_examples.expected_examples == 3 and config.include_errors

    assert [p.done for p in progress] == [1, 2, 3]
    assert all(p.total == 3 for p in progress) and progress[-1].fraction == 1.0
    assert isinstance(report, EvalReport)
    assert report.examples == 3 and report.request_id == "ev-1"
    assert (report.micro.tp, report.micro.fp, report.micro.fn) == (4, 1, 1)
    assert report.f1 == pytest.approx(0.8)
    assert list(report.labels) == ["PER", "LOC"]
    assert report.labels["LOC"].f1 == 1.0
    assert report.exact_match == pytest.approx(1 / 3)
    assert report.latency.p90 == 0.02 and report.gold == 5 and report.predicted == 5
    assert [(e.index, e.id) for e in report.errors] == [(1, "e1"), (2, "e2")]
    assert report.errors[0].spurious == (Entity("PER", "The", 0, 3),) and report.errors[0].missing == ()
    assert report.errors[1].missing == (Entity("PER", "bob", 0, 3),)
    assert "| PER |" in report.to_markdown() and report.to_dict()["micro"]["tp"] == 4


def test_examples_may_be_a_lazy_generator_of_mappings_or_duck_typed_objects(fake_server):
    @dataclass
    class NerEntity:  # shaped like nerve.ner.types.Entity
        start: int
        end: int
        label: str
        text: str

    @dataclass
    class NerExample:  # shaped like nerve.ner.types.Example
        text: str
        entities: list
        id: str | None = None

    def examples():
        yield {"text": "Ada lives in Paris.", "entities": [{"label": "PER", "text": "Ada", "start": 0, "end": 3}]}
        yield NerExample("Carl.", [NerEntity(0, 4, "PER", "Carl")])

    progress: list[EvalProgress] = []
    with Client(fake_server.target) as client:
        report = client.evaluate(examples(), on_progress=progress.append)
    assert report.examples == 2
    assert progress and all(p.total is None for p in progress)  # a generator has no length
    assert fake_server.servicer.calls("Evaluate")[0].request.config.inline_examples.expected_examples == 0
    assert fake_server.servicer.evaluate_examples[1].entities[0] == tpb.Entity(label="PER", text="Carl", start=0,
                                                                               end=4)


def test_limit_stops_sending(fake_server):
    sent = []

    def examples():
        for i in range(100):
            sent.append(i)
            yield Example(f"Name{i} here")

    with Client(fake_server.target) as client:
        report = client.evaluate(examples(), limit=2)
    assert report.examples == 2
    assert len(fake_server.servicer.evaluate_examples) == 2
    assert len(sent) <= 3  # the generator was not drained
    assert fake_server.servicer.calls("Evaluate")[0].request.config.limit == 2


def test_labels_and_max_entities_are_sent(fake_server):
    with Client(fake_server.target) as client:
        report = client.evaluate(EXAMPLES, labels=["LOC"], max_entities=5)
    config = fake_server.servicer.calls("Evaluate")[0].request.config
    assert list(config.labels) == ["LOC"] and config.max_entities == 5
    assert report.labels["LOC"].tp == 2
    assert list(report.labels) == ["LOC"] and report.ignored_gold == 3  # the PER gold entities
    assert "3 gold entities" in report.to_markdown()


def test_unknown_gold_labels_are_scored_and_named(fake_server):
    examples = [*EXAMPLES, Example("Acme hired Ada.", (Entity("ORG", "Acme", 0, 4), Entity("PER", "Ada", 11, 14)))]
    with Client(fake_server.target) as client:
        report = client.evaluate(examples)
    assert report.unknown_labels == ("ORG",) and list(report.labels) == ["PER", "LOC", "ORG"]
    assert (report.labels["ORG"].support, report.labels["ORG"].fn) == (1, 1)
    assert report.micro.label == "" and report.macro.label == "" and report.ignored_gold == 0
    assert "does not know: ORG" in report.to_markdown()


def test_max_entities_above_the_card_bound_is_invalid_argument(fake_server):
    with Client(fake_server.target) as client:
        bound = client.model_info().task_card.bounds.max_entities
        with pytest.raises(InvalidArgumentError, match=rf"\[1, {bound}\]"):
            client.evaluate(EXAMPLES, max_entities=bound + 1)
        with pytest.raises(InvalidArgumentError, match=rf"\[1, {bound}\]"):
            client.extract("Ada", max_entities=bound + 1)


def test_server_side_dataset(fake_server):
    fake_server.servicer.datasets["conll/dev.txt"] = [
        tpb.Example(text="Ada in London", entities=[tpb.Entity(label="LOC", text="London", start=7, end=13)]),
        tpb.Example(text="Zed", entities=[]),
    ]
    progress: list[EvalProgress] = []
    with Client(fake_server.target) as client:
        report = client.evaluate(dataset_path="conll/dev.txt", format="conll", scheme="iob2",
                                 on_progress=progress.append)
    config = fake_server.servicer.calls("Evaluate")[0].request.config
    assert config.WhichOneof("source") == "dataset"
    assert config.dataset.path == "conll/dev.txt" and config.dataset.scheme == "iob2"
    assert config.dataset.format == 3  # DATASET_FORMAT_CONLL
    assert report.examples == 2 and [p.total for p in progress] == [2, 2]


def test_dataset_errors_map_to_not_found_and_permission_denied(fake_server):
    with Client(fake_server.target) as client:
        with pytest.raises(NotFoundError, match="no such dataset"):
            client.evaluate(dataset_path="missing.jsonl")
        with pytest.raises(PermissionDeniedError):
            client.evaluate(dataset_path="../../etc/passwd")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "either examples or dataset_path"),
        ({"examples": EXAMPLES, "dataset_path": "x.jsonl"}, "either examples or dataset_path"),
        ({"dataset_path": "x", "format": "xml"}, "unknown dataset format"),
        ({"examples": EXAMPLES, "format": "conll"}, "dataset_path only"),
        ({"examples": EXAMPLES, "limit": 0}, "limit"),
    ],
)
def test_bad_arguments_fail_locally(fake_server, kwargs, match):
    with Client(fake_server.target) as client, pytest.raises(ValueError, match=match):
        client.evaluate(**kwargs)
    assert fake_server.servicer.calls("Evaluate") == []


def test_a_bad_example_raises_the_conversion_error_and_cancels(fake_server):
    def examples():
        yield EXAMPLES[0]
        yield {"no_text": True}

    with Client(fake_server.target) as client, pytest.raises(ValueError, match="needs a str text"):
        client.evaluate(examples())
    assert fake_server.servicer.evaluate_examples[0].text == EXAMPLES[0].text
    assert len(fake_server.servicer.evaluate_examples) <= 1


def test_an_exception_in_on_progress_cancels_the_run(fake_server):
    fake_server.servicer.delay_seconds = 0.05

    def on_progress(p: EvalProgress) -> None:
        raise KeyError("stop")

    with Client(fake_server.target) as client, pytest.raises(KeyError):
        client.evaluate([Example(f"Name{i}") for i in range(50)], on_progress=on_progress)
    assert fake_server.servicer.evaluate_cancelled.wait(5)
    assert len(fake_server.servicer.evaluate_examples) < 50


def test_server_error_in_the_stream(fake_server):
    with Client(fake_server.target) as client, pytest.raises(InvalidArgumentError, match="example 1"):
        client.evaluate([EXAMPLES[0], Example("")])


def test_evaluate_deadline(fake_server):
    fake_server.servicer.delay_seconds = 0.2
    with Client(fake_server.target) as client:
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            client.evaluate([Example(f"Name{i}") for i in range(50)], timeout=0.3)
        assert time.monotonic() - start < 3
    assert getattr(info.value, "code", None) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_replayable_examples_are_retried_before_any_answer(fake_server):
    fake_server.servicer.failures["Evaluate"] = [(grpc.StatusCode.UNAVAILABLE, "loading")]
    with Client(fake_server.target, backoff=0.01) as client:
        report = client.evaluate(EXAMPLES)
    assert report.examples == 3 and len(fake_server.servicer.calls("Evaluate")) == 2


def test_a_generator_is_not_retried(fake_server):
    fake_server.servicer.failures["Evaluate"] = [(grpc.StatusCode.UNAVAILABLE, "loading")]
    with Client(fake_server.target, backoff=0.01) as client, pytest.raises(UnavailableError):
        client.evaluate(iter(EXAMPLES))
    assert len(fake_server.servicer.calls("Evaluate")) == 1
