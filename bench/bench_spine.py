"""Benchmarks of the extraction path (results in bench/results/, report in bench/reports/spine.md).

Stages (each writes bench/results/<stage>.json; `report` turns them into Markdown and plots):

* ``hf``: the way earlier NER projects served such models (transformers ``generate`` one sentence at a time,
  unconstrained, greedy, then ``json.loads``; scored strictly and leniently) against nerve, in one run,
  interleaved, on the same sentences; same model and prompt.
* ``vllm``: nerve's path (vLLM AsyncLLM, all sentences submitted at once, xgrammar JSON schema), then the
  same sentences unconstrained, and the first-request (grammar compile) versus repeat-request latency.
* ``overhead``: the schema's cost per token, against unconstrained runs forced to the same answer lengths.
* ``mask``: applying grammar bitmasks to CPU logits, nerve's way vs vLLM's, on real bitmasks (no engine).
* ``backends``: xgrammar against guidance in one run (two engines, same settings, interleaved), then outlines.
* ``grounded``: schema decoding vs grounded decoding (entity texts restricted to input substrings) on
  CLUENER dev and CoNLL testb, interleaved on one engine: speed, F1, hallucination rate.

Every comparison runs its arms in one process on the same sentences, chunk by chunk in alternating order,
with vLLM's prefix cache emptied before every timed run.
* ``zeroshot``: the full CLUENER dev set and CoNLL-2003 testb, with per-type F1 reports.

Run: ``python bench/bench_spine.py --stages hf,vllm,backends,grounded,report [--n 200] [--hf-n 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPORTS = ROOT / "bench" / "reports"
sys.path.insert(0, str(ROOT))

from bench.record import write_results  # noqa: E402


def datasets() -> Path:
    from nerve.paths import datasets_dir

    d = datasets_dir()
    if d is None:
        raise SystemExit("the shared datasets are not available (set NERVE_DATASETS); nothing to benchmark")
    return d


def cluener_dev(n: int | None = None):
    from nerve.ner.readers import read_dataset

    ex = read_dataset(datasets() / "cluener" / "dev.jsonl")
    return ex[:n] if n else ex


def save(stage: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results(RESULTS / f"{stage}.json", data)
    print(f"[{stage}] saved", json.dumps({k: v for k, v in data.items() if not isinstance(v, dict | list)}))


def card_for(model_dir: Path, preset: str):
    from nerve.ner.card import TaskCard

    return TaskCard.preset(preset, chat_template_sha256=TaskCard.load(model_dir).chat_template_sha256)


def rescore(examples, results, labels) -> dict:
    """One summary over several timed chunks (``results`` are the chunks' ExtractionResults, in order)."""
    from nerve.ner.scoring import Scorer

    s = Scorer(labels=labels)
    for ex, r in zip(examples, results, strict=True):
        s.add(ex.entities, r.entities, parsed=r.parsed, hallucinated=[m.label for m in r.hallucinated])
    rep = s.report()
    return {"parse_rate": rep.parse_rate, "micro_f1": rep.micro.f1, "hallucination_rate": rep.hallucination_rate,
            "entities_found": rep.predicted, "finish_length": sum(r.finish_reason == "length" for r in results),
            "report": rep.to_dict()}


def chunked(examples, chunks: int) -> list:
    size = -(-len(examples) // chunks)
    return [examples[i:i + size] for i in range(0, len(examples), size)]


def stage_hf(model_dir: Path, n: int, max_new_tokens: int, chunks: int = 2, hf_dtype: str = "auto") -> None:
    """The earlier way of serving against nerve's, in one run on the same sentences.

    Baseline: transformers ``generate`` one sentence at a time, unconstrained, greedy, in the dtype it decodes
    fastest in on this CPU (``hf_dtype="auto"`` probes bfloat16 and float32), scored strictly
    (``json.loads`` and the task's parser, as a client without nerve would) and leniently (markdown fences
    stripped, entities with unknown labels skipped: ``bench.analysis.parse_lenient``). nerve: the same
    sentences submitted at once to vLLM under the JSON schema. The sentences are split into chunks and the two
    arms alternate (which goes first alternates too); the prefix cache is emptied before every nerve run and
    the schemas the sentences use are compiled before timing (the first-request compile time is in ``vllm``).
    The raw baseline answers are kept in the results file.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.analysis import parse_lenient
    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.extraction import Extractor
    from nerve.ner.parsing import AnswerParseError, ground, parse_answer
    from nerve.ner.prompts import render_prompt
    from nerve.ner.scoring import Scorer

    torch.set_num_threads(2)
    examples = cluener_dev(n)
    card = card_for(model_dir, "cluener")
    labels = card.labels.names
    tok = AutoTokenizer.from_pretrained(model_dir)
    probe_ids = tok(render_prompt(tok, card, examples[0].text), return_tensors="pt", add_special_tokens=False)

    def decode_speed(m) -> float:
        """Generated tokens/s of 16 forced tokens after the first prompt (after one untimed call)."""
        with torch.inference_mode():
            m.generate(**probe_ids, do_sample=False, max_new_tokens=2, min_new_tokens=2)
            t0 = time.perf_counter()
            m.generate(**probe_ids, do_sample=False, max_new_tokens=16, min_new_tokens=16)
        return 16 / (time.perf_counter() - t0)

    # The baseline gets the dtype transformers decodes fastest in on this CPU (CPUs differ: bf16 can be native
    # or emulated); the probe's figures are kept with the results.
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32}
    candidates = list(dtypes) if hf_dtype == "auto" else [hf_dtype]
    probe, model, chosen = {}, None, candidates[0]
    for name in candidates:
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtypes[name]).eval()
        probe[name] = decode_speed(m) if len(candidates) > 1 else None
        if model is None or probe[name] > probe[chosen]:
            model, chosen = m, name
        print(f"  [hf] {name}: {probe[name]} tokens/s", flush=True)
    del m  # the slower one, if two were probed

    def hf_arm(part) -> tuple[float, list[str], list[int]]:
        raws, counts = [], []
        t0 = time.perf_counter()
        for ex in part:
            ids = tok(render_prompt(tok, card, ex.text), return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens)
            new = out[0][ids["input_ids"].shape[1]:]
            counts.append(len(new))
            raws.append(tok.decode(new, skip_special_tokens=True))
        return time.perf_counter() - t0, raws, counts

    async def main() -> dict:
        engine = await VllmEngine.start(EngineConfig(model=str(model_dir)))
        try:
            ex = Extractor(engine, card)
            shapes = {ex.prepare(e.text).spec.key: e.text for e in examples}
            await asyncio.gather(*(ex.extract(t) for t in shapes.values()))
            hf_arm(examples[:1])  # the baseline's first call pays its own one-off costs before timing too
            hf = {"wall_seconds": 0.0, "answers": [], "tokens": []}
            nv = {"wall_seconds": 0.0, "results": [], "per_chunk": []}
            for i, part in enumerate(chunked(examples, chunks)):
                arms = ("hf", "nerve") if i % 2 == 0 else ("nerve", "hf")
                row = {"sentences": len(part), "first": arms[0]}
                for arm in arms:
                    if arm == "hf":
                        dt, raws, counts = hf_arm(part)
                        hf["wall_seconds"] += dt
                        hf["answers"] += raws
                        hf["tokens"] += counts
                        row["hf_seconds"] = dt
                    else:
                        await engine.reset_prefix_cache()
                        t0 = time.perf_counter()
                        res = await ex.extract_many([e.text for e in part])
                        dt = time.perf_counter() - t0
                        nv["wall_seconds"] += dt
                        nv["results"] += res
                        row["nerve_seconds"] = dt
                nv["per_chunk"].append(row)
                print(f"  chunk {i}: hf {row['hf_seconds']:.0f} s, nerve {row['nerve_seconds']:.0f} s", flush=True)
            return {"hf": hf, "nerve": nv}
        finally:
            engine.close()

    runs = asyncio.run(main())
    hf, nv = runs["hf"], runs["nerve"]
    strict, lenient = Scorer(labels=labels), Scorer(labels=labels)
    skipped = 0
    for e, raw in zip(examples, hf["answers"], strict=True):
        try:
            json.loads(raw)
            g = ground(e.text, parse_answer(raw, labels))
            strict.add(e.entities, g.entities, parsed=True, hallucinated=[m.label for m in g.hallucinated])
        except (json.JSONDecodeError, AnswerParseError):
            strict.add(e.entities, [], parsed=False)
        read = parse_lenient(raw, labels)
        if read is None:
            lenient.add(e.entities, [], parsed=False)
        else:
            skipped += read[1]
            g = ground(e.text, read[0])
            lenient.add(e.entities, g.entities, parsed=True, hallucinated=[m.label for m in g.hallucinated])
    srep, lrep = strict.report(), lenient.report()
    baseline = {"sentences": len(examples), "wall_seconds": hf["wall_seconds"],
                "sentences_per_second": len(examples) / hf["wall_seconds"], "completion_tokens": sum(hf["tokens"]),
                "tokens_per_second": sum(hf["tokens"]) / hf["wall_seconds"], "max_new_tokens": max_new_tokens,
                "finish_length": sum(c >= max_new_tokens for c in hf["tokens"]),
                "strict": {"parse_rate": srep.parse_rate, "micro_f1": srep.micro.f1, "report": srep.to_dict()},
                "lenient": {"parse_rate": lrep.parse_rate, "micro_f1": lrep.micro.f1,
                            "entities_skipped": skipped, "report": lrep.to_dict()},
                "answers": hf["answers"], "answer_tokens": hf["tokens"]}
    nerve = summarize(examples, nv["results"], nv["wall_seconds"], labels)
    baseline.update(torch_threads=torch.get_num_threads(), dtype=chosen, dtype_probe_tokens_per_second=probe)
    save("hf", {"sentences": len(examples), "chunks": chunks, "per_chunk": nv["per_chunk"], "baseline": baseline,
                "nerve": nerve})


async def run_extractor(engine, card, examples, constrained=True, grounded=False):
    from nerve.extraction import Extractor, evaluate

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
    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.extraction import Extractor

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

    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.extraction import Extractor

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

    from nerve.engines.cpu_plugin import grammar_mask_functions
    from nerve.ner.schema import output_spec

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


async def timed_extract(engine, extractor, part) -> tuple[float, list]:
    """Extract ``part`` at once from a cold prefix cache: the wall time and the results."""
    await engine.reset_prefix_cache()
    t0 = time.perf_counter()
    res = await extractor.extract_many([e.text for e in part])
    return time.perf_counter() - t0, res


def summarize(examples, results, wall: float, labels) -> dict:
    toks = sum(r.usage.completion_tokens for r in results)
    return {"sentences": len(examples), "wall_seconds": wall, "sentences_per_second": len(examples) / wall,
            "completion_tokens": toks, "tokens_per_second": toks / wall, **rescore(examples, results, labels)}


async def alternate(arms: dict, examples, chunks: int) -> tuple[dict, list[dict]]:
    """Run every arm (name -> (engine, extractor)) on the same chunks of ``examples``, interleaved: chunk by chunk,
    each arm in turn, the order rotating from chunk to chunk, the prefix cache emptied before every run."""
    walls = dict.fromkeys(arms, 0.0)
    results: dict[str, list] = {name: [] for name in arms}
    per_chunk = []
    names = list(arms)
    for i, part in enumerate(chunked(examples, chunks)):
        order = names[i % len(names):] + names[:i % len(names)]
        row = {"sentences": len(part), "order": order}
        for name in order:
            engine, extractor = arms[name]
            dt, res = await timed_extract(engine, extractor, part)
            walls[name] += dt
            results[name] += res
            row[f"{name}_seconds"] = dt
        per_chunk.append(row)
        print(f"  chunk {i}: " + ", ".join(f"{k} {row[f'{k}_seconds']:.1f} s" for k in order), flush=True)
    return {name: (walls[name], results[name]) for name in arms}, per_chunk


async def warm_schemas(extractor, examples) -> int:
    """Compile the grammar of every schema size the examples use (steady decoding is what is timed)."""
    shapes = {extractor.prepare(e.text).spec.key: e.text for e in examples}
    await asyncio.gather(*(extractor.extract(t) for t in shapes.values()))
    return len(shapes)


def stage_backends(model_dir: Path, n: int, chunks: int, outlines_cap: float) -> None:
    """xgrammar against guidance in one run (both engines up, same settings, chunks interleaved), then outlines.

    outlines compiles a schema into one regular expression: with the bounds unrolled it exceeds vLLM's compile
    limit, so nerve gives it the schema without bounds (``items_in_schema=False``). That run gets the same
    sentences and ``outlines_cap`` seconds; what finished by then is recorded, the rest is aborted. Then one
    request with the bounded schema shows whether outlines can compile it.
    """
    from nerve.engines.vllm import EngineConfig, GenerationRequest, VllmEngine
    from nerve.extraction import Extractor
    from nerve.ner.schema import output_spec

    examples = cluener_dev(n)
    card = card_for(model_dir, "cluener")
    labels = card.labels.names

    async def first_requests(ex, probe: str) -> dict:
        t0 = time.perf_counter()
        await ex.extract(probe)
        first = time.perf_counter() - t0
        repeats = []
        for _ in range(3):
            t0 = time.perf_counter()
            await ex.extract(probe)
            repeats.append(time.perf_counter() - t0)
        return {"first_request_seconds": first, "repeat_request_seconds": sorted(repeats)[1]}

    async def compared() -> dict:
        engines, arms, info = {}, {}, {}
        try:
            for b in ("xgrammar", "guidance"):
                t0 = time.perf_counter()
                engines[b] = await VllmEngine.start(EngineConfig(model=str(model_dir), structured_backend=b))
                ex = Extractor(engines[b], card)
                info[b] = {"engine_load_seconds": time.perf_counter() - t0,
                           **await first_requests(ex, "Warm-up sentence: Alice Smith visited Paris.")}
                info[b]["schemas"] = await warm_schemas(ex, examples)
                arms[b] = (engines[b], ex)
            runs, per_chunk = await alternate(arms, examples, chunks)
        finally:
            for e in engines.values():
                e.close()
        return {"arms": {b: {**info[b], **summarize(examples, res, wall, labels)} for b, (wall, res) in runs.items()},
                "per_chunk": per_chunk}

    async def outlines() -> dict:
        engine = await VllmEngine.start(EngineConfig(model=str(model_dir), structured_backend="outlines"))
        try:
            ex = Extractor(engine, card)
            await engine.reset_prefix_cache()
            t0 = time.perf_counter()
            tasks = [asyncio.ensure_future(ex.extract(e.text)) for e in examples]
            done, pending = await asyncio.wait(tasks, timeout=outlines_cap)
            stopped = time.perf_counter() - t0
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            finished = [t.result() for t in done if t.exception() is None]
            unbounded = {"sentences": len(examples), "cap_seconds": outlines_cap, "stopped_after_seconds": stopped,
                         "finished": len(finished), "failed": sum(t.exception() is not None for t in done),
                         "finish_length": sum(r.finish_reason == "length" for r in finished),
                         "parsed": sum(r.parsed for r in finished),
                         "completion_tokens": sum(r.usage.completion_tokens for r in finished)}
            print(f"  outlines without bounds: {len(finished)} of {len(examples)} finished in {stopped:.0f} s", flush=True)
            text = examples[0].text
            bounded = output_spec(card.labels, card.bounds, text)
            ids = ex.prepare(text).request.prompt_token_ids
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(engine.generate(GenerationRequest(ids, bounded.schema, bounded.max_tokens)),
                                       timeout=outlines_cap)
                bounded_run = {"compiled": True, "seconds": time.perf_counter() - t0}
            except Exception as exc:  # noqa: BLE001 - a schema the backend cannot compile is a result
                bounded_run = {"compiled": False, "seconds": time.perf_counter() - t0,
                               "error": f"{type(exc).__name__}: {exc}"[:500]}
            return {"unbounded": unbounded, "bounded_schema": bounded_run}
        finally:
            engine.close()

    data = {"sentences": len(examples), "chunks": chunks, **asyncio.run(compared())}
    try:
        data["outlines"] = asyncio.run(outlines())
    except Exception as exc:  # noqa: BLE001 - an engine that cannot start with outlines is a result too
        data["outlines"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    save("backends", data)


def stage_grounded(model_dir: Path, n: int, chunks: int) -> None:
    """Schema decoding vs grounded decoding (entity texts restricted to substrings of the input).

    One engine per data set serves both modes, interleaved over the same chunks, the prefix cache emptied
    before every timed run (else the second mode finds the first one's prompts cached and skips their prefill).
    The schema grammars are compiled before timing, as a running server has them; grounded grammars are
    compiled per request, inside the timed runs.
    """
    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.extraction import Extractor

    out = {"chunks": chunks}
    for preset, examples in (("cluener", cluener_dev(n)), ("conll2003", conll_testb(n))):
        card = card_for(model_dir, preset)

        async def main(card=card, examples=examples) -> dict:
            engine = await VllmEngine.start(EngineConfig(model=str(model_dir)))
            try:
                schema, grounded = Extractor(engine, card), Extractor(engine, card, grounded=True)
                await warm_schemas(schema, examples)
                await grounded.extract("Warm-up sentence: Alice Smith visited Paris.")
                runs, per_chunk = await alternate({"schema": (engine, schema), "grounded": (engine, grounded)},
                                                  examples, chunks)
            finally:
                engine.close()
            return {**{m: summarize(examples, res, wall, card.labels.names) for m, (wall, res) in runs.items()},
                    "per_chunk": per_chunk}

        out[preset] = asyncio.run(main())
    save("grounded", out)


def conll_testb(n: int | None = None):
    from nerve.ner.readers import read_dataset

    ex = read_dataset(datasets() / "conll2003" / "eng.testb")
    return ex[:n] if n else ex


def stage_zeroshot(model_dir: Path) -> None:
    from nerve.engines.vllm import EngineConfig, VllmEngine
    from nerve.ner.readers import read_dataset
    from nerve.reports import write_report

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
    ap.add_argument("--hf-n", type=int, default=60,
                    help="CLUENER dev sentences for transformers vs nerve (the baseline decodes one at a time)")
    ap.add_argument("--hf-dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                    help="baseline dtype; auto: the faster of the two in a short decoding probe")
    ap.add_argument("--grounded-n", type=int, default=60, help="sentences per data set for the grounded stage")
    ap.add_argument("--chunks", type=int, default=2,
                    help="chunks the arms of a comparison alternate over (hf, backends, grounded)")
    ap.add_argument("--outlines-cap", type=float, default=90.0,
                    help="seconds the outlines run (schema without bounds) gets before it is stopped")
    args = ap.parse_args()
    from nerve.models import resolve_model
    from nerve.tuning.export import merge_adapter

    model_dir = resolve_model(args.model, merge=merge_adapter)
    for stage in args.stages.split(","):
        if stage == "hf":
            stage_hf(model_dir, args.hf_n, args.max_new_tokens, args.chunks, args.hf_dtype)
        elif stage == "vllm":
            stage_vllm(model_dir, args.n)
        elif stage == "backends":
            stage_backends(model_dir, args.n, args.chunks, args.outlines_cap)
        elif stage == "overhead":
            stage_overhead(model_dir, args.n)
        elif stage == "mask":
            stage_mask(model_dir)
        elif stage == "grounded":
            stage_grounded(model_dir, args.grounded_n, args.chunks)
        elif stage == "zeroshot":
            stage_zeroshot(model_dir)
        elif stage == "report":
            from bench.report_spine import write

            write()
        else:
            raise SystemExit(f"unknown stage {stage}")


if __name__ == "__main__":
    main()
