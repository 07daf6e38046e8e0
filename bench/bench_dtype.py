"""bf16 against fp32 on the machine this runs on: serving (engine batch 1 and 32) and one training step.

Whether bf16 pays depends on the CPU: with AVX-512 BF16 or AMX it is computed natively and beats fp32; on an
AVX2-only CPU it is emulated and many times slower (`nerve/hardware.py` picks the dtype from that). This
measures both dtypes in one run so the ratio holds for this machine:

* serving: the served default model on vLLM, one engine per dtype, arms in ABBA order (bf16, fp32, fp32,
  bf16 with ``--rounds 2``) so that drift of the machine cancels. Batch 1: single Extract calls of short
  sentences, the prefix cache emptied before each; batch 32: 32 sentences submitted at once from a cold cache.
* training: a LoRA step (rank 8 on the attention and MLP projections, AdamW) of the base model on
  8 × 128 tokens, forward, backward and optimiser step, median of ``--train-steps`` after one warm-up step.

Run: ``python bench/bench_dtype.py [--rounds 2] [--single 8] [--train-steps 3]``.
Writes bench/results/dtype.json and bench/reports/dtype.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dtype.json"
REPORT = ROOT / "bench" / "reports" / "dtype.md"
DTYPES = ("bfloat16", "float32")


def sentences(n: int) -> list[str]:
    """Short real sentences (CLUENER dev and CoNLL testb alternating), or built-in ones without the datasets."""
    from nerve.ner.readers import read_dataset
    from nerve.paths import datasets_dir

    d = datasets_dir()
    if d is None:
        base = ["Peter Blackburn met officials of the European Commission in Brussels on Friday .",
                "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"]
        return [f"{base[i % 2]} {i}" for i in range(n)]
    zh = [e.text for e in read_dataset(d / "cluener" / "dev.jsonl") if len(e.text) <= 60]
    en = [e.text for e in read_dataset(d / "conll2003" / "eng.testb", "conll") if 40 <= len(e.text) <= 160]
    out = []
    for i in range(n):
        out.append((zh if i % 2 == 0 else en)[i // 2])
    return out


async def serving_arm(model_dir: Path, dtype: str, single: list[str], batch: list[str]) -> dict:
    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.extraction import Extractor
    from nerve.ner.card import TaskCard

    t0 = time.perf_counter()
    engine = await VllmEngine.start(EngineConfig(model=str(model_dir), dtype=dtype))
    load = time.perf_counter() - t0
    try:
        ex = Extractor(engine, TaskCard.load(model_dir))
        await ex.extract(single[0])  # compiles the schema's grammar: not part of either figure
        latencies, tokens = [], []
        for text in single:
            await engine.reset_prefix_cache()
            t1 = time.perf_counter()
            r = await ex.extract(text)
            latencies.append(time.perf_counter() - t1)
            tokens.append(r.usage.completion_tokens)
        await engine.reset_prefix_cache()
        t1 = time.perf_counter()
        results = await ex.extract_many(batch)
        wall = time.perf_counter() - t1
    finally:
        engine.close()
    batch_tokens = sum(r.usage.completion_tokens for r in results)
    return {"dtype": dtype, "engine_load_seconds": load,
            "batch1": {"calls": len(single), "p50_seconds": statistics.median(latencies),
                       "seconds": latencies, "completion_tokens": tokens,
                       "seconds_per_token": sum(latencies) / max(1, sum(tokens))},
            "batch32": {"sentences": len(batch), "wall_seconds": wall, "sentences_per_second": len(batch) / wall,
                        "completion_tokens": batch_tokens, "tokens_per_second": batch_tokens / wall}}


def training_arm(base_dir: Path, dtype: str, steps: int, batch: int = 8, seq: int = 128) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM", target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(100, 20000, (batch, seq))
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step:  # the first step allocates and warms the kernels
            times.append(time.perf_counter() - t0)
    del model, opt
    gc.collect()
    return {"dtype": dtype, "batch": batch, "seq_len": seq, "step_seconds": times,
            "median_step_seconds": statistics.median(times), "tokens_per_second": batch * seq / statistics.median(times)}


def analyse(serving: list[dict], training: list[dict]) -> dict:
    def mean(rows: list[dict], *keys: str) -> float:
        vals = []
        for r in rows:
            v = r
            for k in keys:
                v = v[k]
            vals.append(v)
        return statistics.fmean(vals)

    out: dict = {}
    for dtype in DTYPES:
        s = [r for r in serving if r["dtype"] == dtype]
        t = [r for r in training if r["dtype"] == dtype]
        out[dtype] = {"batch1_p50_seconds": mean(s, "batch1", "p50_seconds"),
                      "batch1_seconds_per_token": mean(s, "batch1", "seconds_per_token"),
                      "batch32_sentences_per_second": mean(s, "batch32", "sentences_per_second"),
                      "batch32_tokens_per_second": mean(s, "batch32", "tokens_per_second"),
                      "train_step_seconds": mean(t, "median_step_seconds")}
    b, f = out["bfloat16"], out["float32"]
    out["fp32_over_bf16"] = {  # > 1: bf16 is faster
        "batch1_latency": f["batch1_p50_seconds"] / b["batch1_p50_seconds"],
        "batch1_per_token": f["batch1_seconds_per_token"] / b["batch1_seconds_per_token"],
        "batch32_throughput": b["batch32_sentences_per_second"] / f["batch32_sentences_per_second"],
        "batch32_tokens": b["batch32_tokens_per_second"] / f["batch32_tokens_per_second"],
        "train_step": f["train_step_seconds"] / b["train_step_seconds"],
    }
    return out


def report(data: dict) -> Path:
    a, cpu = data["analysis"], data["machine"]["cpu"]
    r = a["fp32_over_bf16"]
    lines = ["# bf16 against fp32 on this CPU", "",
             f"Measured on a {cpu['cores']}-core {cpu['model']} (torch capability {cpu['torch_capability']}; flags:"
             f" {', '.join(cpu['flags'])}); `dtype: auto` chooses {data['auto_dtype']} here ({data['auto_reason']})."
             f" Model: {data['model']} (serving), its base {data['base']} (training). {data['rounds']} round(s)"
             " of both arms in ABBA order. Produced by `python bench/bench_dtype.py`."
             + (f" 1-minute load average before the arms: {min(data['load_average']):.1f} to"
                f" {max(data['load_average']):.1f} on {cpu['cores']} cores." if data.get("load_average") else ""), "",
             "| measure | bfloat16 | float32 | bf16 advantage (×) |", "|---|---:|---:|---:|",
             f"| batch 1: p50 seconds per Extract ({data['single']} calls, cold prefix cache) |"
             f" {a['bfloat16']['batch1_p50_seconds']:.2f} | {a['float32']['batch1_p50_seconds']:.2f} |"
             f" {r['batch1_latency']:.2f} |",
             f"| batch 1: seconds per generated token | {a['bfloat16']['batch1_seconds_per_token']:.3f} |"
             f" {a['float32']['batch1_seconds_per_token']:.3f} | {r['batch1_per_token']:.2f} |",
             f"| batch 32: sentences/s | {a['bfloat16']['batch32_sentences_per_second']:.2f} |"
             f" {a['float32']['batch32_sentences_per_second']:.2f} | {r['batch32_throughput']:.2f} |",
             f"| batch 32: generated tokens/s | {a['bfloat16']['batch32_tokens_per_second']:.1f} |"
             f" {a['float32']['batch32_tokens_per_second']:.1f} | {r['batch32_tokens']:.2f} |",
             f"| LoRA training step, 8 × 128 tokens, seconds | {a['bfloat16']['train_step_seconds']:.2f} |"
             f" {a['float32']['train_step_seconds']:.2f} | {r['train_step']:.2f} |", "",
             "An advantage above 1 means bf16 is faster. The answers of the two dtypes can differ in length (greedy"
             " decoding over different roundings), hence the per-token rows.", ""]
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    return REPORT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="served model (registry name or checkpoint)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of both arms (ABBA order over two rounds)")
    ap.add_argument("--single", type=int, default=8, help="single Extract calls per serving arm")
    ap.add_argument("--train-steps", type=int, default=3, help="timed training steps per arm")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from the results file")
    args = ap.parse_args()
    if args.report_only:
        print(report(json.loads(RESULTS.read_text(encoding="utf-8"))))
        return
    from nerve.hardware import choose_dtype
    from nerve.models import get_spec, resolve_model
    from nerve.tuning.export import merge_adapter

    spec = get_spec(args.model)
    model_dir = resolve_model(spec.name, merge=merge_adapter)
    base = spec.base or spec.name
    base_dir = resolve_model(base, merge=merge_adapter)
    texts = sentences(args.single + 32)
    single, batch = texts[:args.single], texts[args.single:]
    order = [d for i in range(args.rounds) for d in (DTYPES if i % 2 == 0 else DTYPES[::-1])]
    serving, training = [], []
    load: list[float] = []  # 1-minute load average before each arm: other work on the machine shows here
    for i, dtype in enumerate(order, 1):
        print(f"[{i}/{len(order)}] serving, {dtype}", flush=True)
        load.append(os.getloadavg()[0])
        serving.append(asyncio.run(serving_arm(model_dir, dtype, single, batch)))
        print(f"  batch 1 p50 {serving[-1]['batch1']['p50_seconds']:.2f} s,"
              f" batch 32 {serving[-1]['batch32']['sentences_per_second']:.2f} sentences/s", flush=True)
    for i, dtype in enumerate(order, 1):
        print(f"[{i}/{len(order)}] training step, {dtype}", flush=True)
        load.append(os.getloadavg()[0])
        training.append(training_arm(base_dir, dtype, args.train_steps))
        print(f"  {training[-1]['median_step_seconds']:.2f} s per step", flush=True)
    auto = choose_dtype("auto")
    data = {"model": spec.name, "base": base, "rounds": args.rounds, "single": args.single,
            "auto_dtype": auto.dtype, "auto_reason": auto.reason, "load_average": load, "serving": serving, "training": training,
            "analysis": analyse(serving, training)}
    write_results(RESULTS, data)
    print(report(json.loads(RESULTS.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
