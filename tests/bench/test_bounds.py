"""bench_bounds.py's summary of the two arms."""

from __future__ import annotations

from bench.bench_bounds import summarise


def _arm(max_tokens: int, answer: int, seconds: float, parsed: bool = True, entities: int = 1) -> dict:
    return {"max_tokens": max_tokens, "answer_tokens": answer, "seconds": seconds, "parsed": parsed,
            "entities": entities}


def test_the_summary_keeps_each_arms_worst_case_and_totals() -> None:
    rows = [{"chars": 20, "constant": _arm(900, 700, 9.0), "input": _arm(120, 30, 0.5)},
            {"chars": 170, "constant": _arm(900, 40, 1.0, entities=2), "input": _arm(700, 60, 1.5, parsed=False)}]
    s = summarise(rows)
    assert s["constant"]["max_tokens_max"] == 900 and s["constant"]["answer_tokens_max"] == 700
    assert s["constant"]["seconds_total"] == 10.0 and s["constant"]["entities"] == 3
    assert s["input"]["max_tokens_max"] == 700 and s["input"]["parse_rate"] == 0.5
    assert s["input"]["answer_tokens_mean"] == 45
