"""Pure functions the benchmark scripts and their reports share (no engine, no model: unit-tested).

* speed ratios per sentence and per generated token, for comparisons whose arms write answers of different
  lengths;
* a lenient reading of free-form answers (markdown fences stripped, entities with unknown labels skipped), to
  score an unconstrained baseline next to its strict score;
* the sustainable-rate rule of the capacity benchmark;
* time windows over a run of phases, per-window aggregates of request rows and process samples, and the
  growth of a sampled quantity between two windows (the soak benchmark).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from nerve.ner.parsing import Mention

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?```\s*$", re.S)


def speedup(baseline: dict[str, Any], new: dict[str, Any]) -> dict[str, float]:
    """How many times faster ``new`` is than ``baseline``, per sentence and per generated token.

    Both are run summaries with ``sentences``, ``completion_tokens`` and ``wall_seconds``. The per-token ratio
    is the fair one when the arms write answers of different lengths (a baseline that writes twice the tokens
    per sentence looks twice as slow per sentence as it is per token).
    """
    for d in (baseline, new):
        if d["wall_seconds"] <= 0 or d["sentences"] <= 0 or d["completion_tokens"] <= 0:
            raise ValueError("a run summary needs positive wall_seconds, sentences and completion_tokens")
    sps = [d["sentences"] / d["wall_seconds"] for d in (baseline, new)]
    tps = [d["completion_tokens"] / d["wall_seconds"] for d in (baseline, new)]
    return {"per_sentence": sps[1] / sps[0], "per_token": tps[1] / tps[0],
            "baseline_tokens_per_sentence": baseline["completion_tokens"] / baseline["sentences"],
            "new_tokens_per_sentence": new["completion_tokens"] / new["sentences"]}


def strip_fences(text: str) -> str:
    """The body of a markdown code block (```json ... ```) if the whole answer is one; else the answer."""
    m = _FENCE.match(text)
    return m.group(1) if m else text


def parse_lenient(raw: str, labels: Iterable[str]) -> tuple[list[Mention], int] | None:
    """Read a free-form answer the way a forgiving client would.

    Markdown fences around the JSON are stripped; entities whose label is not in ``labels``, or that are not
    objects with non-empty string ``label`` and ``text``, are skipped and counted. Returns the mentions and the
    number skipped, or ``None`` when what is left is not a JSON object with an ``entities`` list.
    """
    try:
        obj = json.loads(strip_fences(raw))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("entities"), list):
        return None
    allowed = set(labels)
    mentions, skipped = [], 0
    for item in obj["entities"]:
        ok = (isinstance(item, dict) and isinstance(item.get("label"), str) and isinstance(item.get("text"), str)
              and item["text"] and item["label"] in allowed)
        if ok:
            mentions.append(Mention(item["label"], item["text"]))
        else:
            skipped += 1
    return mentions, skipped


def arrived_rps(step: dict[str, Any], step_seconds: float) -> float:
    """The arrival rate a step really offered: Poisson arrivals scatter around the nominal rate. The step's own
    ``arrival_seconds`` wins over the run's ``step_seconds`` when it has one."""
    return step["sent"] / step.get("arrival_seconds", step_seconds)


def keeps_up(step: dict[str, Any], step_seconds: float, tolerance: float = 0.05) -> bool:
    """Whether the server completed the step's load: every request answered without error, and the completion
    rate (requests ÷ time from the first arrival to the last answer, drain included) within ``tolerance`` of
    the arrival rate. An overloaded server queues requests, and the drain after the last arrival stretches."""
    return (step["errors"] == 0 and step["ok"] == step["sent"]
            and step["achieved_rps"] >= (1 - tolerance) * arrived_rps(step, step_seconds))


