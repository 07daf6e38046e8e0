"""The vLLM engine seam and the extraction pipeline, on real engines (tiny random and real small models)."""

from __future__ import annotations

import asyncio

import pytest

from nerve.extraction import Extractor, InputError, Limits, evaluate
from nerve.ner.card import SchemaBounds, TaskCard

pytestmark = pytest.mark.engine

CLUENER_LIKE = [
    "彭小军认为，国内银行现在走的是台湾的发卡模式，先通过跑马圈地再在圈的地里面选择客户，",
    "温格的球队终于又踢了一场经典的比赛，2比1战胜曼联之后枪手仍然留在了夺冠集团之内，",
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn",
    "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。",
    "BRUSSELS 1996-08-22",
    "a" * 300,
    "x",
]


def test_rambling_model_always_parses_under_the_bounded_schema(loop_thread, tiny_engine) -> None:
    """A random model never stops on its own; the finite schema and its budget still force valid JSON."""
    card = TaskCard.load(tiny_engine.config.model)
    ex = Extractor(tiny_engine, card)
    results = loop_thread.run(ex.extract_many(CLUENER_LIKE))
    assert len(results) == len(CLUENER_LIKE)
    for text, r in zip(CLUENER_LIKE, results, strict=True):
        assert r.parsed, r.raw
        assert r.finish_reason == "stop"
        spec = ex.prepare(text).spec
        assert r.usage.completion_tokens <= spec.max_tokens
        assert r.usage.prompt_tokens > 0
        for e in r.entities:
            assert text[e.start:e.end] == e.text
            assert e.label in card.labels


def test_label_subset_and_max_entities(loop_thread, tiny_engine) -> None:
    card = TaskCard.load(tiny_engine.config.model)
    ex = Extractor(tiny_engine, card)
    text = "温格的球队终于又踢了一场经典的比赛"
    r = loop_thread.run(ex.extract(text, labels=["name"], max_entities=1))
    assert r.parsed
    assert len(r.entities) + len(r.hallucinated) + r.duplicates <= 1
    assert all(e.label == "name" for e in r.entities)
    assert all(m.label == "name" for m in r.hallucinated)


def test_bad_inputs_are_rejected_before_the_engine(tiny_engine) -> None:
    card = TaskCard.load(tiny_engine.config.model)
    ex = Extractor(tiny_engine, card, limits=Limits(max_text_chars=100))
    for bad, msg in [("", "empty"), ("   \n", "empty"), ("x" * 101, "limit is 100"), ("a\ud800b", "surrogate")]:
        with pytest.raises(InputError, match=msg):
            ex.prepare(bad)
    with pytest.raises(InputError, match="unknown labels"):
        ex.prepare("hello", labels=["nope"])
    with pytest.raises(InputError, match="max_entities"):
        ex.prepare("hello", max_entities=0)


def test_context_budget_is_checked(loop_thread, tiny_qwen_dir) -> None:
    from dataclasses import replace

    from tests.conftest import start_engine

    engine = start_engine(loop_thread, tiny_qwen_dir, max_model_len=1024)
    try:
        card = TaskCard.load(tiny_qwen_dir)
        with pytest.raises(ValueError, match="too small for the task card's bounds"):
            Extractor(engine, card)  # 24 entities of 64 characters cannot fit in 1024 tokens
        small = Extractor(engine, replace(card, bounds=SchemaBounds(max_entities=2, max_entity_chars=16)))
        with pytest.raises(InputError, match="exceed max_model_len 1024"):
            small.prepare("北京 " * 600)
        r = loop_thread.run(small.extract("北京" * 40))
        assert r.parsed
    finally:
        engine.close()


def test_cancellation_aborts_and_frees_the_engine(loop_thread, tiny_engine) -> None:
    from nerve.engines.vllm import GenerationRequest

    card = TaskCard.load(tiny_engine.config.model)
    ex = Extractor(tiny_engine, card)
    ids = ex.prepare("Peter Blackburn").request.prompt_token_ids
    endless = GenerationRequest(ids, None, 4000)  # unconstrained: runs until cancelled

    async def cancel_one() -> int:
        task = asyncio.ensure_future(tiny_engine.generate(endless))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if tiny_engine.num_unfinished:
                break
        running = tiny_engine.num_unfinished
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if not tiny_engine.num_unfinished:
                break
            await asyncio.sleep(0.05)
        return running

    assert loop_thread.run(cancel_one()) == 1
    assert tiny_engine.num_unfinished == 0
    r = loop_thread.run(ex.extract("Peter Blackburn"))
    assert r.parsed


