"""What a new output schema costs, and what ``max_new_schemas_per_minute`` lets a client spend on them.

Every request whose output schema (its label set and its bounds) the server has not seen is one grammar
compilation in vLLM's engine process. A client can force many: label subsets of an open-label card times the
bounds that follow the text length. This benchmark compiles such schemas the way vLLM's xgrammar backend does
(``xgr.GrammarCompiler(max_threads=8)``, ``compile_json_schema(any_whitespace=False, separators=(",", ":"))``,
the default model's tokenizer), with the compiler's cache off so that each one is a cold compilation, and
reports wall and CPU time per compilation, the compiled grammar's memory, and the CPU share that the server's
limit allows at its default and at ten times less and more.

Schemas: ``--schemas`` distinct ones, each a random subset (1 to 13 names) of the tuned default's labels or,
for a third of them, of invented open labels, with bounds from a random text length (``output_spec`` with
the text, as serving builds them) and a random ``max_entities``.

Run: ``python bench/bench_grammar.py [--schemas 120]``; writes bench/results/grammar.json and
bench/reports/grammar.md; ``--report-only`` rewrites the report from the results file.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "grammar.json"
REPORT = ROOT / "bench" / "reports" / "grammar.md"
LIMITS = (10, 20, 60, 600)
"""``max_new_schemas_per_minute`` values the report prices (with the server's default and the overlays')."""


def schemas(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct output schemas a client could ask for, with what made each."""
    from nerve.models import resolve_model
    from nerve.ner.card import TaskCard
    from nerve.ner.labels import LabelSet
    from nerve.ner.prompts import answer_format
    from nerve.ner.schema import output_spec

    card = TaskCard.load(resolve_model("default"))
    names = card.labels.names
    invented = [f"label_{i}" for i in range(24)]
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        pool = invented if rng.random() < 1 / 3 else names
        labels = LabelSet.from_names(rng.sample(pool, rng.randint(1, min(13, len(pool)))))
        text = "x" * rng.randint(4, 400)
        max_entities = rng.choice([None, rng.randint(1, card.bounds.max_entities)])
        spec = output_spec(labels, card.bounds, text, max_entities, answer_format=answer_format(card))
        key = json.dumps(spec.schema, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append({"labels": len(labels.names), "text_chars": len(text), "max_entities": max_entities,
                    "max_tokens": spec.max_tokens, "schema": spec.schema})
    return out


def measure(n: int, seed: int) -> dict:
    import xgrammar as xgr
    from transformers import AutoConfig, AutoTokenizer

    from nerve.models import resolve_model

    path = resolve_model("default")
    tok = AutoTokenizer.from_pretrained(path)
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=AutoConfig.from_pretrained(path).vocab_size)
    compiler = xgr.GrammarCompiler(info, max_threads=8, cache_enabled=False)
    todo = schemas(n, seed)
    compiler.compile_json_schema(json.dumps(todo[0]["schema"]), any_whitespace=False, separators=(",", ":"))  # warm
    rows = []
    for i, s in enumerate(todo):
        text = json.dumps(s["schema"])
        w0, c0 = time.perf_counter(), time.process_time()
        compiled = compiler.compile_json_schema(text, any_whitespace=False, separators=(",", ":"))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        rows.append({"labels": s["labels"], "text_chars": s["text_chars"], "max_entities": s["max_entities"],
                     "schema_bytes": len(text), "wall_ms": round(wall * 1e3, 2), "cpu_ms": round(cpu * 1e3, 2),
                     "memory_bytes": compiled.memory_size_bytes})
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(todo)} compiled, median {statistics.median(r['wall_ms'] for r in rows):.0f} ms",
                  flush=True)
    return {"tokenizer": path.name, "vocab_size": info.vocab_size, "schemas": len(rows), "seed": seed,
            "compiler": {"max_threads": 8, "cache_enabled": False, "any_whitespace": False},
            "rows": rows, "summary": summarise(rows)}


