"""Soak and overload of one nerve replica: a long mixed load at ~70% of capacity, then twice capacity, then recovery.

A `nerve serve` process (the real default model) receives open-loop Poisson arrivals in four phases:

* ``warmup`` (default 120 s at ``--rate``): excluded from every check;
* ``soak`` (default 1800 s at ``--rate``, two thirds of ``--capacity``: 4.0 requests/s): the capacity
  benchmark measured 6 single-Extract requests/s sustainable (bench/results/capacity.json, the default of
  ``--capacity``), and the mix below carries about one text per request (0.98 on average), so 4.0
  requests/s is 3.9 texts/s, 65% of that capacity, plus the partial work of the cancelled and expired calls:
  about 70%. The capacity belongs to the machine it was measured on: on another one (the script warns when
  capacity.json names another CPU) measure it there with bench_capacity.py and pass ``--capacity``;
* ``overload`` (default 300 s at ``--overload-rate``, 2 x ``--capacity`` = 12 requests/s): twice capacity;
* ``recovery`` (default 180 s at ``--rate``): the first ``--settle`` seconds drain the overload's backlog.

Each arrival picks a kind by fixed weights:

=========  ======  ====================================================================  ==================
kind       weight  request                                                               expected status
=========  ======  ====================================================================  ==================
extract    0.62    Extract of one sentence, deadline 30 s                                OK
batch      0.06    ExtractBatch of 4 sentences, deadline 60 s                            OK
evaluate   0.02    Evaluate of 6 inline gold examples (config, then examples), 120 s     OK, a final report
bad        0.10    whitespace-only text / an invalid label name / an empty batch text    INVALID_ARGUMENT
cancel     0.10    Extract cancelled by the client after 50 ms                           CANCELLED
deadline   0.10    Extract with a 50 ms deadline                                         DEADLINE_EXCEEDED
=========  ======  ====================================================================  ==================

extract, batch and evaluate are the *good* requests. In the overload phase (and the recovery's settle period)
RESOURCE_EXHAUSTED is allowed for every kind: that is the admission control. Sentences cycle through CLUENER
dev and CoNLL-2003 testb interleaved (4,796 sentences: a sentence comes back only after its prompt left the
prefix cache), or a few synthetic sentences without the shared datasets.

Every ``--sample-seconds`` a sampler records the RSS of the server process and of its children (the vLLM
engine core and its helpers) separately, their open file descriptors, and the server's in-flight and queued
texts from its Prometheus /metrics. The server's queue is set to ``--max-queue`` texts (default: what the
capacity drains in half the 30 s extract deadline, 90 for 6 requests/s, so that an admitted request is
served before its deadline and only requests beyond the queue are refused; 0 keeps the server's default of
256, which 6 requests/s drain in ~43 s).

Checks (thresholds in ``THRESHOLDS``): no failed good request in the soak; RSS of server and engine grown by
at most 5% from the soak's first minute to its last; no fd growth; extract p95 of the soak's last 5 minutes
at most 1.25 x that of its first 5; in the overload only OK or RESOURCE_EXHAUSTED for good requests, some
RESOURCE_EXHAUSTED, at most 10% more memory than the soak's peak, in-flight texts within the queue; in the
recovery no failed good request, extract p95 after the settle period at most 1.25 x the soak's, no fd growth.

Run (40 minutes plus the model load):
``python bench/bench_soak.py`` (``--capacity 6 --warmup 120 --soak 1800 --overload 300 --recovery 180``).
Smoke (~3 minutes): ``python bench/bench_soak.py --warmup 20 --soak 60 --overload 30 --recovery 30
--bucket-seconds 10 --settle 10 --out runs/soak-smoke.json --report runs/soak-smoke.md``.
Writes bench/results/soak.json (per-window aggregates and the checks), runs/soak-raw.jsonl (one line per
request, one per sample) and bench/reports/soak.md + soak.png; ``--report-only`` rewrites the report from
the results file alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.analysis import growth, sample_stats, window_aggregates, windows  # noqa: E402
from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REPORTS = ROOT / "bench" / "reports"

KINDS = ("extract", "batch", "evaluate", "bad", "cancel", "deadline")
WEIGHTS = (0.62, 0.06, 0.02, 0.10, 0.10, 0.10)
GOOD = ("extract", "batch", "evaluate")
BATCH_TEXTS = 4
EVAL_EXAMPLES = 6
TIMEOUTS = {"extract": 30.0, "batch": 60.0, "evaluate": 120.0, "cancel": 30.0}
CANCEL_AFTER = 0.05  # seconds after the start of a cancelled call
SHORT_DEADLINE = 0.05  # seconds: the deadline kind's deadline
RE = "RESOURCE_EXHAUSTED"
TEXTS_PER_REQUEST = sum(w * {"extract": 1, "batch": BATCH_TEXTS, "evaluate": EVAL_EXAMPLES}.get(k, 0)
                        for k, w in zip(KINDS, WEIGHTS, strict=True))
SAMPLE_KEYS = ("server_rss_mb", "engine_rss_mb", "total_rss_mb", "server_fds", "engine_fds", "fds", "inflight",
               "queued")
THRESHOLDS = {"rss_growth_pct": 5.0, "fd_growth": 0, "latency_ratio": 1.25, "overload_memory_pct": 10.0}
GROWTH_WINDOW = 60.0  # seconds at each end of the soak whose sample medians the growth checks compare
FLAT_WINDOW = 300.0  # seconds at each end of the soak whose extract p95 the flatness check compares


# ---------------------------------------------------------------------------------------------- pure parts


def plan(durations: Sequence[tuple[str, float, float]]) -> list[dict[str, Any]]:
    """Phases ``(name, rate, seconds)`` laid end to end from t = 0; phases of 0 seconds are left out."""
    out, t = [], 0.0
    for name, rate, seconds in durations:
        if seconds > 0:
            out.append({"name": name, "rate": rate, "start": t, "end": t + seconds})
            t += seconds
    return out


def derive(capacity: float, rate: float | None = None, overload_rate: float | None = None,
           max_queue: int | None = None) -> dict[str, Any]:
    """The run's rates and queue from the machine's capacity (single-Extract requests/s): soak at two thirds
    of it (the mix carries ~1 text a request), overload at twice it, and a queue of what the capacity drains
    in half the extract deadline, so that an admitted text is served in time and only texts beyond the queue
    are refused (0 keeps the server's default). Explicit values win."""
    if capacity <= 0:
        raise ValueError("capacity must be positive")
    queue = max(8, int(capacity * TIMEOUTS["extract"] / 2)) if max_queue is None else max_queue
    return {"capacity": capacity, "rate": rate or round(capacity * 2 / 3, 2),
            "overload_rate": overload_rate or 2 * capacity, "max_queue": queue}


def capacity_record(path: Path) -> dict[str, Any] | None:
    """The sustainable rate of a capacity results file and the CPU it was measured on, if there is one."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    rps = data.get("analysis", {}).get("sustainable_rps")
    return {"rps": rps, "cpu": data.get("machine", {}).get("cpu", {}).get("model")} if rps else None


def _phase(phases: Sequence[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((p for p in phases if p["name"] == name), None)


def expected(row: dict[str, Any], overloaded: bool = False) -> bool:
    """Whether a request ended as its kind should: good requests OK; ``bad`` INVALID_ARGUMENT; ``cancel``
    CANCELLED (or OK when it finished before the cancel could act); ``deadline`` DEADLINE_EXCEEDED (or OK
    within its deadline). ``overloaded`` (the overload phase and the recovery's settle period) also allows
    RESOURCE_EXHAUSTED, the admission control's answer."""
    kind, code = row["kind"], row["code"]
    if overloaded and code == RE:
        return True
    if kind in GOOD:
        return code == "OK"
    if kind == "bad":
        return code == "INVALID_ARGUMENT"
    if kind == "cancel":
        return code == "CANCELLED" or (code == "OK" and row["latency"] <= CANCEL_AFTER + 0.05)
    if kind == "deadline":
        return code == "DEADLINE_EXCEEDED" or (code == "OK" and row["latency"] <= SHORT_DEADLINE)
    raise ValueError(f"unknown request kind {kind!r}")


def overloaded_at(row: dict[str, Any], phases: Sequence[dict[str, Any]], settle: float) -> bool:
    """The overload phase, and the first ``settle`` seconds of the recovery (the backlog still drains)."""
    if row["phase"] == "overload":
        return True
    rec = _phase(phases, "recovery")
    return row["phase"] == "recovery" and rec is not None and row["t"] < rec["start"] + settle


def _p95(rows: Sequence[dict[str, Any]], lo: float, hi: float, kind: str = "extract") -> float | None:
    from nerve.reports import percentile

    lat = [r["latency"] for r in rows if r["kind"] == kind and r["code"] == "OK" and lo <= r["t"] < hi]
    return percentile(lat, 95) if lat else None


def _check(name: str, what: str, value: float | None, op: str, threshold: float | None, unit: str = "",
           detail: Any = None) -> dict[str, Any]:
    """One pass check; ``passed`` is None when there is nothing to measure or no threshold (informational)."""
    if value is None or threshold is None:
        passed = None
    else:
        passed = value <= threshold if op == "<=" else value >= threshold
    return {"name": name, "what": what, "value": value, "op": op, "threshold": threshold, "unit": unit,
            "passed": passed, "detail": detail}


def _failures(rows: Sequence[dict[str, Any]], phases: Sequence[dict[str, Any]], settle: float,
              kinds: Sequence[str]) -> dict[str, int]:
    """``kind:code`` counts of the rows of ``kinds`` that did not end as expected."""
    return dict(Counter(f"{r['kind']}:{r['code']}" for r in rows
                        if r["kind"] in kinds and not expected(r, overloaded_at(r, phases, settle))))


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def checks(rows: Sequence[dict[str, Any]], samples: Sequence[dict[str, Any]], phases: Sequence[dict[str, Any]],
           settle: float, max_queue: int | None, thresholds: dict[str, float] = THRESHOLDS) -> list[dict[str, Any]]:
    """The pass checks with their measured values (see the module docstring); a phase not run has none."""
    th = thresholds
    others = ("bad", "cancel", "deadline")
    out: list[dict[str, Any]] = []
    soak, over, rec = (_phase(phases, n) for n in ("soak", "overload", "recovery"))
    if soak is not None:
        rs = [r for r in rows if r["phase"] == "soak"]
        failed = _failures(rs, phases, settle, GOOD)
        out.append(_check("soak_failed_good", "failed good requests in the soak", sum(failed.values()), "<=", 0,
                          detail=failed))
        wrong = _failures(rs, phases, settle, others)
        out.append(_check("soak_unexpected", "bad/cancel/deadline requests with an unexpected code in the soak",
                          sum(wrong.values()), "<=", 0, detail=wrong))
        w = min(GROWTH_WINDOW, (soak["end"] - soak["start"]) / 4)
        for key, label in (("server_rss_mb", "server"), ("engine_rss_mb", "engine")):
            g = growth(samples, key, soak["start"], soak["end"], w)
            out.append(_check(f"rss_growth_{label}", f"RSS growth of the {label} over the soak", g["growth_pct"], "<=",
                              th["rss_growth_pct"], "%", detail=g))
        g = growth(samples, "fds", soak["start"], soak["end"], w)
        out.append(_check("fd_growth", "open fds (server + engine) growth over the soak", g["growth"], "<=",
                          th["fd_growth"], "fds", detail=g))
        lw = min(FLAT_WINDOW, (soak["end"] - soak["start"]) / 3)
        first, last = _p95(rs, soak["start"], soak["start"] + lw), _p95(rs, soak["end"] - lw, soak["end"])
        out.append(_check("latency_flat", "extract p95: last vs first part of the soak", _ratio(last, first), "<=",
                          th["latency_ratio"], "x", detail={"window_s": lw, "first_p95": first, "last_p95": last}))
    if over is not None:
        ro = [r for r in rows if r["phase"] == "overload"]
        failed = _failures(ro, phases, settle, GOOD)
        codes = dict(Counter(r["code"] for r in ro))
        out.append(_check("overload_failed_good", "good requests in the overload ending neither OK nor"
                          " RESOURCE_EXHAUSTED", sum(failed.values()), "<=", 0, detail=failed))
        wrong = _failures(ro, phases, settle, others)
        out.append(_check("overload_unexpected", "bad/cancel/deadline requests with an unexpected code in the overload",
                          sum(wrong.values()), "<=", 0, detail=wrong))
        out.append(_check("overload_rejected", "RESOURCE_EXHAUSTED answers in the overload (the queue was full)",
                          codes.get(RE, 0), ">=", 1, detail=codes))
        so = sample_stats(samples, soak["start"], soak["end"], ["total_rss_mb"]) if soak else None
        ov = sample_stats(samples, over["start"], over["end"], ["total_rss_mb", "inflight"])
        peak_soak = so["total_rss_mb"]["max"] if so else None
        peak_over = ov["total_rss_mb"]["max"]
        pct = None if peak_soak is None or peak_over is None else 100.0 * (peak_over / peak_soak - 1)
        out.append(_check("overload_memory", "peak RSS (server + engine) in the overload vs the soak's peak", pct, "<=",
                          th["overload_memory_pct"], "%", detail={"soak_peak_mb": peak_soak, "overload_peak_mb": peak_over}))
        out.append(_check("overload_inflight", "most texts in flight in the overload (server gauge) vs the queue",
                          ov["inflight"]["max"], "<=", max_queue, "texts"))
    if rec is not None:
        rr = [r for r in rows if r["phase"] == "recovery"]
        failed = _failures(rr, phases, settle, GOOD)
        out.append(_check("recovery_failed_good", f"failed good requests in the recovery (RESOURCE_EXHAUSTED allowed in"
                          f" its first {settle:g} s)", sum(failed.values()), "<=", 0, detail=failed))
        after = _p95(rr, rec["start"] + settle, rec["end"])
        base = _p95([r for r in rows if r["phase"] == "soak"], soak["start"], soak["end"]) if soak else None
        out.append(_check("recovery_latency", f"extract p95 of the recovery after {settle:g} s vs the soak's",
                          _ratio(after, base), "<=", th["latency_ratio"], "x",
                          detail={"recovery_p95": after, "soak_p95": base}))
        if soak is not None:
            w = min(GROWTH_WINDOW, (soak["end"] - soak["start"]) / 4, (rec["end"] - rec["start"]) / 2)
            end_soak = sample_stats(samples, soak["end"] - w, soak["end"], ["fds", "total_rss_mb"])
            end_rec = sample_stats(samples, rec["end"] - w, rec["end"], ["fds", "total_rss_mb"])
            a, b = end_soak["fds"]["median"], end_rec["fds"]["median"]
            out.append(_check("recovery_fds", "open fds at the end of the recovery vs the end of the soak",
                              None if a is None or b is None else b - a, "<=", th["fd_growth"], "fds"))
            a, b = end_soak["total_rss_mb"]["median"], end_rec["total_rss_mb"]["median"]
            out.append(_check("recovery_rss", "RSS (server + engine) at the end of the recovery vs the end of the soak"
                              " (informational)", None if a is None or b is None else 100.0 * (b / a - 1), "<=",
                              None, "%", detail={"end_of_soak_mb": a, "end_of_recovery_mb": b}))
    return out


def summarise(rows: Sequence[dict[str, Any]], samples: Sequence[dict[str, Any]], phases: Sequence[dict[str, Any]],
              bucket: float, settle: float, max_queue: int | None) -> dict[str, Any]:
    """Per-window and per-phase aggregates, the checks and the verdict: what the results file holds."""
    spans = window_aggregates(rows, windows(phases, bucket), GOOD)
    for w in spans:
        w["samples"] = sample_stats(samples, w["start"], w["end"], SAMPLE_KEYS)
    per_phase = window_aggregates(rows, [{"phase": p["name"], "start": p["start"], "end": p["end"]} for p in phases],
                                  GOOD)
    for p, agg in zip(phases, per_phase, strict=True):
        agg["rate"] = p["rate"]
        agg["samples"] = sample_stats(samples, p["start"], p["end"], SAMPLE_KEYS)
    cs = checks(rows, samples, phases, settle, max_queue)
    return {"windows": spans, "per_phase": per_phase, "checks": cs,
            "passed": all(c["passed"] is not False for c in cs)}


# ------------------------------------------------------------------------------------------ the load run


def load_examples() -> tuple[list[Any], str]:
    """CLUENER dev and CoNLL-2003 testb interleaved (then the rest of the longer one), or synthetic examples."""
    from nerve.ner.readers import read_dataset
    from nerve.ner.types import Entity, Example
    from nerve.paths import datasets_dir

    d = datasets_dir()
    if d is not None:
        a = read_dataset(d / "cluener" / "dev.jsonl")
        b = read_dataset(d / "conll2003" / "eng.testb")
        mixed = [x for pair in zip(a, b, strict=False) for x in pair]
        mixed += a[len(b):] + b[len(a):]
        return mixed, f"CLUENER dev ({len(a)}) and CoNLL-2003 testb ({len(b)}) interleaved"

    def ex(text: str, *spans: tuple[str, str]) -> Example:
        ents = [Entity(text.index(s), text.index(s) + len(s), label, s) for s, label in spans]
        return Example(text, sorted(ents, key=lambda e: e.start))

    synthetic = [ex("Peter Blackburn met officials of the European Commission in Brussels on Friday .",
                    ("Peter Blackburn", "person"), ("European Commission", "organization"), ("Brussels", "location")),
                 ex("浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。",
                    ("浙商银行", "company"), ("叶老桂", "name")),
                 ex("EU rejects German call to boycott British lamb .", ("EU", "organization")),
                 ex("温格的球队终于又踢了一场经典的比赛，2比1战胜曼联之后枪手仍然留在了夺冠集团之内。",
                    ("温格", "name"), ("曼联", "organization"))]
    return synthetic, "synthetic sentences (the shared datasets are not available)"


class Source:
    """Examples in order, round and round."""

    def __init__(self, examples: Sequence[Any]):
        self.examples, self.i = list(examples), 0

    def take(self, n: int) -> list[Any]:
        out = [self.examples[(self.i + k) % len(self.examples)] for k in range(n)]
        self.i += n
        return out


class Stubs:
    """The calls' stubs: grpc.aio for the unary calls; the sync API, in threads, for Evaluate.

    grpc.aio misreports a client-streaming call that the server ends before the client has sent everything:
    a write issued after the server's status overwrites that status with ``INTERNAL: Internal error from
    Core`` (grpc/grpc#36066, open; fix proposed in grpc/grpc#43486). An Evaluate refused with
    RESOURCE_EXHAUSTED while its examples are still being written would be counted as INTERNAL, a server bug
    it is not. The sync API reports the server's status."""

    def __init__(self, aio: Any, sync: Any, pool: Any):
        self.aio, self.sync, self.pool = aio, sync, pool


def _evaluate_sync(stub: Any, msgs: list[Any]) -> tuple[str, str | None]:
    import grpc

    try:
        responses = list(stub.Evaluate(iter(msgs), timeout=TIMEOUTS["evaluate"]))
    except grpc.RpcError as exc:
        return _code(exc.code().name, exc.details())
    if not any(r.HasField("report") for r in responses):
        return "NO_REPORT", "the response stream ended OK without a report"
    return "OK", None


def _code(code: str, details: str | None) -> tuple[str, str | None]:
    """The code's name, with the details kept for a code no request of the mix is meant to get."""
    usual = {"OK", "INVALID_ARGUMENT", "CANCELLED", "DEADLINE_EXCEEDED", RE}
    return code, None if code in usual else (details or "")[:300]


async def one(stubs: Stubs, kind: str, source: Source, variant: int) -> tuple[str, str | None]:
    """Send one request of ``kind``; return its status code's name, and the error's details for a code no
    request of the mix is meant to get (INTERNAL, UNKNOWN, UNAVAILABLE, ...)."""
    import grpc
    from nerve_client.pb import service_pb2 as spb
    from nerve_client.pb import types_pb2 as tpb

    stub = stubs.aio
    try:
        if kind == "extract":
            await stub.Extract(spb.ExtractRequest(text=source.take(1)[0].text), timeout=TIMEOUTS["extract"])
        elif kind == "batch":
            req = spb.ExtractBatchRequest(texts=[e.text for e in source.take(BATCH_TEXTS)])
            resp = await stub.ExtractBatch(req, timeout=TIMEOUTS["batch"])
            if len(resp.results) != BATCH_TEXTS:
                return "WRONG_ANSWER", f"{len(resp.results)} results for {BATCH_TEXTS} texts"
        elif kind == "evaluate":
            msgs = [spb.EvaluateRequest(config=spb.EvaluateConfig(
                inline_examples=spb.InlineSource(expected_examples=EVAL_EXAMPLES)))]
            for e in source.take(EVAL_EXAMPLES):
                msgs.append(spb.EvaluateRequest(example=tpb.Example(
                    text=e.text, id=e.id or "",
                    entities=[tpb.Entity(label=x.label, text=x.text, start=x.start, end=x.end) for x in e.entities])))
            return await asyncio.get_running_loop().run_in_executor(stubs.pool, _evaluate_sync, stubs.sync, msgs)
        elif kind == "bad":
            if variant % 3 == 0:
                await stub.Extract(spb.ExtractRequest(text=" \t\n "), timeout=10)
            elif variant % 3 == 1:
                await stub.Extract(spb.ExtractRequest(text=source.take(1)[0].text, labels=["not a label!"]), timeout=10)
            else:
                await stub.ExtractBatch(spb.ExtractBatchRequest(texts=[source.take(1)[0].text, ""]), timeout=10)
        elif kind == "cancel":
            call = stub.Extract(spb.ExtractRequest(text=source.take(1)[0].text), timeout=TIMEOUTS["cancel"])
            await asyncio.sleep(CANCEL_AFTER)
            call.cancel()
            return _code((await call.code()).name, await call.details())
        elif kind == "deadline":
            await stub.Extract(spb.ExtractRequest(text=source.take(1)[0].text), timeout=SHORT_DEADLINE)
        else:
            raise ValueError(kind)
    except grpc.aio.AioRpcError as exc:
        return _code(exc.code().name, exc.details())
    return "OK", None


def take_sample(pid: int, metrics_url: str | None) -> dict[str, Any]:
    """RSS and fds of the server and of its children together, and the server's queue gauges."""
    import urllib.request

    import psutil

    p = psutil.Process(pid)
    s: dict[str, Any] = {"server_rss_mb": p.memory_info().rss / 2**20, "server_fds": p.num_fds()}
    rss = fds = n = 0
    for c in p.children(recursive=True):
        try:
            rss += c.memory_info().rss
            fds += c.num_fds()
            n += 1
        except psutil.NoSuchProcess:
            continue
    s.update(engine_rss_mb=rss / 2**20, engine_fds=fds, children=n)
    s["total_rss_mb"] = s["server_rss_mb"] + s["engine_rss_mb"]
    s["fds"] = s["server_fds"] + fds
    s["inflight"] = s["queued"] = None
    if metrics_url:
        try:
            with urllib.request.urlopen(metrics_url, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return s
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "nerve_inflight_requests":
                s["inflight"] = float(value)
            elif name == "nerve_queued_requests":
                s["queued"] = float(value)
    return s


class Run:
    """One load run against a server process: arrivals, samples, progress lines, raw rows on disk."""

    def __init__(self, proc: subprocess.Popen, stubs: Stubs, phases: list[dict[str, Any]], source: Source,
                 raw, args: argparse.Namespace, metrics_url: str | None):
        self.proc, self.stubs, self.phases, self.source, self.raw, self.args = proc, stubs, phases, source, raw, args
        self.metrics_url = metrics_url
        self.rows: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.lags: list[float] = []
        self.sent = 0
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def phase_at(self, t: float) -> str:
        for p in self.phases:
            if p["start"] <= t < p["end"]:
                return p["name"]
        return "drain"

    async def request(self, kind: str, phase: str, t: float, variant: int) -> None:
        start = self.now()
        self.lags.append(start - t)
        code, detail = await one(self.stubs, kind, self.source, variant)
        row = {"t": round(t, 4), "phase": phase, "kind": kind, "code": code, "latency": round(self.now() - start, 4)}
        if detail is not None:
            row["detail"] = detail
        self.rows.append(row)
        self.raw.write(json.dumps({"request": row}) + "\n")

    async def arrivals(self) -> None:
        rng = random.Random(self.args.seed)
        tasks: set[asyncio.Task] = set()
        variant = 0
        for p in self.phases:
            t = p["start"] + rng.expovariate(p["rate"])
            while t < p["end"]:
                await asyncio.sleep(max(0.0, t - self.now()))
                kind = rng.choices(KINDS, WEIGHTS)[0]
                variant += kind == "bad"
                task = asyncio.ensure_future(self.request(kind, p["name"], t, variant))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                t += rng.expovariate(p["rate"])
        if tasks:
            await asyncio.wait(tasks)

    async def sampler(self, stop: asyncio.Event) -> None:
        last_print, printed = 0.0, 0
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode} during the run")
            s = await asyncio.to_thread(take_sample, self.proc.pid, self.metrics_url)
            s["t"] = round(self.now(), 3)
            self.samples.append(s)
            self.raw.write(json.dumps({"sample": s}) + "\n")
            if s["t"] - last_print >= self.args.bucket_seconds or stop.is_set():
                printed = self.progress(s, last_print, printed)
                last_print = s["t"]
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), self.args.sample_seconds)
            except TimeoutError:
                pass

    def progress(self, s: dict[str, Any], since: float, printed: int) -> int:
        from nerve.reports import percentile

        new = self.rows[printed:]
        codes = Counter(r["code"] for r in new)
        lat = [r["latency"] for r in new if r["kind"] in GOOD and r["code"] == "OK"]
        p95 = f"{percentile(lat, 95):5.2f}s" if lat else "    -"
        inflight = "-" if s["inflight"] is None else f"{s['inflight']:.0f}"
        print(f"[{s['t']:7.0f}s {self.phase_at(s['t']):9}] sent {self.sent:6d} done {len(self.rows):6d}"
              f" good p95 {p95} | {dict(codes.most_common())} | rss server {s['server_rss_mb']:.0f} MB"
              f" engine {s['engine_rss_mb']:.0f} MB fds {s['fds']} inflight {inflight}", flush=True)
        self.raw.flush()
        return len(self.rows)

    async def go(self) -> None:
        self.t0 = time.perf_counter()
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(self.sampler(stop))
        load = asyncio.ensure_future(self.arrivals())
        done, _ = await asyncio.wait({sampler, load}, return_when=asyncio.FIRST_COMPLETED)
        if sampler in done:  # the server died: stop sending
            load.cancel()
            sampler.result()
        stop.set()
        await sampler


