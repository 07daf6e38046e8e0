"""Prompt-lookup (n-gram) speculative decoding against plain decoding, on the served default and real sentences.

An NER answer copies spans of its input, which is what an n-gram lookup in the prompt drafts. Both arms run in
one process on the same sentences, one engine each, in ABBA order with ``--rounds 2``: single Extract calls one
after another (steady state: the instructions cached), then 32 sentences at once from a cold prefix cache.
Recorded: latency, generated tokens/s, whether every answer equals plain greedy decoding, and the draft
acceptance rate (vLLM's ``spec_decode`` counters).

Run: ``python bench/bench_ngram.py [--k 4] [--n 16] [--rounds 2]``.
Writes bench/results/ngram.json and bench/reports/ngram.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_dtype import sentences  # noqa: E402
from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ngram.json"
REPORT = ROOT / "bench" / "reports" / "ngram.md"


def spec_counters() -> dict[str, float]:
    """vLLM's speculative-decoding counters in this process (drafted and accepted tokens so far)."""
    try:
        from vllm.v1.metrics.reader import Counter, get_metrics_snapshot
    except ImportError:  # pragma: no cover - other vLLM versions
        return {}
    out: dict[str, float] = {}
    for m in get_metrics_snapshot():
        if isinstance(m, Counter) and m.name.startswith("vllm:spec_decode_num_"):
            out[m.name] = out.get(m.name, 0.0) + m.value
    return out


async def arm(model_dir: Path, k: int, single: list[str], batch: list[str]) -> dict:
    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.extraction import Extractor
    from nerve.ner.card import TaskCard

    engine = await VllmEngine.start(EngineConfig(model=str(model_dir), speculative_tokens=k))
    try:
        ex = Extractor(engine, TaskCard.load(model_dir))
        await ex.extract(single[0])  # grammar compiled before timing
        before = spec_counters()
        calls = []
        for text in single:
            t0 = time.perf_counter()
            r = await ex.extract(text)
            calls.append({"seconds": time.perf_counter() - t0, "completion_tokens": r.usage.completion_tokens,
                          "raw": r.raw})
        await engine.reset_prefix_cache()
        t0 = time.perf_counter()
        results = await ex.extract_many(batch)
        wall = time.perf_counter() - t0
        after = spec_counters()
    finally:
        engine.close()
    drafted = after.get("vllm:spec_decode_num_draft_tokens", 0) - before.get("vllm:spec_decode_num_draft_tokens", 0)
    accepted = (after.get("vllm:spec_decode_num_accepted_tokens", 0)
                - before.get("vllm:spec_decode_num_accepted_tokens", 0))
    tokens = sum(r.usage.completion_tokens for r in results)
    return {"k": k, "single": calls, "batch_raw": [r.raw for r in results],
            "single_p50_seconds": statistics.median(c["seconds"] for c in calls),
            "single_seconds_per_token": sum(c["seconds"] for c in calls) / max(1, sum(c["completion_tokens"] for c in calls)),
            "batch_wall_seconds": wall, "batch_tokens": tokens, "batch_tokens_per_second": tokens / wall,
            "drafted_tokens": drafted, "accepted_tokens": accepted,
            "acceptance_rate": accepted / drafted if drafted else None}