def summarise(rows: list[dict]) -> dict:
    from nerve.reports import percentile
    wall = [r["wall_ms"] for r in rows]
    cpu = [r["cpu_ms"] for r in rows]
    mem = [r["memory_bytes"] for r in rows]
    return {"wall_ms": {"median": statistics.median(wall), "p95": percentile(wall, 95, method="nearest"), "max": max(wall)},
            "cpu_ms": {"median": statistics.median(cpu), "p95": percentile(cpu, 95, method="nearest"), "max": max(cpu)},
            "memory_bytes": {"median": statistics.median(mem), "max": max(mem)}}


def cpu_share(per_minute: int, cpu_ms: float, cores: int) -> float:
    """The fraction of the machine's CPU that ``per_minute`` compilations of ``cpu_ms`` each take."""
    return per_minute * cpu_ms / 60_000 / cores


def report(data: dict) -> Path:
    s, m = data["summary"], data["machine"]["cpu"]
    cores = m["cores"]
    lines = ["# Grammar compilations: the cost of a new output schema", "",
             f"{data['schemas']} distinct output schemas (label subsets of the tuned default's labels and of invented"
             " open labels, bounds from random text lengths and `max_entities`, built by `output_spec` as serving"
             " builds them), each compiled cold by xgrammar as vLLM's backend compiles them"
             f" (`max_threads` 8, compact JSON), with the {data['tokenizer']} tokenizer ({data['vocab_size']:,}"
             f" tokens). CPU: {m['model']}, {cores} cores. Generated by `bench/bench_grammar.py`; results in"
             " `bench/results/grammar.json`.", "",
             "| per compilation | median | p95 | max |", "|---|---:|---:|---:|",
             f"| wall time, ms | {s['wall_ms']['median']:.0f} | {s['wall_ms']['p95']:.0f} | {s['wall_ms']['max']:.0f} |",
             f"| CPU time (all threads), ms | {s['cpu_ms']['median']:.0f} | {s['cpu_ms']['p95']:.0f} |"
             f" {s['cpu_ms']['max']:.0f} |",
             f"| compiled grammar, KiB | {s['memory_bytes']['median'] / 1024:.0f} | – |"
             f" {s['memory_bytes']['max'] / 1024:.0f} |", "",
             "What `max_new_schemas_per_minute` allows a client that sends nothing but new schemas to spend, at the"
             " median and at the p95 CPU time per compilation:", "",
             f"| max_new_schemas_per_minute | share of the {cores} cores here, median | share, p95 |", "|---:|---:|---:|"]
    from nerve.service.config import ServeConfig

    default = ServeConfig().max_new_schemas_per_minute
    names = {20: ["k8s CPU overlay"], 60: ["k8s GPU overlay"]}
    names.setdefault(default, []).append("the server's default")
    for limit in sorted({*LIMITS, default}):
        mark = f" ({'; '.join(names[limit])})" if limit in names else ""
        lines.append(f"| {limit}{mark} | {cpu_share(limit, s['cpu_ms']['median'], cores):.1%} |"
                     f" {cpu_share(limit, s['cpu_ms']['p95'], cores):.1%} |")
    share = cpu_share(default, s["cpu_ms"]["median"], cores)
    lines += ["", f"A client that sends only new schemas can make the server spend this much CPU on grammars: at the"
              f" server's default ({default} a minute) {share:.0%} of the {cores} cores here. The Kubernetes overlays"
              " set the limit for their nodes (deploy/k8s/overlays/*/config.yaml); set it from the cost above and the"
              " cores the pod has: limit = share x cores x 60 s / CPU seconds per compilation.", "",
              "Beyond the limit a request with a new schema gets RESOURCE_EXHAUSTED (its retry-after is the"
              " bucket's refill); requests with schemas already seen are never limited. The server remembers"
              " the schemas it has seen up to `SCHEMAS_REMEMBERED` (4,096), so that set is bounded too, and vLLM"
              " bounds its compiled-grammar cache by `VLLM_XGRAMMAR_CACHE_MB`.", ""]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    return REPORT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemas", type=int, default=120, help="distinct schemas to compile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from bench/results/grammar.json")
    args = ap.parse_args()
    if not args.report_only:
        write_results(RESULTS, measure(args.schemas, args.seed))
    print(report(json.loads(RESULTS.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
