"""nerve's CPU grammar-bitmask application (a vLLM general plugin): same logits as vLLM's own path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xgr = pytest.importorskip("xgrammar")
vllm_utils = pytest.importorskip("vllm.v1.structured_output.utils")

from nerve.engines.cpu_plugin import (  # noqa: E402
    CPU_GRAMMAR_MASK_ENV,
    _cpu_grammar_mask,
    apply_bitmask_cpu,
    grammar_mask_functions,
    register_vllm_plugin,
)
from nerve.engines.vllm import EngineConfig  # noqa: E402


def vllm_apply():
    """vLLM's own function, whether or not an engine in this process has installed nerve's."""
    return grammar_mask_functions()[0]


def nerve_apply():
    return grammar_mask_functions()[1]


def step(batch: list[str], structured: list[str], masks: np.ndarray, spec: dict[str, list[int]] | None = None):
    return (SimpleNamespace(scheduled_spec_decode_tokens=spec or {}),
            SimpleNamespace(structured_output_request_ids=structured, grammar_bitmask=masks),
            SimpleNamespace(req_ids=batch))


def random_masks(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    """Rows of the three kinds decoding produces: few tokens allowed, most allowed, and anything."""
    words = -(-vocab // 32)
    out = np.empty((n, words), dtype=np.int32)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            row = np.zeros(words, dtype=np.int32)
            row[rng.integers(0, words, 5)] = rng.integers(-2**31, 2**31 - 1, 5, dtype=np.int64).astype(np.int32)
        elif kind == 1:
            row = np.full(words, -1, dtype=np.int32)
            row[rng.integers(0, words, 50)] &= rng.integers(-2**31, 2**31 - 1, 50, dtype=np.int64).astype(np.int32)
        else:
            row = rng.integers(-2**31, 2**31 - 1, words, dtype=np.int64).astype(np.int32)
        out[i] = row
    return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float16"])
@pytest.mark.parametrize("vocab", [151936, 1000])
def test_same_logits_as_vllm_for_whole_batches(dtype: str, vocab: int) -> None:
    rng = np.random.default_rng(vocab)
    batch = [f"r{i}" for i in range(7)]
    masks = random_masks(rng, len(batch), vocab)
    order = [batch[i] for i in rng.permutation(len(batch))]  # the scheduler's order is not the batch's
    mask_in_order = masks[[batch.index(r) for r in order]]
    logits = torch.randn(len(batch), vocab).to(getattr(torch, dtype))
    want, got = logits.clone(), logits.clone()
    vllm_apply()(*step(batch, order, mask_in_order), want)
    nerve_apply()(*step(batch, order, mask_in_order), got)
    assert torch.equal(want, got)
    assert torch.isinf(got).any() and torch.isfinite(got).any()


def test_same_logits_with_unstructured_rows_and_speculative_tokens() -> None:
    rng = np.random.default_rng(1)
    vocab = 4000
    batch = ["a", "b", "c", "d", "e"]
    spec = {"b": [5, 6], "d": [7]}  # b has 3 logit rows, d has 2: 8 rows in all
    structured = ["d", "gone", "b", "e"]  # c and a unstructured; "gone" finished and left the batch
    rows = sum(1 + len(spec.get(r, ())) for r in structured)
    masks = random_masks(rng, rows, vocab)
    logits = torch.randn(8, vocab).to(torch.bfloat16)
    want, got = logits.clone(), logits.clone()
    vllm_apply()(*step(batch, structured, masks, spec), want)
    nerve_apply()(*step(batch, structured, masks, spec), got)
    assert torch.equal(want, got)
    assert torch.equal(got[0], logits[0])  # "a" is not structured: untouched
    assert torch.isinf(got[1]).any()


def test_same_logits_on_real_masks_from_the_default_tokenizer(qwen_dir) -> None:
    """Bitmasks xgrammar produces while an answer to nerve's schema is decoded, over Qwen's 151,936 tokens."""
    from transformers import AutoConfig, AutoTokenizer

    from nerve.ner.card import SchemaBounds
    from nerve.ner.labels import CLUENER
    from nerve.ner.schema import output_spec

    tok = AutoTokenizer.from_pretrained(qwen_dir)
    vocab = AutoConfig.from_pretrained(qwen_dir).vocab_size
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab))
    text = "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"
    schema = output_spec(CLUENER, SchemaBounds(), text).schema
    grammar = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
    answer = '{"entities":[{"label":"company","text":"浙商银行"},{"label":"name","text":"叶老桂"}]}'
    matcher = xgr.GrammarMatcher(grammar)
    masks = []
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    for t in tok.encode(answer) + [tok.convert_tokens_to_ids("<|im_end|>")]:
        matcher.fill_next_token_bitmask(bitmask)
        masks.append(bitmask[0].numpy().copy())
        assert matcher.accept_token(t)
    masks = np.stack(masks)
    allowed = np.unpackbits(masks.view(np.uint8), axis=1, bitorder="little")[:, :vocab].sum(1)
    assert allowed.min() < 10 and allowed.max() > 100_000  # both regimes: structure and free text
    batch = [f"r{i}" for i in range(len(masks))]
    logits = torch.randn(len(batch), vocab).to(torch.bfloat16)
    want, got = logits.clone(), logits.clone()
    vllm_apply()(*step(batch, batch, masks), want)
    nerve_apply()(*step(batch, batch, masks), got)
    assert torch.equal(want, got)
    assert (torch.isfinite(got).sum(1).numpy() == allowed).all()


def test_rows_argument_and_short_bitmasks() -> None:
    logits = torch.zeros(3, 40)
    mask = np.zeros((1, 1), dtype=np.int32)  # covers tokens 0..31 only: all blocked; 32..39 stay allowed
    mask[0, 0] = 0b101  # tokens 0 and 2 allowed
    apply_bitmask_cpu(logits, mask, rows=[1])
    assert torch.isfinite(logits[0]).all() and torch.isfinite(logits[2]).all()
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [0, 2] + list(range(32, 40))


def unpatched(monkeypatch, setting: str) -> None:
    """vLLM's function in this process (and in its model runner, if imported), restored after the test."""
    monkeypatch.setattr(vllm_utils, "apply_grammar_bitmask", vllm_apply())
    runner = sys.modules.get("vllm.v1.worker.gpu_model_runner")
    if runner is not None:
        monkeypatch.setattr(runner, "apply_grammar_bitmask", vllm_apply())
    monkeypatch.setenv(CPU_GRAMMAR_MASK_ENV, setting)