async def measure(args: argparse.Namespace, phases: list[dict[str, Any]], examples: list[Any],
                  raw_path: Path) -> dict[str, Any]:
    import grpc
    from nerve_client import AsyncClient
    from nerve_client.pb import service_pb2 as spb
    from nerve_client.pb import service_pb2_grpc

    from bench.bench_service import free_port

    port, mport = free_port(), free_port()
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = raw_path.with_name(raw_path.name.replace("-raw.jsonl", "") + "-server.log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["NERVE_MAX_CONCURRENT_EVALUATIONS"] = str(args.max_evaluations)
    if args.max_queue:
        env["NERVE_MAX_QUEUE"] = str(args.max_queue)
        if args.max_queue < 64:  # the server refuses a batch limit above its queue (default 64 texts)
            env["NERVE_MAX_BATCH_TEXTS"] = str(args.max_queue)
    log = open(log_path, "w")
    t_start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nerve.cli", "serve", "--model", args.model, "--port", str(port),
                             "--metrics-port", str(mport)], stdout=log, stderr=subprocess.STDOUT, env=env)
    info: dict[str, Any] = {"server_log": str(log_path.relative_to(ROOT) if log_path.is_relative_to(ROOT) else log_path)}
    try:
        async with AsyncClient(f"127.0.0.1:{port}", timeout=60, retries=0) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with status {proc.returncode} while starting; see {log_path}")
                if time.perf_counter() - t_start > 900:
                    raise RuntimeError(f"the server was not SERVING after 900 s; see {log_path}")
                try:
                    await client.wait_until_serving(timeout=5)
                    break
                except Exception:  # noqa: BLE001 - not serving yet: look at the process again
                    continue
        info["startup_seconds"] = round(time.perf_counter() - t_start, 1)
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="evaluate")
        sync_channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) as channel:
            stub = service_pb2_grpc.NerveServiceStub(channel)
            stubs = Stubs(stub, service_pb2_grpc.NerveServiceStub(sync_channel), pool)
            mi = (await stub.GetModelInfo(spb.GetModelInfoRequest(), timeout=30)).model_info
            info["model_info"] = {"model_name": mi.model_name, "engine": mi.engine, "dtype": mi.dtype,
                                  "structured_output_backend": mi.structured_output_backend,
                                  "server_version": mi.server_version}
            import psutil

            info["children"] = sorted(c.name() for c in psutil.Process(proc.pid).children(recursive=True))
            with open(raw_path, "w") as raw:
                run = Run(proc, stubs, phases, Source(examples), raw, args, f"http://127.0.0.1:{mport}/metrics")
                try:
                    await run.go()
                finally:
                    info["requests_sent"] = run.sent
                    pool.shutdown(wait=False, cancel_futures=True)
                    sync_channel.close()
    finally:
        stop_server(proc)
        log.close()
    from nerve.reports import percentile

    info["client_lag_seconds"] = {"p99": percentile(run.lags, 99) if run.lags else None,
                                  "max": max(run.lags, default=None)}
    info["unrecorded"] = run.sent - len(run.rows)
    info["error_details"] = dict(Counter(f"{r['kind']}:{r['code']}: {r['detail']}" for r in run.rows if "detail" in r))
    return {"rows": run.rows, "samples": run.samples, "server": info}


