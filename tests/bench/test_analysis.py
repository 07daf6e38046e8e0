"""The benchmarks' pure analysis functions: speed ratios, lenient answer reading, the sustainable-rate rule."""

from __future__ import annotations

import pytest

from bench.analysis import keeps_up, parse_lenient, speedup, strip_fences, sustainable_rate
from nerve.ner.parsing import Mention

LABELS = ("name", "company")


def test_speedup_per_sentence_and_per_token():
    base = {"sentences": 10, "completion_tokens": 600, "wall_seconds": 50.0}  # 60 tokens a sentence
    new = {"sentences": 10, "completion_tokens": 300, "wall_seconds": 5.0}  # 30 tokens a sentence
    sp = speedup(base, new)
    assert sp["per_sentence"] == pytest.approx(10.0)
    assert sp["per_token"] == pytest.approx(5.0)  # half the tokens: half the per-sentence gain
    assert sp["baseline_tokens_per_sentence"] == 60 and sp["new_tokens_per_sentence"] == 30


def test_speedup_rejects_empty_runs():
    with pytest.raises(ValueError):
        speedup({"sentences": 1, "completion_tokens": 0, "wall_seconds": 1.0},
                {"sentences": 1, "completion_tokens": 1, "wall_seconds": 1.0})


def test_strip_fences():
    assert strip_fences('```json\n{"entities": []}\n```') == '{"entities": []}'
    assert strip_fences('```\n{"entities": []}\n```\n') == '{"entities": []}'
    assert strip_fences('{"entities": []}') == '{"entities": []}'
    assert strip_fences('Here you go: ```json\n{}\n```') == 'Here you go: ```json\n{}\n```'  # not one block


def test_parse_lenient_strips_fences_and_skips_unknown_labels():
    raw = '```json\n{\n  "entities": [\n    {"label": "name", "text": "Ann"},\n    {"label": "bank", "text": "X"}\n  ]\n}\n```'
    mentions, skipped = parse_lenient(raw, LABELS)
    assert mentions == [Mention("name", "Ann")]
    assert skipped == 1


def test_parse_lenient_skips_malformed_items_and_rejects_non_json():
    mentions, skipped = parse_lenient('{"entities": [{"label": "company", "text": ""}, "x", '
                                      '{"label": "company", "text": "ACME"}]}', LABELS)
    assert mentions == [Mention("company", "ACME")] and skipped == 2
    assert parse_lenient("```json\n{\"entities\": [\n```", LABELS) is None
    assert parse_lenient('{"items": []}', LABELS) is None
    assert parse_lenient("[]", LABELS) is None


def _step(rate, sent, ok, wall, p95, errors=0):
    return {"offered_rps": rate, "sent": sent, "ok": ok, "errors": errors, "wall_seconds": wall,
            "achieved_rps": ok / wall, "p95": p95}


def test_keeps_up_compares_completed_with_the_arrivals_within_tolerance():
    assert keeps_up(_step(1, 40, 40, 41.0, 3.0), step_seconds=40)  # 0.976 completed vs 1.0 arrived
    assert not keeps_up(_step(5, 244, 244, 64.0, 19.6), step_seconds=45)  # 3.81 completed vs 5.42 arrived
    assert not keeps_up(_step(1, 40, 39, 40.0, 3.0, errors=1), step_seconds=40)
    # The step's own arrival window wins over the run's.
    assert keeps_up({**_step(1, 40, 40, 41.0, 3.0), "arrival_seconds": 40.0}, step_seconds=10)


def test_sustainable_rate_needs_keeping_up_and_the_slo_at_every_lower_rate():
    steps = [_step(0.5, 20, 20, 40.5, 4.0), _step(1, 40, 40, 41.0, 6.0), _step(2, 80, 80, 60.0, 8.0),
             _step(3, 120, 120, 40.5, 9.0)]  # 2 req/s falls behind; 3 req/s happens to look fine
    assert sustainable_rate(steps, objective=10, step_seconds=40) == 1
    assert sustainable_rate(steps, objective=5, step_seconds=40) == 0.5
    assert sustainable_rate(steps, objective=3, step_seconds=40) == 0.0
    assert sustainable_rate(list(reversed(steps)), objective=10, step_seconds=40) == 1  # order of the list
    assert sustainable_rate([], objective=10, step_seconds=40) == 0.0