def analyse(arms: list[dict]) -> dict:
    plain = [a for a in arms if a["k"] == 0]
    spec = [a for a in arms if a["k"] > 0]
    ref = plain[0]
    identical = all([c["raw"] for c in a["single"]] == [c["raw"] for c in ref["single"]]
                    and a["batch_raw"] == ref["batch_raw"] for a in arms)

    def mean(rows: list[dict], key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    rates = [a["acceptance_rate"] for a in spec if a["acceptance_rate"] is not None]
    answers = [c["raw"] for c in ref["single"]] + ref["batch_raw"]
    differing = max(sum(x != y for x, y in zip([c["raw"] for c in a["single"]] + a["batch_raw"], answers, strict=True))
                    for a in arms)
    out = {"identical_answers": identical, "answers": len(answers), "differing_answers": differing,
           "single_p50_speedup": mean(plain, "single_p50_seconds") / mean(spec, "single_p50_seconds"),
           "single_per_token_speedup": mean(plain, "single_seconds_per_token") / mean(spec, "single_seconds_per_token"),
           "batch_throughput_speedup": mean(spec, "batch_tokens_per_second") / mean(plain, "batch_tokens_per_second"),
           "acceptance_rate": statistics.fmean(rates) if rates else None}
    out["wins"] = bool(identical and out["single_p50_speedup"] > 1.05 and out["batch_throughput_speedup"] > 1.0)
    for name, rows in (("plain", plain), ("ngram", spec)):
        out[name] = {key: mean(rows, key) for key in
                     ("single_p50_seconds", "single_seconds_per_token", "batch_tokens_per_second")}
    return out


def report(data: dict) -> Path:
    a, cpu = data["analysis"], data["machine"]["cpu"]
    acc = f"{a['acceptance_rate']:.0%}" if a["acceptance_rate"] is not None else "not reported by this vLLM"
    lines = ["# Prompt-lookup speculative decoding", "",
             f"Measured on a {cpu['cores']}-core {cpu['model']} ({'/'.join(data['machine']['dtypes'])}) with"
             f" {data['model']}: plain decoding against n-gram speculation with {data['k']} draft tokens per step"
             f" (n-grams of 1 to 4 tokens looked up in the prompt), {data['rounds']} round(s) in ABBA order,"
             f" {data['n']} single calls and a batch of 32 per arm. 1-minute load average before the arms:"
             f" {min(data['load_average']):.1f} to {max(data['load_average']):.1f}. Produced by"
             " `python bench/bench_ngram.py`.", "",
             "| measure | plain | n-gram | speed-up (×) |", "|---|---:|---:|---:|",
             f"| single Extract, p50 seconds | {a['plain']['single_p50_seconds']:.2f} |"
             f" {a['ngram']['single_p50_seconds']:.2f} | {a['single_p50_speedup']:.2f} |",
             f"| single Extract, seconds per generated token | {a['plain']['single_seconds_per_token']:.3f} |"
             f" {a['ngram']['single_seconds_per_token']:.3f} | {a['single_per_token_speedup']:.2f} |",
             f"| batch of 32, generated tokens/s | {a['plain']['batch_tokens_per_second']:.1f} |"
             f" {a['ngram']['batch_tokens_per_second']:.1f} | {a['batch_throughput_speedup']:.2f} |", "",
             f"Draft acceptance rate: {acc}. Answers identical to plain greedy decoding: "
             + ("yes, every one." if a["identical_answers"] else
                f"no: {a['differing_answers']} of {a['answers']} differ in the worst arm (verifying several drafted"
                f" tokens in one {'/'.join(data['machine']['dtypes'])} forward pass rounds differently from one token"
                " at a time, which flips near-ties)."), "",
             ("Speculation wins here: `engine.speculative_tokens` could default to it." if a["wins"] else
              "`engine.speculative_tokens` stays 0 (off) by default: "
              + ("the answers are not always those of plain decoding" if not a["identical_answers"] else
                 "it is not faster on both measures")
              + ". It is a setting for deployments that prefer the throughput."), ""]
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    return REPORT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-nerve")
    ap.add_argument("--k", type=int, default=4, help="draft tokens per step")
    ap.add_argument("--n", type=int, default=16, help="single calls per arm")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.report_only:  # re-analysed from the recorded arms
        data = json.loads(RESULTS.read_text(encoding="utf-8"))
        data["analysis"] = analyse(data["arms"])
        write_results(RESULTS, data)
        print(report(data))
        return
    from nerve.models import resolve_model
    from nerve.tuning.export import merge_adapter

    model_dir = resolve_model(args.model, merge=merge_adapter)
    texts = sentences(args.n + 32)
    single, batch = texts[:args.n], texts[args.n:]
    order = [k for i in range(args.rounds) for k in ((0, args.k) if i % 2 == 0 else (args.k, 0))]
    arms, load = [], []
    for i, k in enumerate(order, 1):
        print(f"[{i}/{len(order)}] {'plain' if k == 0 else f'n-gram, {k} draft tokens'}", flush=True)
        load.append(os.getloadavg()[0])
        arms.append(asyncio.run(arm(model_dir, k, single, batch)))
        a = arms[-1]
        print(f"  p50 {a['single_p50_seconds']:.2f} s, batch {a['batch_tokens_per_second']:.1f} tokens/s,"
              f" acceptance {a['acceptance_rate']}", flush=True)
    write_results(RESULTS, {"model": args.model, "k": args.k, "n": args.n, "rounds": args.rounds,
                            "load_average": load, "arms": arms, "analysis": analyse(arms)})
    print(report(json.loads(RESULTS.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