def stop_server(proc: subprocess.Popen, grace: float = 120.0) -> None:
    """SIGTERM (the server drains), wait; kill it and its children if it does not exit in ``grace`` seconds."""
    if proc.poll() is not None:
        return
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        for k in kids:
            try:
                k.kill()
            except psutil.NoSuchProcess:
                pass
        proc.kill()
        proc.wait(30)


# ---------------------------------------------------------------------------------------------- report

CODE_COLORS = {"OK": "#55A868", "INVALID_ARGUMENT": "#8172B2", "CANCELLED": "#937860", "DEADLINE_EXCEEDED": "#DD8452",
               RE: "#C44E52"}


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = data["windows"]
    x = [(w["start"] + w["end"]) / 2 / 60 for w in ws]
    width = [(w["end"] - w["start"]) / 60 for w in ws]

    def col(key: str, stat: str = "median") -> list[float]:
        return [float("nan") if w["samples"][key][stat] is None else w["samples"][key][stat] for w in ws]

    def lat(group: str, q: str) -> list[float]:
        return [float("nan") if w[group][q] is None else w[group][q] for w in ws]

    fig, axes = plt.subplots(5, 1, figsize=(10, 14), sharex=True)
    a = axes[0]
    a.plot(x, col("server_rss_mb"), "o-", ms=3, color="#4C72B0", label="server (median)")
    a.set_ylabel("server RSS MB", color="#4C72B0")
    b = a.twinx()
    b.plot(x, col("engine_rss_mb"), "s-", ms=3, color="#DD8452", label="engine + helpers (median)")
    b.set_ylabel("engine RSS MB", color="#DD8452")
    a.legend(loc="upper left", fontsize=8)
    b.legend(loc="upper right", fontsize=8)
    a = axes[1]
    for key, style, label in (("fds", "o-", "server + engine"), ("server_fds", "s--", "server"),
                              ("engine_fds", "^:", "engine")):
        a.plot(x, col(key, "max"), style, ms=3, label=label)
    a.set_ylabel("open fds (max)")
    a.legend(fontsize=8)
    a = axes[2]
    for q, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^--")):
        a.plot(x, lat("good", q), style, ms=3, label=f"good {q}")
    a.plot(x, lat("extract", "p95"), ":", color="black", label="extract p95")
    a.set_ylabel("latency s (OK good requests)")
    a.set_ylim(bottom=0)
    a.legend(fontsize=8, ncol=4)
    a = axes[3]
    codes = sorted({c for w in ws for kc in w["codes"].values() for c in kc}, key=lambda c: (c != "OK", c))
    bottom = [0.0] * len(ws)
    for c in codes:
        vals = [sum(kc.get(c, 0) for kc in w["codes"].values()) / (w["end"] - w["start"]) for w in ws]
        a.bar(x, vals, width=[0.9 * v for v in width], bottom=bottom, color=CODE_COLORS.get(c, "#777777"), label=c)
        bottom = [p + v for p, v in zip(bottom, vals, strict=True)]
    a.set_ylabel("requests/s by status code")
    a.set_ylim(0, 1.4 * max(bottom, default=1.0) or 1.0)
    a.legend(fontsize=7, ncol=3, loc="upper left")
    a = axes[4]
    offered = [next(p["rate"] for p in data["phases"] if p["name"] == w["phase"]) for w in ws]
    a.step([w["start"] / 60 for w in ws] + [ws[-1]["end"] / 60], offered + offered[-1:], where="post", color="grey",
           ls=":", label="offered")
    a.plot(x, [w["arrived_rps"] for w in ws], "o-", ms=3, label="arrived")
    a.plot(x, [w["completed_ok_rps"] for w in ws], "s-", ms=3, label="completed OK")
    a.set_ylabel("requests/s")
    a.set_xlabel("minutes since the start of the load")
    b = a.twinx()
    b.plot(x, col("inflight", "max"), color="#C44E52", alpha=0.6, label="texts in flight (max)")
    if data["settings"].get("max_queue"):
        b.axhline(data["settings"]["max_queue"], color="#C44E52", ls="--", lw=0.8, label="queue limit")
    b.set_ylabel("texts in flight", color="#C44E52")
    a.legend(loc="upper left", fontsize=8)
    b.legend(loc="upper right", fontsize=8)
    for ax in axes:
        for p in data["phases"]:
            ax.axvline(p["start"] / 60, color="black", lw=0.6, ls="--", alpha=0.5)
    for p in data["phases"]:
        axes[0].text((p["start"] + p["end"]) / 120, 1.01, p["name"], transform=axes[0].get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=9, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "%":
        return f"{v:+.2f}%"
    if unit == "x":
        return f"{v:.2f}×"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.1f} {unit}".strip()
    return f"{int(v)} {unit}".strip()