def test_prefix_cache_hits_and_reset(loop_thread, tiny_engine) -> None:
    """A repeated prompt reuses cached KV blocks; after a reset it is prefilled again (benchmarks rely on it)."""
    card = TaskCard.load(tiny_engine.config.model)
    request = Extractor(tiny_engine, card).prepare("Peter Blackburn visited Brussels .").request

    async def three() -> list[int]:
        await tiny_engine.reset_prefix_cache()
        first = await tiny_engine.generate(request)
        again = await tiny_engine.generate(request)
        assert await tiny_engine.reset_prefix_cache()
        after = await tiny_engine.generate(request)
        return [first.cached_prompt_tokens, again.cached_prompt_tokens, after.cached_prompt_tokens]

    first, again, after = loop_thread.run(three())
    assert first == 0 and after == 0
    assert 0 < again <= len(request.prompt_token_ids)


def test_cpu_grammar_mask_settings_decode_the_same(loop_thread, tiny_engine, tiny_qwen_dir) -> None:
    """vLLM's own CPU bitmask path and nerve's give the same answers (nerve's is the default)."""
    from tests.conftest import start_engine

    assert tiny_engine.config.cpu_grammar_mask == "nerve"
    card = TaskCard.load(tiny_engine.config.model)
    texts = CLUENER_LIKE[:6]
    ours = loop_thread.run(Extractor(tiny_engine, card).extract_many(texts))
    stock = start_engine(loop_thread, tiny_qwen_dir, cpu_grammar_mask="vllm")
    try:
        theirs = loop_thread.run(Extractor(stock, card).extract_many(texts))
    finally:
        stock.close()
    assert [r.raw for r in ours] == [r.raw for r in theirs]
    assert all(r.parsed for r in ours)


def test_chat_template_mismatch_is_refused(tiny_engine) -> None:
    from dataclasses import replace

    card = replace(TaskCard.load(tiny_engine.config.model), chat_template_sha256="0" * 64)
    with pytest.raises(ValueError, match="chat template"):
        Extractor(tiny_engine, card)


@pytest.mark.parametrize("backend", ["guidance", "outlines"])
def test_other_structured_backends_parse(loop_thread, tiny_qwen_dir, backend: str) -> None:
    from tests.conftest import start_engine

    engine = start_engine(loop_thread, tiny_qwen_dir, structured_backend=backend)
    try:
        ex = Extractor(engine, TaskCard.load(tiny_qwen_dir))
        results = loop_thread.run(ex.extract_many(CLUENER_LIKE[:4]))
        if backend == "outlines":  # the list bound is not in outlines' schema (see nerve.ner.schema.output_spec)
            assert all(r.parsed or r.finish_reason == "length" for r in results)
        else:
            assert all(r.parsed for r in results), [r.raw for r in results if not r.parsed]
    finally:
        engine.close()


def test_engine_reports_missing_checkpoint(loop_thread, tmp_path) -> None:
    from nerve.engines.vllm import EngineConfig, EngineError, VllmEngine

    with pytest.raises(EngineError, match="not a checkpoint folder"):
        loop_thread.run(VllmEngine.start(EngineConfig(model=str(tmp_path))))
    with pytest.raises(ValueError, match="structured_backend"):
        EngineConfig(model="x", structured_backend="regex")


@pytest.mark.real_model
def test_real_model_on_both_datasets(loop_thread, qwen_dir, datasets_dir) -> None:
    """Qwen2.5-Coder-0.5B zero-shot through vLLM on a few real sentences of each dataset."""
    from nerve.ner.readers import read_dataset
    from tests.conftest import start_engine

    engine = start_engine(loop_thread, qwen_dir)
    reports = []
    try:
        for preset, path in [("cluener", datasets_dir / "cluener" / "dev.jsonl"),
                             ("conll2003", datasets_dir / "conll2003" / "eng.testb")]:
            examples = read_dataset(path)[:6]
            card = TaskCard.preset(preset, chat_template_sha256=TaskCard.load(qwen_dir).chat_template_sha256)
            res = loop_thread.run(evaluate(Extractor(engine, card), examples))
            assert res.report.parse_rate == 1.0
            assert res.report.examples == 6
            for ex, r in zip(examples, res.predictions, strict=True):
                assert all(ex.text[e.start:e.end] == e.text for e in r.entities)
            reports.append(res.report)
    finally:
        engine.close()
    # Zero-shot F1 of a 0.5B model is low (bench/reports/zeroshot) and a handful of sentences can miss on
    # one dataset; across both, a working prompt + schema + grounding path finds some gold entities.
    assert sum(r.micro.tp for r in reports) > 0, "\n".join(r.to_markdown() for r in reports)


