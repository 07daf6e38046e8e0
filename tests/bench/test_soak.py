"""The soak benchmark's pure parts: windows over phases, per-window aggregates, sample growth, the pass checks."""

from __future__ import annotations

import pytest

from bench.analysis import growth, sample_stats, window_aggregates, windows
from bench.bench_soak import GOOD, capacity_record, checks, derive, expected, plan, plot, report, summarise

PHASES = plan([("warmup", 4.0, 60), ("soak", 4.0, 600), ("overload", 12.0, 120), ("recovery", 4.0, 120)])
SETTLE = 30.0
EXPECTED = {"extract": "OK", "batch": "OK", "evaluate": "OK", "bad": "INVALID_ARGUMENT", "cancel": "CANCELLED",
            "deadline": "DEADLINE_EXCEEDED"}


def _rows(step: float = 0.5, rejected: bool = True) -> list[dict]:
    """Every ``step`` seconds a request of the next kind, ending as it should, good ones in 1 s; with
    ``rejected``, every other request of the overload gets RESOURCE_EXHAUSTED (the queue is full)."""
    rows, kinds = [], list(EXPECTED)
    for p in PHASES:
        t, i = p["start"], 0
        while t < p["end"]:
            kind = kinds[i % len(kinds)]
            code = "RESOURCE_EXHAUSTED" if rejected and p["name"] == "overload" and i % 2 else EXPECTED[kind]
            rows.append({"t": t, "phase": p["name"], "kind": kind, "code": code,
                         "latency": 1.0 if kind in GOOD else 0.05})
            t, i = t + step, i + 1
    return rows


def _samples(server=lambda t: 1000.0, engine=lambda t: 3000.0, fds=lambda t: 100) -> list[dict]:
    out = []
    for t in range(0, int(PHASES[-1]["end"]), 5):
        s = {"t": float(t), "server_rss_mb": server(t), "engine_rss_mb": engine(t), "fds": fds(t), "inflight": 5.0}
        s["total_rss_mb"] = s["server_rss_mb"] + s["engine_rss_mb"]
        out.append(s)
    return out


def _by_name(cs: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in cs}


def test_plan_lays_phases_end_to_end_and_drops_empty_ones():
    p = plan([("warmup", 4, 20), ("soak", 4, 60), ("overload", 8, 0), ("recovery", 4, 30)])
    assert [(x["name"], x["start"], x["end"]) for x in p] == [("warmup", 0, 20), ("soak", 20, 80), ("recovery", 80, 110)]


def test_rates_and_queue_derive_from_the_capacity():
    assert derive(6.0) == {"capacity": 6.0, "rate": 4.0, "overload_rate": 12.0, "max_queue": 90}
    assert derive(3.0, rate=2.5, max_queue=0) == {"capacity": 3.0, "rate": 2.5, "overload_rate": 6.0, "max_queue": 0}
    assert derive(0.2)["max_queue"] == 8
    with pytest.raises(ValueError):
        derive(0)


def test_capacity_record_reads_the_rate_and_the_cpu(tmp_path):
    import json

    assert capacity_record(tmp_path / "none.json") is None
    (tmp_path / "c.json").write_text(json.dumps({"analysis": {"sustainable_rps": 6.0},
                                                 "machine": {"cpu": {"model": "Intel(R) Xeon(R) Processor"}}}))
    assert capacity_record(tmp_path / "c.json") == {"rps": 6.0, "cpu": "Intel(R) Xeon(R) Processor"}


def test_windows_restart_at_phase_boundaries():
    ws = windows(plan([("warmup", 1, 20), ("soak", 1, 130)]), 60)
    assert [(w["phase"], w["start"], w["end"]) for w in ws] == [
        ("warmup", 0, 20), ("soak", 20, 80), ("soak", 80, 140), ("soak", 140, 150)]
    with pytest.raises(ValueError):
        windows(PHASES, 0)


def test_window_aggregates_counts_codes_rates_and_percentiles():
    rows = [{"t": 1.0, "kind": "extract", "code": "OK", "latency": 1.0},
            {"t": 2.0, "kind": "extract", "code": "OK", "latency": 3.0},
            {"t": 3.0, "kind": "batch", "code": "OK", "latency": 9.5},  # completes in the next window
            {"t": 4.0, "kind": "bad", "code": "INVALID_ARGUMENT", "latency": 0.01},
            {"t": 5.0, "kind": "extract", "code": "UNAVAILABLE", "latency": 0.02}]
    a, b = window_aggregates(rows, [{"phase": "soak", "start": 0, "end": 10}, {"phase": "soak", "start": 10, "end": 20}],
                             GOOD)
    assert a["arrived"] == 5 and a["arrived_rps"] == 0.5
    assert a["kinds"] == {"extract": 3, "batch": 1, "bad": 1}
    assert a["codes"]["extract"] == {"OK": 2, "UNAVAILABLE": 1}
    assert a["completed_ok"] == 2 and b["completed_ok"] == 1  # by completion time, whatever the arrival
    assert a["good"]["p50"] == pytest.approx(3.0)  # OK good latencies 1, 3, 9.5; failures left out
    assert a["extract"]["p95"] == pytest.approx(1.0 + 0.95 * 2.0)
    assert b["arrived"] == 0 and b["good"] == {"p50": None, "p95": None, "p99": None}