def _threshold(c: dict[str, Any]) -> str:
    if c["threshold"] is None:
        return "–"
    op = "≤" if c["op"] == "<=" else "≥"
    return f"{op} {_fmt(float(c['threshold']), c['unit']).lstrip('+')}"


def _detail(c: dict[str, Any]) -> str:
    d = c.get("detail")
    if not d:
        return ""

    def n(v: float | None, unit: str) -> str:
        return "–" if v is None else f"{v:.2f} {unit}" if unit == "s" else f"{v:.0f} {unit}"

    name = c["name"]
    if name.startswith("rss_growth"):
        return f"median {n(d['first'], 'MB')} → {n(d['last'], 'MB')}"
    if name == "fd_growth":
        return f"median {d['first']} → {d['last']}"
    if name == "latency_flat":
        return f"{n(d['first_p95'], 's')} → {n(d['last_p95'], 's')} ({d['window_s']:g} s windows)"
    if name == "recovery_latency":
        return f"soak {n(d['soak_p95'], 's')}, recovery {n(d['recovery_p95'], 's')}"
    if name == "overload_memory":
        return f"soak {n(d['soak_peak_mb'], 'MB')}, overload {n(d['overload_peak_mb'], 'MB')}"
    if name == "recovery_rss":
        return f"end of soak {n(d['end_of_soak_mb'], 'MB')}, end of recovery {n(d['end_of_recovery_mb'], 'MB')}"
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def report(data: dict[str, Any], path: Path) -> Path:
    s = data["settings"]
    cpu = data.get("machine", {}).get("cpu", {})
    mi = data.get("server", {}).get("model_info", {})
    total = sum(p["end"] - p["start"] for p in data["phases"])
    png = path.with_suffix(".png")
    lines = [f"# Soak and overload of one nerve replica ({total / 60:.0f} minutes of load)", "",
             f"Measured on a {cpu.get('cores', '?')}-core {cpu.get('model', 'CPU')}"
             f" ({', '.join(cpu.get('flags', [])) or 'flags not recorded'}) with {mi.get('model_name', data['model'])}"
             f" ({mi.get('engine', '?')}, {mi.get('dtype', '?')}, {mi.get('structured_output_backend', '?')} schema)."
             f" Produced by `{s['command']}`; sentences: {s['sentences']}."
             f" Server queue (max_queue): {s['max_queue']} texts"
             f"{' (its default)' if s.get('server_default_queue') else ''}, at most"
             f" {s.get('max_concurrent_evaluations', 2)} Evaluate calls at once; the server started in"
             f" {data.get('server', {}).get('startup_seconds', '?')} s.", "",
             "Open-loop Poisson arrivals. Request mix: "
             + ", ".join(f"{k} {w:.0%}" for k, w in s["weights"].items())
             + f" (batch = {s['batch_texts']} sentences, evaluate = {s['eval_examples']} inline gold examples,"
             f" cancel after {s['cancel_after_s'] * 1000:.0f} ms, deadline requests {s['short_deadline_s'] * 1000:.0f} ms;"
             " see `bench/bench_soak.py`).", "",
             f"Rates: {s['rate']:g} requests/s in warm-up, soak and recovery ({s['texts_per_request']:.2f} texts a"
             f" request), {s['overload_rate']:g} in the overload, from a capacity of {s['capacity']:g} single-Extract"
             f" requests/s ({s.get('capacity_from', '?')}, measured on {s.get('capacity_cpu') or 'an unknown CPU'}).", ""]
    if s.get("capacity_cpu") and cpu.get("model") and s["capacity_cpu"] != cpu.get("model"):
        lines += [f"**The capacity was measured on another CPU ({s['capacity_cpu']}) than this run's"
                  f" ({cpu.get('model')}): the soak's share of this machine's capacity is not what the rates say."
                  " Measure the capacity here (`python bench/bench_capacity.py`) and pass `--capacity`.**", ""]
    lines += [f"## Verdict: {'PASS' if data['passed'] else 'FAIL'}", "",
              "| check | measured | threshold | result | detail |", "|---|---:|---:|:---:|---|"]
    for c in data["checks"]:
        res = {True: "pass", False: "**FAIL**", None: "info"}[c["passed"]]
        lines.append(f"| {c['what']} | {_fmt(c['value'], c['unit'])} | {_threshold(c)} | {res} | {_detail(c)} |")
    lines += ["", "Growth checks compare the median of the samples (every "
              f"{s['sample_seconds']:g} s) in the soak's first {s['growth_window_s']:g} s with those in its last"
              f" {s['growth_window_s']:g} s; the flatness check compares extract p95 over the soak's first and last"
              f" {s['flat_window_s']:g} s. Requests count in the phase they arrived in.", "",
              "## Per phase", "",
              "| phase | seconds | offered req/s | arrived req/s | completed OK req/s | good p50 s | good p95 s |"
              " good p99 s | extract p95 s | peak RSS MB | max fds | max in flight | status codes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def f(v: float | None, spec: str = ".2f") -> str:
        return "–" if v is None else format(v, spec)

    for p in data["per_phase"]:
        codes = Counter()
        for kc in p["codes"].values():
            codes.update(kc)
        sm = p["samples"]
        lines.append(f"| {p['phase']} | {p['end'] - p['start']:.0f} | {p['rate']:g} | {p['arrived_rps']:.2f} |"
                     f" {p['completed_ok_rps']:.2f} | {f(p['good']['p50'])} | {f(p['good']['p95'])} |"
                     f" {f(p['good']['p99'])} | {f(p['extract']['p95'])} | {f(sm['total_rss_mb']['max'], '.0f')} |"
                     f" {f(sm['fds']['max'], '.0f')} | {f(sm['inflight']['max'], '.0f')} |"
                     f" {', '.join(f'{k} {v}' for k, v in codes.most_common())} |")
    lines += ["", "Status codes by kind and phase:", "", "| phase | kind | requests | codes |", "|---|---|---:|---|"]
    for p in data["per_phase"]:
        for kind, kc in p["codes"].items():
            lines.append(f"| {p['phase']} | {kind} | {sum(kc.values())} |"
                         f" {', '.join(f'{k} {v}' for k, v in sorted(kc.items(), key=lambda kv: -kv[1]))} |")
    srv = data.get("server", {})
    lag = srv.get("client_lag_seconds", {})
    details = srv.get("error_details") or {}
    if details:
        lines += ["", "Error details of codes no request of the mix is meant to get:", ""]
        lines += [f"* {k} ({v}×)" for k, v in sorted(details.items(), key=lambda kv: -kv[1])]
    late = lag.get("max")
    lines += ["", f"![RSS, fds, latency, status codes and rates over time]({png.name})", "",
              f"Client: {srv.get('requests_sent', '?')} requests sent; each was sent at most {f(late, '.3f')} s after"
              f" its Poisson arrival time (p99 {f(lag.get('p99'), '.3f')} s)"
              + (", so the load stayed open-loop." if late is not None and late < 0.5 else ".")
              + f" Server children sampled: {', '.join(srv.get('children', [])) or '?'}.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="registry model or checkpoint (default: what make serve serves)")
    ap.add_argument("--capacity", type=float, default=None,
                    help="sustainable single-Extract requests/s of this machine (default: bench/results/capacity.json's,"
                         " else 6); the other rates and the queue derive from it")
    ap.add_argument("--rate", type=float, default=None, help="offered requests/s of warm-up, soak, recovery (2/3 capacity)")
    ap.add_argument("--overload-rate", type=float, default=None, help="offered requests/s of the overload (2 x capacity)")
    ap.add_argument("--warmup", type=float, default=120.0, help="seconds of warm-up at --rate (not checked)")
    ap.add_argument("--soak", type=float, default=1800.0, help="seconds of soak at --rate")
    ap.add_argument("--overload", type=float, default=300.0, help="seconds of overload at --overload-rate")
    ap.add_argument("--recovery", type=float, default=180.0, help="seconds of recovery at --rate")
    ap.add_argument("--settle", type=float, default=60.0,
                    help="first seconds of the recovery in which RESOURCE_EXHAUSTED is still allowed (at most half of it)")
    ap.add_argument("--max-queue", type=int, default=None,
                    help="the server's max_queue, texts (default: what capacity drains in half the 30 s deadline);"
                         " 0: the server's default")
    ap.add_argument("--max-evaluations", type=int, default=4,
                    help="the server's max_concurrent_evaluations (its default is 2): the mix offers about one Evaluate"
                         " every 25 s at 2 requests/s, each taking ~10 s under load, so 2 would refuse some at once"
                         " (RESOURCE_EXHAUSTED, by design) and the soak would measure that cap instead of the server")
    ap.add_argument("--bucket-seconds", type=float, default=60.0, help="width of the aggregation windows (and progress lines)")
    ap.add_argument("--sample-seconds", type=float, default=5.0, help="interval of the RSS/fd sampler")
    ap.add_argument("--seed", type=int, default=0, help="seed of arrivals and request kinds")
    ap.add_argument("--out", type=Path, default=RESULTS / "soak.json", help="results file")
    ap.add_argument("--raw", type=Path, default=None, help="per-request rows and samples (default runs/<out stem>-raw.jsonl)")
    ap.add_argument("--report", type=Path, default=REPORTS / "soak.md", help="report (the plot goes next to it, .png)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the results file (no load run)")
    args = ap.parse_args()
    if args.report_only:
        data = json.loads(args.out.read_text(encoding="utf-8"))
    else:
        from bench.record import machine

        cap_file = capacity_record(RESULTS / "capacity.json")
        here = machine()
        d = derive(args.capacity or (cap_file or {}).get("rps") or 6.0, args.rate, args.overload_rate, args.max_queue)
        cap_cpu = (cap_file or {}).get("cpu") if args.capacity is None else here["cpu"].get("model")
        if args.capacity is None and cap_cpu != here["cpu"].get("model"):
            print(f"WARNING: the capacity ({d['capacity']:g} requests/s) was measured on {cap_cpu or 'an unknown CPU'},"
                  f" this is a {here['cpu'].get('model')}: measure it here (bench/bench_capacity.py) and pass"
                  " --capacity, or the soak runs at the wrong share of this machine's capacity", flush=True)
        args.max_queue = d["max_queue"]
        settle = min(args.settle, args.recovery / 2)
        phases = plan([("warmup", d["rate"], args.warmup), ("soak", d["rate"], args.soak),
                       ("overload", d["overload_rate"], args.overload), ("recovery", d["rate"], args.recovery)])
        if not phases:
            raise SystemExit("every phase has 0 seconds")
        examples, described = load_examples()
        raw = args.raw or ROOT / "runs" / f"{args.out.stem}-raw.jsonl"
        print(f"settings: {d}; phases: {phases}", flush=True)
        try:
            m = asyncio.run(measure(args, phases, examples, raw))
        except KeyboardInterrupt:
            raise SystemExit(f"interrupted: the server is stopped; the rows so far are in {raw}") from None
        from nerve.service.config import ServeConfig

        queue = args.max_queue or ServeConfig().max_queue
        rel = " ".join(sys.argv[1:])
        settings = {"command": f"python bench/bench_soak.py {rel}".strip(), **d, "capacity_cpu": cap_cpu,
                    "capacity_from": "--capacity" if args.capacity else "bench/results/capacity.json" if cap_file
                    else "built-in 6 requests/s", "settle_s": settle,
                    "max_queue": queue, "server_default_queue": not args.max_queue,
                    "max_concurrent_evaluations": args.max_evaluations, "bucket_seconds": args.bucket_seconds,
                    "sample_seconds": args.sample_seconds, "seed": args.seed, "weights": dict(zip(KINDS, WEIGHTS, strict=True)),
                    "texts_per_request": TEXTS_PER_REQUEST,
                    "batch_texts": BATCH_TEXTS, "eval_examples": EVAL_EXAMPLES, "timeouts_s": TIMEOUTS,
                    "cancel_after_s": CANCEL_AFTER, "short_deadline_s": SHORT_DEADLINE, "thresholds": THRESHOLDS,
                    "growth_window_s": min(GROWTH_WINDOW, args.soak / 4), "flat_window_s": min(FLAT_WINDOW, args.soak / 3),
                    "sentences": described, "raw": str(raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw)}
        data = {"model": args.model, "settings": settings, "phases": phases, "server": m["server"],
                **summarise(m["rows"], m["samples"], phases, args.bucket_seconds, settle, queue)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_results(args.out, data)
        data = json.loads(args.out.read_text(encoding="utf-8"))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    plot(data, args.report.with_suffix(".png"))
    print(report(data, args.report))
    for c in data["checks"]:
        print(f"{'pass' if c['passed'] else 'FAIL' if c['passed'] is False else 'info':4} {c['name']}: "
              f"{_fmt(c['value'], c['unit'])} (threshold {_threshold(c)})")


if __name__ == "__main__":
    main()
