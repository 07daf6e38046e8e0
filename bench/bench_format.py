"""Tokens per example of the two task formats: nerve-ner-v1 (zero-shot) against nerve-ner-v2 (tuned checkpoints).

For CLUENER dev and CoNLL-2003 testb, every example is rendered by the same function training and serving use
(``nerve.ner.prompts.render_training_pair``, the Qwen2.5 chat template) with the dataset's full label list: v1 with
the presets' label descriptions and object answers, v2 with label names only and [label, text] pair answers
(CoNLL's tags named in words, as the tuned default is trained). Prompt and completion tokens are counted with
the Qwen tokenizer; the completion includes the end-of-turn token.

Run: ``python bench/bench_format.py``; writes bench/results/format-tokens.json and bench/reports/format.md.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import write_results  # noqa: E402
from nerve.ner.labels import CONLL2003_WORDS as CONLL_WORDS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "format-tokens.json"
REPORT = ROOT / "bench" / "reports" / "format.md"


def measure() -> dict:
    from transformers import AutoTokenizer

    from nerve.models import resolve_model
    from nerve.ner.card import TaskCard
    from nerve.ner.labels import LabelSet
    from nerve.ner.prompts import render_training_pair
    from nerve.ner.readers import read_dataset
    from nerve.paths import datasets_dir

    d = datasets_dir()
    if d is None:
        raise SystemExit("the shared datasets are not available (set NERVE_DATASETS)")
    tok = AutoTokenizer.from_pretrained(resolve_model("qwen2.5-coder-0.5b-instruct"))
    sets = {
        "cluener-dev": (read_dataset(d / "cluener" / "dev.jsonl"), "cluener", {}),
        "conll-testb": (read_dataset(d / "conll2003" / "eng.testb"), "conll2003", CONLL_WORDS),
    }
    out: dict = {"tokenizer": "qwen2.5-coder-0.5b-instruct"}
    for name, (examples, preset, words) in sets.items():
        v1 = TaskCard.preset(preset)
        v2 = TaskCard(labels=LabelSet.from_names([words.get(n, n) for n in v1.labels.names]), template="nerve-ner-v2")
        row = {"examples": len(examples)}
        for fmt, card, rename in (("v1", v1, {}), ("v2", v2, words)):
            prompt, answer = [], []
            for ex in examples:
                ents = [replace(e, label=rename.get(e.label, e.label)) for e in ex.entities]
                pair = render_training_pair(tok, card, ex.text, ents)
                prompt.append(len(tok(pair.prompt, add_special_tokens=False).input_ids))
                answer.append(len(tok(pair.completion, add_special_tokens=False).input_ids))
            row[fmt] = {"prompt_mean": statistics.mean(prompt), "answer_mean": statistics.mean(answer),
                        "total_mean": statistics.mean(p + a for p, a in zip(prompt, answer, strict=True)),
                        "answer_max": max(answer)}
        row["v2_over_v1"] = row["v2"]["total_mean"] / row["v1"]["total_mean"]
        out[name] = row
    write_results(RESULTS, out)
    return out


def report(r: dict) -> str:
    lines = ["# Task formats: tokens per example", "",
             "Written by `bench/bench_format.py` from `bench/results/format-tokens.json`: every example of the set "
             f"rendered with its full label list, counted with the {r['tokenizer']} tokenizer (prompt through the "
             "chat template; answer with its end-of-turn token).", "",
             "| set | examples | v1 prompt | v1 answer | v1 total | v2 prompt | v2 answer | v2 total | v2 / v1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("cluener-dev", "conll-testb"):
        x = r[name]
        a, b = x["v1"], x["v2"]
        lines.append(f"| {name} | {x['examples']} | {a['prompt_mean']:.1f} | {a['answer_mean']:.1f} | "
                     f"{a['total_mean']:.1f} | {b['prompt_mean']:.1f} | {b['answer_mean']:.1f} | {b['total_mean']:.1f} | "
                     f"{x['v2_over_v1']:.2f} |")
    text = "\n".join(lines) + "\n"
    REPORT.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    print(report(json.loads(RESULTS.read_text()) if "--report-only" in sys.argv else measure()))
