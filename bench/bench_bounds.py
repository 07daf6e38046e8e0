"""Answers bounded by the input: worst-case tokens per answer with the card's constant bounds against bounds
derived from each text, and what a model that does not stop costs under each.

A small model zero-shot (SmolLM2-135M-Instruct, CoNLL-2003's labels; it tends to list invented mentions until
the schema stops it) answers short texts one call at a time on an idle engine, each text twice in one run,
the two arms alternating which goes first, the prefix cache emptied before every call:

* ``constant``: the schema and ``max_tokens`` of the card's bounds for any text (``output_spec`` without the
  text): up to ``max_entities`` entities of up to ``max_entity_chars`` characters, whatever the input;
* ``input``: the bounds serving uses (``output_spec`` with the text): no more entities than the text can hold
  (``items_for_text``), none longer than the text (bucketed).

Texts: nine of 16 to 174 characters from CLUENER dev and CoNLL-2003 testb (the shortest, the longest and
evenly spaced lengths between), or synthetic ones without the shared datasets.

Run: ``python bench/bench_bounds.py``; writes bench/results/bounds.json and bench/reports/bounds.md;
``--report-only`` rewrites the report from the results file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "bounds.json"
REPORT = ROOT / "bench" / "reports" / "bounds.md"
MODEL = "smollm2-135m-instruct"


def pick_texts(n: int = 9, lo: int = 16, hi: int = 174) -> list[str]:
    """``n`` texts whose lengths spread evenly over [lo, hi] characters."""
    from nerve.ner.readers import read_dataset
    from nerve.paths import datasets_dir

    d = datasets_dir()
    if d is None:
        base = "Alice Smith of Acme Corp met Bob Jones in Paris and Berlin last week to sign the deal. "
        return [(base * 3)[: lo + (hi - lo) * i // (n - 1)].strip() for i in range(n)]
    pool = [e.text for e in read_dataset(d / "cluener" / "dev.jsonl")] + \
           [e.text for e in read_dataset(d / "conll2003" / "eng.testb")]
    pool = sorted({t for t in pool if lo <= len(t) <= hi}, key=len)
    wanted = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    out: list[str] = []
    for w in wanted:
        best = min((t for t in pool if t not in out), key=lambda t: abs(len(t) - w))
        out.append(best)
    return out


async def measure(texts: list[str]) -> dict:
    from nerve.engines.vllm import EngineConfig, GenerationRequest
    from nerve.extraction import Limits, open_extractor
    from nerve.extraction.generative import GenerationPrepared
    from nerve.models import resolve_model
    from nerve.ner.card import TaskCard
    from nerve.ner.schema import output_spec

    path = resolve_model(MODEL)
    card = TaskCard.preset("conll2003")
    ex = await open_extractor(path, card, engine=EngineConfig(model=str(path)), limits=Limits(max_text_chars=4000))
    rows = []
    try:
        await ex.extract("Warm-up: Alice visited Paris.")
        for i, text in enumerate(texts):
            served = ex.prepare(text)
            constant = output_spec(served.labels, card.bounds, None, answer_format=ex.answer_format)
            arms = {"input": served,
                    "constant": GenerationPrepared(served.labels, GenerationRequest(
                        served.request.prompt_token_ids, constant.schema, constant.max_tokens), constant)}
            order = ["constant", "input"] if i % 2 == 0 else ["input", "constant"]
            row: dict = {"chars": len(text), "text": text}
            for arm in order:
                prepared = arms[arm]
                await ex.engine.reset_prefix_cache()
                t0 = time.perf_counter()
                r = await ex.extract(text, prepared=prepared)
                row[arm] = {"max_tokens": prepared.request.max_tokens, "answer_tokens": r.usage.completion_tokens,
                            "seconds": round(time.perf_counter() - t0, 3), "parsed": r.parsed,
                            "entities": len(r.entities), "ungrounded": len(r.hallucinated),
                            "finish_reason": r.finish_reason}
            rows.append(row)
            print(f"{len(text):4d} chars: constant {row['constant']['answer_tokens']:4d} tokens"
                  f" ({row['constant']['seconds']:.1f} s), input {row['input']['answer_tokens']:4d} tokens"
                  f" ({row['input']['seconds']:.1f} s)", flush=True)
    finally:
        ex.engine.close()
    return {"model": MODEL, "card": "conll2003", "bounds": {"max_entities": card.bounds.max_entities,
            "max_entity_chars": card.bounds.max_entity_chars}, "engine_dtype": ex.engine.dtype.dtype,
            "rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for arm in ("constant", "input"):
        out[arm] = {"max_tokens_max": max(r[arm]["max_tokens"] for r in rows),
                    "answer_tokens_max": max(r[arm]["answer_tokens"] for r in rows),
                    "answer_tokens_mean": statistics.mean(r[arm]["answer_tokens"] for r in rows),
                    "seconds_total": round(sum(r[arm]["seconds"] for r in rows), 2),
                    "seconds_max": max(r[arm]["seconds"] for r in rows),
                    "parse_rate": sum(r[arm]["parsed"] for r in rows) / len(rows),
                    "entities": sum(r[arm]["entities"] for r in rows)}
    return out


def report(data: dict) -> Path:
    s, m = data["summary"], data["machine"]["cpu"]
    b = data["bounds"]
    lines = ["# Answers bounded by the input", "",
             f"{data['model']} zero-shot with CoNLL-2003's labels ({data['engine_dtype']}), {len(data['rows'])} texts of"
             f" {min(r['chars'] for r in data['rows'])}-{max(r['chars'] for r in data['rows'])} characters, one call"
             " at a time on an idle engine, each text under both bounds in one run (alternating which goes first,"
             f" prefix cache emptied before every call). CPU: {m['model']}, {m['cores']} cores. Generated by"
             " `bench/bench_bounds.py`; results in `bench/results/bounds.json`.", "",
             f"*constant*: the card's bounds for any text ({b['max_entities']} entities of up to"
             f" {b['max_entity_chars']} characters); *input*: bounds from the text (no more entities than it can"
             " hold, none longer than it, bucketed), which is what nerve serves.", "",
             "| chars | max_tokens constant | max_tokens input | answer tokens constant | answer tokens input |"
             " seconds constant | seconds input | entities constant | entities input |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["rows"]:
        c, i = r["constant"], r["input"]
        lines.append(f"| {r['chars']} | {c['max_tokens']} | {i['max_tokens']} | {c['answer_tokens']} |"
                     f" {i['answer_tokens']} | {c['seconds']:.2f} | {i['seconds']:.2f} | {c['entities']} |"
                     f" {i['entities']} |")
    c, i = s["constant"], s["input"]
    lines += ["", f"Worst case per answer (`max_tokens`): {c['max_tokens_max']} tokens with constant bounds, at most"
              f" {i['max_tokens_max']} with bounds from the input. Longest answer written: {c['answer_tokens_max']}"
              f" against {i['answer_tokens_max']} tokens; all {len(data['rows'])} calls took"
              f" {c['seconds_total']:.1f} s against {i['seconds_total']:.1f} s (slowest call {c['seconds_max']:.1f} s"
              f" against {i['seconds_max']:.1f} s). Parse rate {c['parse_rate']:.0%} and {i['parse_rate']:.0%}.", ""]
    same = sum(r["constant"]["answer_tokens"] == r["input"]["answer_tokens"] for r in data["rows"])
    tighter = [r["chars"] for r in data["rows"] if r["input"]["max_tokens"] < r["constant"]["max_tokens"]]
    lines += [f"{same} of {len(data['rows'])} texts got answers of the same length in both arms: the model stopped"
              " before either bound, so the bound changed what an answer may cost, not what these answers cost."
              + (f" Bounds from the input lower the worst case only for texts up to {max(tighter)} characters here;"
                 " from there on the card's bounds apply (an entity of up to max_entity_chars characters and up to"
                 " max_entities of them fit such a text), so the worst case of a longer text stays the card's."
                 if tighter else " The input's bounds lowered no worst case here."), ""]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    return REPORT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from bench/results/bounds.json")
    args = ap.parse_args()
    if not args.report_only:
        write_results(RESULTS, asyncio.run(measure(pick_texts())))
    print(report(json.loads(RESULTS.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