def test_register_is_idempotent(monkeypatch) -> None:
    unpatched(monkeypatch, "nerve")
    register_vllm_plugin()
    first = vllm_utils.apply_grammar_bitmask
    assert first.nerve_wraps is vllm_apply()
    register_vllm_plugin()
    assert vllm_utils.apply_grammar_bitmask is first


def test_gpu_logits_take_vllms_path() -> None:
    calls = []
    gpu_logits = SimpleNamespace(is_cpu=False)
    _cpu_grammar_mask(lambda *a: calls.append(a))(*step(["a"], ["a"], np.zeros((1, 1), np.int32)), gpu_logits)
    assert len(calls) == 1 and calls[0][3] is gpu_logits


def test_setting_vllm_leaves_vllms_function(monkeypatch) -> None:
    unpatched(monkeypatch, "vllm")
    register_vllm_plugin()
    assert vllm_utils.apply_grammar_bitmask is vllm_apply()
    with pytest.raises(ValueError, match="cpu_grammar_mask"):
        EngineConfig(model="x", cpu_grammar_mask="fast")


@pytest.mark.parametrize("setting,expected", [("nerve", "True"), ("vllm", "False")])
def test_vllm_loads_the_plugin_in_its_processes(setting: str, expected: str) -> None:
    """The entry point is installed: a fresh process that loads vLLM's general plugins gets nerve's function."""
    code = ("from vllm.plugins import load_general_plugins; load_general_plugins();"
            "import vllm.v1.worker.gpu_model_runner as r; print(hasattr(r.apply_grammar_bitmask, 'nerve_wraps'))")
    env = {**os.environ, CPU_GRAMMAR_MASK_ENV: setting, "VLLM_LOGGING_LEVEL": "ERROR"}
    env.pop("VLLM_PLUGINS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected
