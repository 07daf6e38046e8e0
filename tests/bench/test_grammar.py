"""bench_grammar.py's arithmetic: the CPU share a schema limit allows, and the per-compilation summary."""

from __future__ import annotations

import pytest

from bench.bench_grammar import cpu_share, summarise


def test_cpu_share_of_a_schema_limit() -> None:
    assert cpu_share(600, 50.0, 2) == pytest.approx(0.25)  # 600 x 50 ms a minute on 2 cores
    assert cpu_share(60, 50.0, 2) == pytest.approx(0.025)
    assert cpu_share(0, 50.0, 2) == 0


def test_summary_of_compilations() -> None:
    rows = [{"wall_ms": float(w), "cpu_ms": float(2 * w), "memory_bytes": 1000 * w} for w in range(1, 21)]
    s = summarise(rows)
    assert s["wall_ms"]["median"] == 10.5 and s["wall_ms"]["max"] == 20 and s["wall_ms"]["p95"] == 19
    assert s["cpu_ms"]["median"] == 21 and s["memory_bytes"]["max"] == 20000