def test_growth_compares_medians_of_the_first_and_last_window():
    samples = [{"t": t, "rss": 100.0 + (t >= 50) * 10 + (t == 0) * 1000} for t in range(0, 100, 5)]
    g = growth(samples, "rss", 0, 100, 20)
    assert g["first"] == 100.0  # the outlier at t = 0 does not move the median
    assert g["last"] == 110.0 and g["growth"] == 10.0 and g["growth_pct"] == pytest.approx(10.0)
    assert growth([], "rss", 0, 100, 20) == {"first": None, "last": None, "growth": None, "growth_pct": None}
    st = sample_stats(samples, 50, 100, ["rss", "missing"])
    assert st["samples"] == 10 and st["rss"] == {"median": 110.0, "max": 110.0}
    assert st["missing"] == {"median": None, "max": None}


def test_expected_codes_per_kind():
    def row(kind, code, latency=1.0):
        return {"kind": kind, "code": code, "latency": latency}

    assert expected(row("extract", "OK")) and not expected(row("extract", "DEADLINE_EXCEEDED"))
    assert not expected(row("batch", "RESOURCE_EXHAUSTED"))
    assert expected(row("evaluate", "RESOURCE_EXHAUSTED"), overloaded=True)
    assert not expected(row("extract", "DEADLINE_EXCEEDED"), overloaded=True)  # only admission control is allowed
    assert expected(row("bad", "INVALID_ARGUMENT")) and not expected(row("bad", "OK"))
    assert expected(row("cancel", "CANCELLED")) and not expected(row("cancel", "INTERNAL"))
    assert expected(row("deadline", "DEADLINE_EXCEEDED"))
    assert expected(row("deadline", "OK", latency=0.03)) and not expected(row("deadline", "OK", latency=0.2))
    with pytest.raises(ValueError):
        expected(row("other", "OK"))


def test_a_clean_run_passes_every_check():
    data = summarise(_rows(), _samples(), PHASES, bucket=60, settle=SETTLE, max_queue=96)
    assert data["passed"], [c for c in data["checks"] if c["passed"] is False]
    cs = _by_name(data["checks"])
    assert cs["soak_failed_good"]["value"] == 0
    assert cs["rss_growth_server"]["value"] == pytest.approx(0.0)
    assert cs["latency_flat"]["value"] == pytest.approx(1.0)
    assert cs["overload_rejected"]["value"] == 120  # every other one of 120 s at 2 requests/s
    assert cs["recovery_rss"]["passed"] is None  # informational
    assert [w["phase"] for w in data["windows"]].count("soak") == 10
    assert data["windows"][0]["samples"]["server_rss_mb"]["median"] == 1000.0
    assert [p["phase"] for p in data["per_phase"]] == ["warmup", "soak", "overload", "recovery"]


def test_a_failed_good_request_in_the_soak_fails_but_not_in_the_warmup():
    rows = _rows()
    first_soak = next(r for r in rows if r["phase"] == "soak" and r["kind"] == "batch")
    first_soak["code"] = "INTERNAL"
    next(r for r in rows if r["phase"] == "warmup" and r["kind"] == "extract")["code"] = "INTERNAL"
    cs = _by_name(checks(rows, _samples(), PHASES, SETTLE, 96))
    assert cs["soak_failed_good"]["passed"] is False
    assert cs["soak_failed_good"]["value"] == 1 and cs["soak_failed_good"]["detail"] == {"batch:INTERNAL": 1}
    rows = _rows()
    next(r for r in rows if r["phase"] == "soak" and r["kind"] == "cancel")["code"] = "OK"  # 0.05 s: before the cancel
    next(r for r in rows if r["phase"] == "soak" and r["kind"] == "bad")["code"] = "OK"
    cs = _by_name(checks(rows, _samples(), PHASES, SETTLE, 96))
    assert cs["soak_failed_good"]["passed"] and cs["soak_unexpected"]["detail"] == {"bad:OK": 1}


