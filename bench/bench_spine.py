"""Benchmarks of the extraction path (results in bench/results/, report in bench/reports/spine.md).

Stages (each writes bench/results/<stage>.json; `report` turns them into Markdown and plots):

* ``hf``: the way earlier NER projects served such models: transformers ``generate`` one sentence at a time,
  unconstrained, greedy, then ``json.loads``; same model, sentences and prompt as nerve.
* ``vllm``: nerve's path (vLLM AsyncLLM, all sentences submitted at once, xgrammar JSON schema), then the
  same sentences unconstrained, and the first-request (grammar compile) versus repeat-request latency.
* ``overhead``: the schema's cost per token, against unconstrained runs forced to the same answer lengths.
* ``mask``: applying grammar bitmasks to CPU logits, nerve's way vs vLLM's, on real bitmasks (no engine).
* ``backends``: the constrained run with guidance and with outlines.
* ``grounded``: schema decoding vs grounded decoding (entity texts restricted to input substrings) on
  CLUENER dev and CoNLL testb: speed, F1, hallucination rate.
* ``zeroshot``: the full CLUENER dev set and CoNLL-2003 testb, with per-type F1 reports.

Run: ``python bench/bench_spine.py --stages hf,vllm,backends,zeroshot,report [--n 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPORTS = ROOT / "bench" / "reports"
sys.path.insert(0, str(ROOT))


def datasets() -> Path:
    from nerve.paths import datasets_dir

    d = datasets_dir()
    if d is None:
        raise SystemExit("the shared datasets are not available (set NERVE_DATASETS); nothing to benchmark")
    return d


def cluener_dev(n: int | None = None):
    from ner.readers import read_dataset

    ex = read_dataset(datasets() / "cluener" / "dev.jsonl")
    return ex[:n] if n else ex


def save(stage: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    (RESULTS / f"{stage}.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    print(f"[{stage}] saved", json.dumps({k: v for k, v in data.items() if not isinstance(v, dict | list)}))


def card_for(model_dir: Path, preset: str):
    from ner.card import TaskCard

    return TaskCard.preset(preset, chat_template_sha256=TaskCard.load(model_dir).chat_template_sha256)


def score(examples, predictions, parsed, hallucinated, labels):
    from ner.scoring import Scorer

    s = Scorer(labels=labels)
    for ex, pred, ok, hal in zip(examples, predictions, parsed, hallucinated, strict=True):
        s.add(ex.entities, pred, parsed=ok, hallucinated=hal)
    return s.report()


def stage_hf(model_dir: Path, n: int, max_new_tokens: int) -> None:
    import torch
    from rich.progress import track
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ner.parsing import AnswerParseError, ground, parse_answer
    from ner.prompts import render_prompt

    torch.set_num_threads(2)
    examples = cluener_dev(n)
    card = card_for(model_dir, "cluener")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    preds, parsed, hal, gen_tokens, raws = [], [], [], 0, []
    t0 = time.perf_counter()
    for i, ex in enumerate(track(examples, description="transformers generate, batch 1"), 1):
        if i % 25 == 0:
            print(f"  [hf] {i}/{len(examples)} sentences, {gen_tokens} tokens, {time.perf_counter() - t0:.0f} s",
                  flush=True)
        ids = tok(render_prompt(tok, card, ex.text), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens)
        new = out[0][ids["input_ids"].shape[1]:]
        gen_tokens += len(new)
        text = tok.decode(new, skip_special_tokens=True)
        raws.append(text)
        try:
            json.loads(text)
            mentions = parse_answer(text, card.labels.names)
            g = ground(ex.text, mentions)
            preds.append(g.entities)
            parsed.append(True)
            hal.append([m.label for m in g.hallucinated])
        except (json.JSONDecodeError, AnswerParseError):
            preds.append([])
            parsed.append(False)
            hal.append([])
    wall = time.perf_counter() - t0
    rep = score(examples, preds, parsed, hal, card.labels.names)
    save("hf", {"sentences": len(examples), "wall_seconds": wall, "sentences_per_second": len(examples) / wall,
                "completion_tokens": gen_tokens, "tokens_per_second": gen_tokens / wall,
                "parse_rate": rep.parse_rate, "micro_f1": rep.micro.f1, "max_new_tokens": max_new_tokens,
                "unparsed_examples": [r[:200] for r, ok in zip(raws, parsed, strict=True) if not ok][:5],
                "report": rep.to_dict()})


async def run_extractor(engine, card, examples, constrained=True, grounded=False):
    from service.pipeline import Extractor, evaluate

    ex = Extractor(engine, card, constrained=constrained, grounded=grounded)
    t0 = time.perf_counter()
    res = await evaluate(ex, examples)
    wall = time.perf_counter() - t0
    toks = sum(r.usage.completion_tokens for r in res.predictions)
    print(f"  {len(examples)} sentences, constrained={constrained} grounded={grounded}: {wall:.0f} s,"
          f" F1 {res.report.micro.f1:.3f}, parse {res.report.parse_rate:.3f}", flush=True)
    return {"sentences": len(examples), "wall_seconds": wall, "sentences_per_second": len(examples) / wall,
            "completion_tokens": toks, "tokens_per_second": toks / wall, "parse_rate": res.report.parse_rate,
            "micro_f1": res.report.micro.f1, "hallucination_rate": res.report.hallucination_rate,
            "entities_found": res.report.predicted,
            "finish_length": sum(r.finish_reason == "length" for r in res.predictions),
            "report": res.report.to_dict()}, res


def stage_vllm(model_dir: Path, n: int, backend: str = "xgrammar", stage: str = "vllm",
               unconstrained: bool = True) -> None:
    from service.engine import EngineConfig, VllmEngine
    from service.pipeline import Extractor

    examples = cluener_dev(n)
    card = card_for(model_dir, "cluener")

    async def main() -> dict:
        t0 = time.perf_counter()
        engine = await VllmEngine.start(EngineConfig(model=str(model_dir), structured_backend=backend))
        load = time.perf_counter() - t0
        try:
            ex = Extractor(engine, card)
            probe = examples[0].text
            t1 = time.perf_counter()
            await ex.extract(probe)
            first = time.perf_counter() - t1
            repeats = []
            for _ in range(3):
                t1 = time.perf_counter()
                await ex.extract(probe)
                repeats.append(time.perf_counter() - t1)
            out = {"backend": backend, "engine_load_seconds": load, "first_request_seconds": first,
                   "repeat_request_seconds": sorted(repeats)[1]}
            out["constrained"], _ = await run_extractor(engine, card, examples, True)
            if unconstrained:
                await engine.reset_prefix_cache()  # same cold start as the constrained run
                out["unconstrained"], _ = await run_extractor(engine, card, examples, False)
            return out
        finally:
            engine.close()

    data = asyncio.run(main())
    save(stage, data)


def stage_overhead(model_dir: Path, n: int, chunks: int = 4) -> None:
    """Per-token cost of the schema: constrained runs vs unconstrained runs that generate exactly as many tokens.

    The sentences are split into chunks run alternately (constrained, then the same prompts unconstrained with
    ``ignore_eos`` and ``max_tokens`` equal to each constrained answer's length), so both modes do the same
    prefill and decode work and share whatever else the machine is doing. The prefix cache is emptied before
    every timed run: otherwise the second run of a chunk reuses the first run's prompt KV blocks and skips most
    of its prefill. Measured twice, each against its own unconstrained runs: with nerve's CPU grammar mask
    (the default) and with vLLM's own CPU path (``cpu_grammar_mask="vllm"``).
    """
    from dataclasses import replace

    from service.engine import EngineConfig, VllmEngine
    from service.pipeline import Extractor

    examples = cluener_dev(n)
    card = card_for(model_dir, "cluener")

    async def measure(mask: str) -> dict:
        print(f"overhead with cpu_grammar_mask={mask}", flush=True)
        engine = await VllmEngine.start(EngineConfig(model=str(model_dir), cpu_grammar_mask=mask))
        try:
            ex = Extractor(engine, card)
            # Compile every schema the sentences use (one per entity-length bucket) before timing: the
            # first-request compile time is measured by the vllm stage; this measures steady decoding.
            shapes = {ex.prepare(e.text).spec.key: e.text for e in examples}
            await asyncio.gather(*(ex.extract(t) for t in shapes.values()))
            t_con = t_unc = 0.0
            tokens = 0
            per_chunk = []
            answers = []
            size = -(-len(examples) // chunks)
            for i in range(0, len(examples), size):
                reqs = [ex.prepare(e.text).request for e in examples[i:i + size]]
                await engine.reset_prefix_cache()
                t0 = time.perf_counter()
                outs = await asyncio.gather(*(engine.generate(r) for r in reqs))
                dt_con = time.perf_counter() - t0
                same = [replace(r, schema=None, max_tokens=max(1, o.completion_tokens), ignore_eos=True)
                        for r, o in zip(reqs, outs, strict=True)]
                await engine.reset_prefix_cache()  # else the second run finds its prompts' KV blocks cached
                t0 = time.perf_counter()
                outs2 = await asyncio.gather(*(engine.generate(r) for r in same))
                dt_unc = time.perf_counter() - t0
                assert [o.completion_tokens for o in outs] == [max(1, o.completion_tokens) for o in outs2]
                tokens += sum(o.completion_tokens for o in outs)
                answers += [o.text for o in outs]
                t_con += dt_con
                t_unc += dt_unc
                per_chunk.append({"constrained_seconds": dt_con, "unconstrained_seconds": dt_unc,
                                  "overhead": dt_con / dt_unc - 1})
                print(f"  chunk {i // size}: constrained {t_con:.0f} s, unconstrained {t_unc:.0f} s", flush=True)
            return {"cpu_grammar_mask": mask, "schemas": len(shapes), "completion_tokens": tokens, "constrained_seconds": t_con,
                    "unconstrained_seconds": t_unc, "overhead": t_con / t_unc - 1, "per_chunk": per_chunk,
                    "answers": answers}
        finally:
            engine.close()

    runs = {mask: asyncio.run(measure(mask)) for mask in ("nerve", "vllm")}
    differing = sum(a != b for a, b in zip(runs["nerve"].pop("answers"), runs["vllm"].pop("answers"), strict=True))
    nerve = runs["nerve"]
    save("overhead", {"sentences": len(examples), "chunks": chunks, **{k: nerve[k] for k in (
        "schemas", "completion_tokens", "constrained_seconds", "unconstrained_seconds", "overhead", "per_chunk")},
        "answers_differing_between_masks": differing, "vllm_cpu_mask": runs["vllm"]})


def stage_mask(model_dir: Path, repeats: int = 30) -> None:
    """Time one step's bitmask application on CPU logits: vLLM's own function vs nerve's, same inputs.

    The bitmasks are those xgrammar produces while an answer to nerve's CLUENER schema is decoded with the
    model's tokenizer (structure steps allow a handful of tokens, steps inside an entity text almost all).
    """
    from types import SimpleNamespace

    import numpy as np
    import torch
    import xgrammar as xgr
    from transformers import AutoConfig, AutoTokenizer

    from ner.schema import output_spec
    from service.engine import grammar_mask_functions

    vllm_apply, nerve_apply = grammar_mask_functions()
    card = card_for(model_dir, "cluener")
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab))
    masks = []
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    for e in cluener_dev(20):
        grammar = compiler.compile_json_schema(json.dumps(output_spec(card.labels, card.bounds, e.text).schema),
                                               any_whitespace=False, separators=(",", ":"))
        matcher = xgr.GrammarMatcher(grammar)
        answer = json.dumps({"entities": [{"label": x.label, "text": x.text} for x in e.entities]},
                            ensure_ascii=False, separators=(",", ":"))
        for t in tok.encode(answer) + [tok.convert_tokens_to_ids("<|im_end|>")]:
            matcher.fill_next_token_bitmask(bitmask)
            masks.append(bitmask[0].numpy().copy())
            if not matcher.accept_token(t):
                break
    masks = np.stack(masks)
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 8, 32, 64):
        m = masks[rng.integers(0, len(masks), batch)]
        ids = [f"r{i}" for i in range(batch)]
        step = (SimpleNamespace(scheduled_spec_decode_tokens={}),
                SimpleNamespace(structured_output_request_ids=ids, grammar_bitmask=m), SimpleNamespace(req_ids=ids))
        logits = torch.randn(batch, vocab).to(torch.bfloat16)
        times = {}
        results = {}
        for name, fn in (("vllm", vllm_apply), ("nerve", nerve_apply)):
            ts = []
            for _ in range(repeats):
                x = logits.clone()
                t0 = time.perf_counter()
                fn(*step, x)
                ts.append(time.perf_counter() - t0)
            times[name] = float(np.median(ts))
            results[name] = x
        assert torch.equal(results["vllm"], results["nerve"])
        rows.append({"batch": batch, "vllm_ms": 1e3 * times["vllm"], "nerve_ms": 1e3 * times["nerve"],
                     "speedup": times["vllm"] / times["nerve"]})
        print(f"  batch {batch}: vLLM {rows[-1]['vllm_ms']:.2f} ms, nerve {rows[-1]['nerve_ms']:.2f} ms", flush=True)
    save("mask", {"vocab": vocab, "masks": len(masks), "torch_threads": torch.get_num_threads(), "rows": rows})


def stage_grounded(model_dir: Path, n: int) -> None:
    """Schema decoding vs grounded decoding (entity texts restricted to substrings of the input)."""
    from service.engine import EngineConfig, VllmEngine

    out = {}
    for preset, examples in (("cluener", cluener_dev(n)), ("conll2003", conll_testb(n))):
        card = card_for(model_dir, preset)

        async def main(card=card, examples=examples) -> dict:
            engine = await VllmEngine.start(EngineConfig(model=str(model_dir)))
            try:
                schema, _ = await run_extractor(engine, card, examples)
                grounded, _ = await run_extractor(engine, card, examples, grounded=True)
                return {"schema": schema, "grounded": grounded}
            finally:
                engine.close()

        out[preset] = asyncio.run(main())
    save("grounded", out)


def conll_testb(n: int | None = None):
    from ner.readers import read_dataset

    ex = read_dataset(datasets() / "conll2003" / "eng.testb")
    return ex[:n] if n else ex


def stage_zeroshot(model_dir: Path) -> None:
    from ner.readers import read_dataset
    from nerve.reports import write_report
    from service.engine import EngineConfig, VllmEngine

    d = datasets()
    sets = [("cluener-dev", "cluener", d / "cluener" / "dev.jsonl"),
            ("conll2003-testb", "conll2003", d / "conll2003" / "eng.testb")]

    async def main() -> dict:
        engine = await VllmEngine.start(EngineConfig(model=str(model_dir)))
        out = {}
        try:
            for name, preset, path in sets:
                examples = read_dataset(path)
                summary, res = await run_extractor(engine, card_for(model_dir, preset), examples)
                write_report(res.report, REPORTS / "zeroshot", name=f"qwen0.5b-{name}",
                             meta={"model": model_dir.name, "data": path.name, "examples": len(examples),
                                   "decoding": "greedy, xgrammar JSON schema", "wall_seconds": round(summary["wall_seconds"])},
                             latencies=res.latencies)
                out[name] = summary
                print(f"[zeroshot] {name}: micro F1 {summary['micro_f1']:.3f}, parse {summary['parse_rate']:.3f}")
        finally:
            engine.close()
        return out

    save("zeroshot", asyncio.run(main()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="hf,vllm,mask,overhead,backends,grounded,zeroshot,report")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--n", type=int, default=200, help="CLUENER dev sentences for the speed comparisons")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="baseline generate budget")
    args = ap.parse_args()
    from nerve.models import resolve_model

    model_dir = resolve_model(args.model)
    for stage in args.stages.split(","):
        if stage == "hf":
            stage_hf(model_dir, args.n, args.max_new_tokens)
        elif stage == "vllm":
            stage_vllm(model_dir, args.n)
        elif stage in ("backends", "backend-guidance", "backend-outlines"):
            for b in ("guidance", "outlines") if stage == "backends" else (stage.split("-", 1)[1],):
                try:
                    stage_vllm(model_dir, args.n, backend=b, stage=f"backend-{b}", unconstrained=False)
                except Exception as exc:  # noqa: BLE001 - a backend that cannot serve the schema is a result too
                    save(f"backend-{b}", {"backend": b, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        elif stage == "overhead":
            stage_overhead(model_dir, args.n)
        elif stage == "mask":
            stage_mask(model_dir)
        elif stage == "grounded":
            stage_grounded(model_dir, args.n)
        elif stage == "zeroshot":
            stage_zeroshot(model_dir)
        elif stage == "report":
            from bench.report_spine import write

            write()
        else:
            raise SystemExit(f"unknown stage {stage}")


if __name__ == "__main__":
    main()
