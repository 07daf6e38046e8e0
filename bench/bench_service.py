"""gRPC service overhead: the engine called directly vs the same work through `nerve serve` over loopback.

For concurrency 1, 4, 16 and 64 a pool of workers extracts CLUENER dev sentences, (a) calling the
extraction pipeline in-process and (b) calling the server with the SDK's AsyncClient; then 64 concurrent
single Extract calls are compared with one ExtractBatch of the same 64 texts. The two phases run one after
the other (never two engines at once on the shared CPU). Results: bench/results/service.json,
report: bench/reports/service.md (+ PNG).

Run: ``python bench/bench_service.py [--model NAME] [--levels 1,4,16,64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REPORTS = ROOT / "bench" / "reports"


def texts_for(level: int, pool: list[str]) -> list[str]:
    n = min(128, max(16, 4 * level))
    return [pool[i % len(pool)] for i in range(n)]


def summarize(latencies: list[float], wall: float) -> dict:
    from nerve.reports import percentiles

    p = percentiles(latencies, (50, 95, 99))
    return {"requests": len(latencies), "wall_seconds": wall, "throughput": len(latencies) / wall,
            "p50": p["p50"], "p95": p["p95"], "p99": p["p99"]}


async def drive(call, texts: list[str], concurrency: int) -> dict:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    latencies: list[float] = []

    async def worker() -> None:
        while True:
            try:
                t = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            await call(t)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies, time.perf_counter() - t0)


async def direct_phase(model_dir: Path, pool: list[str], levels: list[int]) -> dict:
    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.extraction import Extractor
    from nerve.ner.card import TaskCard

    engine = await VllmEngine.start(EngineConfig(model=str(model_dir)))
    try:
        ex = Extractor(engine, TaskCard.load(model_dir))
        await ex.warm_up()
        out = {}
        for c in levels:
            out[str(c)] = await drive(lambda t: ex.extract(t), texts_for(c, pool), c)
            print("direct", c, out[str(c)])
        return out
    finally:
        engine.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def grpc_phase(model_dir: Path, pool: list[str], levels: list[int]) -> tuple[dict, dict]:
    from nerve_client import AsyncClient

    port = free_port()
    log = open(RESULTS / "service-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "nerve.cli", "serve", "--model", str(model_dir), "--port", str(port),
                             "--metrics-port", "0"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        async with AsyncClient(f"127.0.0.1:{port}", timeout=600) as client:
            await client.wait_until_serving(timeout=600)
            out = {}
            for c in levels:
                out[str(c)] = await drive(lambda t: client.extract(t), texts_for(c, pool), c)
                print("grpc", c, out[str(c)])
            batch_texts = texts_for(16, pool)[:64]
            t0 = time.perf_counter()
            await asyncio.gather(*(client.extract(t) for t in batch_texts))
            singles = time.perf_counter() - t0
            t0 = time.perf_counter()
            await client.extract_batch(batch_texts)
            batch = time.perf_counter() - t0
            versus = {"texts": len(batch_texts), "concurrent_singles_seconds": singles, "one_batch_seconds": batch}
            print("singles vs batch", versus)
        return out, versus
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        log.close()


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(int(k) for k in data["direct"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, style in (("direct", "o-"), ("grpc", "s--")):
        a.plot(levels, [data[name][str(c)]["throughput"] for c in levels], style, label=name)
        b.plot(levels, [data[name][str(c)]["p95"] for c in levels], style, label=f"{name} p95")
        b.plot(levels, [data[name][str(c)]["p50"] for c in levels], style, alpha=0.4, label=f"{name} p50")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests")
        ax.legend(fontsize=8)
    a.set_ylabel("texts / s")
    b.set_ylabel("latency s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(data: dict) -> Path:
    levels = sorted(int(k) for k in data["direct"])
    lines = ["# gRPC service overhead", "",
             f"Model {data['model']}, CLUENER dev sentences, greedy + xgrammar schema, this 2-core CPU. Each level"
             " runs a fixed number of texts (16 at c=1/4, 4×c above) through a worker pool. `direct` calls the"
             " extraction pipeline in-process; `grpc` goes through `nerve serve` on 127.0.0.1 with the SDK's"
             " AsyncClient (one request per text; vLLM batches them continuously). Produced by"
             " `python bench/bench_service.py`.", "",
             "| concurrency | direct texts/s | gRPC texts/s | gRPC / direct | direct p50 / p95 s | gRPC p50 / p95 s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for c in levels:
        d, g = data["direct"][str(c)], data["grpc"][str(c)]
        lines.append(f"| {c} | {d['throughput']:.2f} | {g['throughput']:.2f} | {g['throughput'] / d['throughput']:.3f} |"
                     f" {d['p50']:.2f} / {d['p95']:.2f} | {g['p50']:.2f} / {g['p95']:.2f} |")
    top = str(levels[-1])
    overhead = 1 - data["grpc"][top]["throughput"] / data["direct"][top]["throughput"]
    v = data["singles_vs_batch"]
    lines += ["", f"At saturation (concurrency {top}) gRPC and scheduling cost **{overhead:+.1%}** of direct throughput"
              " (target ≤ 5%; a negative value means the gRPC run was faster, i.e. within run-to-run noise).", "",
              f"{v['texts']} concurrent single Extract calls took {v['concurrent_singles_seconds']:.1f} s; one"
              f" ExtractBatch of the same texts took {v['one_batch_seconds']:.1f} s (ratio"
              f" {v['concurrent_singles_seconds'] / v['one_batch_seconds']:.2f}): vLLM's continuous batching makes"
              " separate calls as efficient as a batch, so clients need not batch for throughput.", "",
              "![throughput and latency](service.png)", ""]
    out = REPORTS / "service.md"
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--levels", default="1,4,16,64")
    args = ap.parse_args()
    from nerve.models import resolve_model
    from nerve.ner.readers import read_dataset
    from nerve.paths import datasets_dir
    from nerve.tuning.export import merge_adapter

    d = datasets_dir()
    if d is None:
        raise SystemExit("the shared datasets are not available (set NERVE_DATASETS)")
    pool = [e.text for e in read_dataset(d / "cluener" / "dev.jsonl")[:200]]
    levels = [int(x) for x in args.levels.split(",")]
    model_dir = resolve_model(args.model, merge=merge_adapter)
    RESULTS.mkdir(parents=True, exist_ok=True)
    REPORTS.mkdir(parents=True, exist_ok=True)
    data = {"model": model_dir.name, "direct": asyncio.run(direct_phase(model_dir, pool, levels))}
    data["grpc"], data["singles_vs_batch"] = asyncio.run(grpc_phase(model_dir, pool, levels))
    write_results(RESULTS / "service.json", data)
    plot(data, REPORTS / "service.png")
    print(report(data))


if __name__ == "__main__":
    main()