def test_resource_exhausted_is_allowed_in_the_overload_and_the_settle_period_only():
    rows = _rows()
    rec = next(p for p in PHASES if p["name"] == "recovery")
    early = next(r for r in rows if r["phase"] == "recovery" and r["kind"] == "extract")
    early["code"] = "RESOURCE_EXHAUSTED"
    cs = _by_name(checks(rows, _samples(), PHASES, SETTLE, 96))
    assert cs["overload_failed_good"]["passed"] and cs["overload_unexpected"]["passed"]
    assert cs["overload_rejected"]["passed"] and cs["overload_rejected"]["value"] > 0
    assert cs["recovery_failed_good"]["passed"]
    late = next(r for r in rows if r["phase"] == "recovery" and r["kind"] == "extract" and r["t"] >= rec["start"] + SETTLE)
    late["code"] = "RESOURCE_EXHAUSTED"
    next(r for r in rows if r["phase"] == "overload" and r["kind"] == "extract" and r["code"] == "OK")["code"] = \
        "DEADLINE_EXCEEDED"
    next(r for r in rows if r["phase"] == "soak" and r["kind"] == "extract")["code"] = "RESOURCE_EXHAUSTED"
    cs = _by_name(checks(rows, _samples(), PHASES, SETTLE, 96))
    assert cs["recovery_failed_good"]["passed"] is False
    assert cs["overload_failed_good"]["detail"] == {"extract:DEADLINE_EXCEEDED": 1}
    assert cs["soak_failed_good"]["detail"] == {"extract:RESOURCE_EXHAUSTED": 1}


def test_no_rejection_in_the_overload_fails_its_check():
    cs = _by_name(checks(_rows(rejected=False), _samples(), PHASES, SETTLE, 96))
    assert cs["overload_rejected"]["value"] == 0 and cs["overload_rejected"]["passed"] is False


def test_rss_growth_fd_growth_and_memory_bound():
    soak = next(p for p in PHASES if p["name"] == "soak")
    # The server's RSS climbs 6% over the soak; the engine's stays flat; one fd more from the middle of the soak.
    # Medians of the samples every 5 s in the soak's first and last minute: 1002.75 and 1056.75 MB.
    server = lambda t: 1000.0 + 60.0 * min(max(t - soak["start"], 0), 600) / 600  # noqa: E731
    fds = lambda t: 100 + (t > soak["start"] + 300)  # noqa: E731
    engine = lambda t: 3000.0 + 1000.0 * (660 <= t < 780)  # noqa: E731 - +1 GB during the overload
    cs = _by_name(checks(_rows(), _samples(server, engine, fds), PHASES, SETTLE, 96))
    g = cs["rss_growth_server"]
    assert g["passed"] is False and g["value"] == pytest.approx(100 * 54 / 1002.75)
    assert cs["rss_growth_engine"]["passed"] and cs["rss_growth_engine"]["value"] == 0.0
    assert cs["fd_growth"]["value"] == 1 and cs["fd_growth"]["passed"] is False
    m = cs["overload_memory"]
    assert m["passed"] is False and m["value"] == pytest.approx(100 * (5060 / 4059.5 - 1))  # soak peak at t = 655 s


def test_latency_that_climbs_over_the_soak_is_not_flat():
    rows = _rows()
    for r in rows:
        if r["phase"] == "soak" and r["kind"] == "extract" and r["t"] > 500:
            r["latency"] = 2.0
    cs = _by_name(checks(rows, _samples(), PHASES, SETTLE, 96))
    assert cs["latency_flat"]["value"] == pytest.approx(2.0) and cs["latency_flat"]["passed"] is False
    assert cs["recovery_latency"]["passed"]  # the soak's p95 over all of it is 2 s, recovery 1 s


def test_report_and_plot_render_from_the_summary(tmp_path):
    rows = _rows()
    data = {"model": "default", "phases": PHASES, "machine": {"cpu": {"cores": 2, "model": "Test CPU", "flags": ["avx2"]}},
            "settings": {"command": "python bench/bench_soak.py", "sentences": "synthetic", "max_queue": 96,
                         "weights": {"extract": 0.62, "bad": 0.38}, "batch_texts": 4, "eval_examples": 6,
                         "cancel_after_s": 0.05, "short_deadline_s": 0.05, "sample_seconds": 5,
                         "growth_window_s": 60, "flat_window_s": 200, "rate": 4.0, "overload_rate": 12.0,
                         "capacity": 6.0, "texts_per_request": 0.98, "capacity_from": "bench/results/capacity.json",
                         "capacity_cpu": "Other CPU"},
            "server": {"model_info": {"model_name": "m"}},
            **summarise(rows, _samples(), PHASES, bucket=60, settle=SETTLE, max_queue=96)}
    text = report(data, tmp_path / "soak.md").read_text()
    assert "## Verdict: PASS" in text and "2-core Test CPU" in text and "![" in text
    assert "| overload | extract |" in text
    assert "measured on another CPU (Other CPU)" in text
    assert "median 1000 MB → 1000 MB" in text and "| 120 | ≥ 1 | pass |" in text
    plot(data, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"