def test_engine_dtype_auto_reaches_vllm(tiny_engine) -> None:
    """``dtype: auto`` is resolved for this hardware before vLLM sees it, and vLLM runs what was chosen."""
    import torch

    from nerve.hardware import choose_dtype

    assert tiny_engine.config.dtype == "auto"
    expected = choose_dtype("auto").dtype
    assert tiny_engine.dtype.dtype == expected and tiny_engine.dtype.reason
    assert tiny_engine._llm.model_config.dtype == getattr(torch, expected)


def test_engine_block_size_defaults_to_the_finest_the_cpu_takes(tiny_engine) -> None:
    from nerve.engines.vllm import CPU_BLOCK_SIZE

    assert tiny_engine.config.block_size is None
    assert tiny_engine._llm.vllm_config.cache_config.block_size == CPU_BLOCK_SIZE == 32


@pytest.mark.engine
def test_engine_explicit_dtype_wins(loop_thread, tiny_qwen_dir) -> None:
    import torch

    from nerve.engines.vllm import GenerationRequest
    from tests.conftest import start_engine

    engine = start_engine(loop_thread, tiny_qwen_dir, dtype="float32", max_model_len=1024, block_size=64)
    try:
        assert engine.dtype.dtype == "float32" and engine.dtype.reason == "set explicitly"
        assert engine._llm.model_config.dtype == torch.float32
        assert engine._llm.vllm_config.cache_config.block_size == 64
        # The prefix cache reuses whole blocks: of a 100-token prompt seen before, 64 tokens (one block of 64);
        # with vLLM's own CPU default of 128-token blocks, none.
        request = GenerationRequest(prompt_token_ids=list(range(1000, 1100)), schema=None, max_tokens=2)
        loop_thread.run(engine.generate(request))
        again = loop_thread.run(engine.generate(request))
        assert again.cached_prompt_tokens == 64
    finally:
        engine.close()


@pytest.mark.engine
def test_ngram_speculation_reaches_vllm_and_keeps_greedy_answers(loop_thread, tiny_qwen_dir) -> None:
    """Prompt-lookup drafts are verified by the model: under the schema the answers equal plain greedy decoding."""
    from nerve.extraction import Extractor
    from nerve.ner.card import TaskCard
    from tests.conftest import start_engine

    texts = ["Peter Blackburn met Peter Blackburn in Brussels .", "温格的球队终于又踢了一场经典的比赛，2比1战胜曼联之后",
             "EU rejects German call to boycott British lamb ."]
    card = TaskCard.load(tiny_qwen_dir)
    answers = {}
    for k in (0, 3):
        engine = start_engine(loop_thread, tiny_qwen_dir, dtype="float32", speculative_tokens=k)
        try:
            spec = engine._llm.vllm_config.speculative_config
            assert (spec is None) if k == 0 else (spec.method == "ngram" and spec.num_speculative_tokens == 3)
            ex = Extractor(engine, card)
            answers[k] = [r.raw for r in loop_thread.run(ex.extract_many(texts))]
        finally:
            engine.close()
    assert answers[3] == answers[0]


def test_entity_scores_are_masked_probabilities_and_do_not_depend_on_the_batch(loop_thread, tiny_engine) -> None:
    """Scores come from the distribution after the schema's mask (so a token the schema forces has probability
    1), and a text's scores are the same alone and in batches of other texts."""
    card = TaskCard.load(tiny_engine.config.model)
    ex = Extractor(tiny_engine, card)
    assert ex.gives_scores
    texts = CLUENER_LIKE[:6]
    prepared = ex.prepare(texts[0])
    out = loop_thread.run(tiny_engine.generate(prepared.request))
    assert out.finish_reason == "stop"
    assert out.token_logprobs is not None and len(out.token_logprobs) == out.completion_tokens
    # once the JSON is complete only the end token is allowed: a random model gives it ~1/vocab unmasked
    assert out.token_logprobs[-1] == pytest.approx(0.0, abs=1e-4)
    assert out.token_ends[-1] == len(out.text)

    alone = [loop_thread.run(ex.extract(t)) for t in texts]
    together = loop_thread.run(ex.extract_many(texts))
    reordered = loop_thread.run(ex.extract_many([*texts[::-1], *CLUENER_LIKE[6:]]))[: len(texts)][::-1]
    same = 0
    for a, b, c in zip(alone, together, reordered, strict=True):
        assert a.parsed and all(e.score is not None and 0 < e.score <= 1 for e in a.entities + a.hallucinated)
        for other in (b, c):
            if other.raw != a.raw:  # the engine's dtype may round a batch differently: another answer
                continue
            same += 1
            got = [m.score for m in other.entities + other.hallucinated]
            want = [m.score for m in a.entities + a.hallucinated]
            assert got == pytest.approx(want, rel=0.05, abs=1e-6)
    assert same >= len(texts)  # most answers are the same, and with them the scores