def sustainable_rate(steps: Sequence[dict[str, Any]], objective: float, step_seconds: float,
                     tolerance: float = 0.05) -> float:
    """The highest offered rate below which every step tried kept up and held p95 ≤ ``objective`` seconds.

    Rates are taken in increasing order and the first failing step ends the search, so a lucky step above an
    overloaded one does not count. 0.0 when even the lowest rate fails.
    """
    best = 0.0
    for s in sorted(steps, key=lambda s: s["offered_rps"]):
        if s["p95"] > objective or not keeps_up(s, step_seconds, tolerance):
            break
        best = s["offered_rps"]
    return best


def windows(phases: Sequence[dict[str, Any]], width: float) -> list[dict[str, Any]]:
    """Consecutive windows of ``width`` seconds over each phase (``name``, ``start``, ``end``), restarting at
    every phase boundary so that no window straddles two phases; a phase's last window may be shorter."""
    if width <= 0:
        raise ValueError("window width must be positive")
    out = []
    for p in phases:
        t = p["start"]
        while t < p["end"] - 1e-9:
            out.append({"phase": p["name"], "start": t, "end": min(t + width, p["end"])})
            t += width
    return out


def _pcts(values: list[float], qs: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    from nerve.reports import percentile

    return {f"p{q}": percentile(values, q) if values else None for q in qs}


def window_aggregates(rows: Sequence[dict[str, Any]], spans: Sequence[dict[str, Any]], good: Iterable[str],
                      ok: str = "OK") -> list[dict[str, Any]]:
    """Per window: requests that arrived in it (``t`` in [start, end)) by kind and by ``kind`` → status code,
    their rate, the rate of successful completions (``t + latency`` in the window, whatever their arrival),
    and latency percentiles of the successful good requests that arrived in it (all good kinds, and the
    ``extract`` kind alone, which has the least variance of work per request). Percentiles are ``None`` in a
    window without such requests."""
    good = set(good)
    out = []
    for w in spans:
        arrived = [r for r in rows if w["start"] <= r["t"] < w["end"]]
        done = sum(1 for r in rows if r["code"] == ok and w["start"] <= r["t"] + r["latency"] < w["end"])
        codes: dict[str, dict[str, int]] = {}
        for r in arrived:
            codes.setdefault(r["kind"], Counter())[r["code"]] += 1
        lat = [r["latency"] for r in arrived if r["kind"] in good and r["code"] == ok]
        ext = [r["latency"] for r in arrived if r["kind"] == "extract" and r["code"] == ok]
        length = w["end"] - w["start"]
        out.append({**w, "arrived": len(arrived), "arrived_rps": len(arrived) / length, "completed_ok": done,
                    "completed_ok_rps": done / length, "kinds": dict(Counter(r["kind"] for r in arrived)),
                    "codes": {k: dict(v) for k, v in sorted(codes.items())},
                    "good": _pcts(lat), "extract": _pcts(ext)})
    return out


def sample_stats(samples: Sequence[dict[str, Any]], start: float, end: float, keys: Iterable[str]) -> dict[str, Any]:
    """Median and maximum of each key over the samples taken in [start, end) (``None`` without samples)."""
    inside = [s for s in samples if start <= s["t"] < end]
    out: dict[str, Any] = {"samples": len(inside)}
    for k in keys:
        vals = [s[k] for s in inside if s.get(k) is not None]
        out[k] = {"median": statistics.median(vals) if vals else None, "max": max(vals) if vals else None}
    return out


def growth(samples: Sequence[dict[str, Any]], key: str, start: float, end: float, window: float) -> dict[str, Any]:
    """How much ``key`` grew over [start, end): the median of the samples in the first ``window`` seconds
    against the median of those in the last ``window`` seconds (medians, so that one noisy sample does not
    decide). ``growth_pct`` is relative to the first; ``None`` values when a window has no sample."""
    def med(lo: float, hi: float) -> float | None:
        vals = [s[key] for s in samples if lo <= s["t"] < hi and s.get(key) is not None]
        return statistics.median(vals) if vals else None

    first, last = med(start, min(start + window, end)), med(max(end - window, start), end)
    delta = None if first is None or last is None else last - first
    pct = None if delta is None or not first else 100.0 * delta / first
    return {"first": first, "last": last, "growth": delta, "growth_pct": pct}
