"""The tuned default model against the zero-shot base, on the same sentences, through the same engine settings.

For each arm (``zero-shot``: the base model with the v1 preset cards; ``tuned``: the tuned default with its v2
open-label card) the script loads the model into vLLM once, then scores CLUENER dev and CoNLL-2003 testb:
strict span micro/macro F1, parse rate, sentences per second and generated tokens per answer, with the prefix
cache emptied before each timed pass. CoNLL's tags are named in words for the tuned model (PER=person, ...),
the names it was tuned with; the zero-shot arm gets CoNLL's own preset. Both arms see the same sentences.

With ``--full`` the tuned model, in the same engine load, is also scored on the whole of both sets (F1 only:
the speed comparison is the one on the first ``--n`` sentences).

Run: ``python bench/bench_default.py [--tuned MODEL_OR_DIR] [--n 200] [--full]``; writes
bench/results/default-model.json and bench/reports/default-model.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import write_results  # noqa: E402
from nerve.ner.labels import CONLL2003_WORDS as CONLL_WORDS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "default-model.json"
REPORT = ROOT / "bench" / "reports" / "default-model.md"


def _sets(n: int):
    from dataclasses import replace

    from nerve.ner.readers import read_dataset
    from nerve.ner.types import Example
    from nerve.paths import datasets_dir

    d = datasets_dir()
    if d is None:
        raise SystemExit("the shared datasets are not available (set NERVE_DATASETS)")
    cluener = read_dataset(d / "cluener" / "dev.jsonl")
    conll = read_dataset(d / "conll2003" / "eng.testb")
    if n:
        cluener, conll = cluener[:n], conll[:n]
    words = [Example(ex.text, [replace(e, label=CONLL_WORDS[e.label]) for e in ex.entities], ex.id) for ex in conll]
    return {"cluener-dev": cluener, "conll-testb": conll, "conll-testb-words": words}


def _score(model_dir: Path, passes: list[tuple[str, object, list, list[str] | None]]) -> dict:
    """Load ``model_dir`` once; for each (name, card, examples, labels) empty the prefix cache and score."""
    import asyncio

    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.extraction import Extractor, Limits, evaluate

    async def main() -> dict:
        engine = await VllmEngine.start(EngineConfig(model=str(model_dir)))
        out = {"dtype": engine.dtype.dtype, "engine": engine.version}
        try:
            for name, card, examples, labels in passes:
                extractor = Extractor(engine, card, limits=Limits(max_text_chars=1 << 20))
                await extractor.warm_up()
                await engine.reset_prefix_cache()
                t0 = time.perf_counter()
                res = await evaluate(extractor, examples, labels=labels)
                wall = time.perf_counter() - t0
                tokens = [r.usage.completion_tokens for r in res.predictions]
                prompt = [r.usage.prompt_tokens for r in res.predictions]
                rep = res.report
                out[name] = {
                    "examples": len(examples), "micro_f1": rep.micro.f1, "macro_f1": rep.macro.f1,
                    "micro_precision": rep.micro.precision, "micro_recall": rep.micro.recall,
                    "parse_rate": rep.parse_rate, "hallucination_rate": rep.hallucination_rate,
                    "per_type_f1": {k: v.f1 for k, v in rep.labels.items()},
                    "wall_seconds": wall, "sentences_per_second": len(examples) / wall,
                    "completion_tokens_per_answer": sum(tokens) / len(tokens),
                    "prompt_tokens_per_example": sum(prompt) / len(prompt),
                    "completion_tokens_per_second": sum(tokens) / wall,
                }
                print(f"{model_dir.name} {name}: micro F1 {rep.micro.f1:.3f}, {len(examples) / wall:.2f} sent/s",
                      flush=True)
        finally:
            engine.close()
        return out

    return asyncio.run(main())


def run(tuned: str, base: str, n: int, full: bool = False) -> dict:
    from nerve.hardware import describe_machine
    from nerve.models import resolve_model
    from nerve.ner.card import TaskCard
    from nerve.tuning.export import merge_adapter

    sets = _sets(n)
    whole = _sets(0) if full else None
    base_dir, tuned_dir = resolve_model(base, merge=merge_adapter), resolve_model(tuned, merge=merge_adapter)
    tuned_card = TaskCard.load(tuned_dir)
    results = {
        "machine": describe_machine(),
        "base": base, "tuned": tuned, "n": n,
        "zero-shot": _score(base_dir, [
            ("cluener-dev", TaskCard.preset("cluener"), sets["cluener-dev"], None),
            ("conll-testb", TaskCard.preset("conll2003"), sets["conll-testb"], None),
        ]),
        "tuned-model": _score(tuned_dir, [
            ("cluener-dev", tuned_card, sets["cluener-dev"], TaskCard.preset("cluener").labels.names),
            ("conll-testb", tuned_card, sets["conll-testb-words"], list(CONLL_WORDS.values())),
        ] + ([
            ("cluener-dev-full", tuned_card, whole["cluener-dev"], TaskCard.preset("cluener").labels.names),
            ("conll-testb-full", tuned_card, whole["conll-testb-words"], list(CONLL_WORDS.values())),
        ] if whole else [])),
    }
    write_results(RESULTS, results)
    return results


def report(results: dict) -> str:
    z, t = results["zero-shot"], results["tuned-model"]
    cpu = results["machine"]["cpu"]
    lines = [
        "# The tuned default against the zero-shot base",
        "",
        f"Written by `bench/bench_default.py` from `bench/results/default-model.json`. Machine: {cpu['model']}, "
        f"{cpu['cores']} cores, flags {', '.join(cpu['flags'])}; dtype {t['dtype']} ({t['engine']}). "
        f"First {results['n'] or 'all'} sentences of each set, the same for both models; strict span micro F1 "
        "through the served engine (constrained decoding, xgrammar), prefix cache emptied before each pass.",
        "",
        "| set | model | micro F1 | macro F1 | parse rate | sentences/s | tokens/answer | prompt tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("cluener-dev", "conll-testb"):
        for arm, r in ((f"{results['base']} zero-shot (v1)", z[name]), (f"{results['tuned']} (v2)", t[name])):
            lines.append(f"| {name} | {arm} | {r['micro_f1']:.3f} | {r['macro_f1']:.3f} | {r['parse_rate']:.3f} | "
                         f"{r['sentences_per_second']:.2f} | {r['completion_tokens_per_answer']:.1f} | "
                         f"{r['prompt_tokens_per_example']:.0f} |")
    lines += ["", "Ratios (tuned / zero-shot):", ""]
    for name in ("cluener-dev", "conll-testb"):
        a, b = z[name], t[name]
        lines.append(f"- {name}: sentences/s x{b['sentences_per_second'] / a['sentences_per_second']:.2f}, "
                     f"generated tokens/s x{b['completion_tokens_per_second'] / a['completion_tokens_per_second']:.2f}, "
                     f"micro F1 {a['micro_f1']:.3f} -> {b['micro_f1']:.3f}")
    full = [name for name in ("cluener-dev-full", "conll-testb-full") if name in t]
    if full:
        lines += ["", "The tuned model on the whole of each set (same engine load; targets: CLUENER dev >= 0.75, CoNLL "
                  "testb >= 0.85):", "", "| set | sentences | micro F1 | macro F1 | precision | recall | parse rate |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name in full:
            r = t[name]
            lines.append(f"| {name.removesuffix('-full')} | {r['examples']} | {r['micro_f1']:.3f} | {r['macro_f1']:.3f} | "
                         f"{r['micro_precision']:.3f} | {r['micro_recall']:.3f} | {r['parse_rate']:.3f} |")
    lines += ["", "Per-type F1 of the tuned model" + (" (whole sets):" if full else ":"), ""]
    for name in full or ("cluener-dev", "conll-testb"):
        lines.append(f"- {name.removesuffix('-full')}: " + ", ".join(f"{k} {v:.2f}" for k, v in t[name]["per_type_f1"].items()))
    text = "\n".join(lines) + "\n"
    REPORT.write_text(text, encoding="utf-8")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tuned", default="default", help="Tuned model: registry name or checkpoint folder.")
    ap.add_argument("--base", default="qwen2.5-coder-0.5b-instruct", help="Zero-shot base model.")
    ap.add_argument("--n", type=int, default=200, help="Sentences per set for the comparison (0: all).")
    ap.add_argument("--full", action="store_true", help="Also score the tuned model on the whole of both sets.")
    ap.add_argument("--report-only", action="store_true", help="Rewrite the report from the results file.")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if args.report_only else run(args.tuned, args.base, args.n, args.full)
    print(report(results))


if __name__ == "__main__":
    main()
