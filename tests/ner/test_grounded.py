"""Grounded decoding: the per-request grammar admits exactly the substrings of the input as entity texts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerve.ner.card import SchemaBounds, TaskCard
from nerve.ner.grounded import _suffix_automaton, grounded_grammar
from nerve.ner.labels import CONLL2003

xgr = pytest.importorskip("xgrammar")


def substrings_via_automaton(text: str) -> set[str]:
    nxt, out, stack = _suffix_automaton(text), set(), [(0, "")]
    while stack:
        s, prefix = stack.pop()
        for ch, t in nxt[s].items():
            out.add(prefix + ch)
            stack.append((t, prefix + ch))
    return out


@given(st.text(alphabet="ab c北京", max_size=12))
def test_suffix_automaton_spells_exactly_the_substrings(text: str) -> None:
    expected = {text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1)}
    assert substrings_via_automaton(text) == expected


def answer(*items: tuple[str, str]) -> str:
    return json.dumps({"entities": [{"label": lab, "text": t} for lab, t in items]}, ensure_ascii=False,
                      separators=(",", ":"))


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet='ab "é北\\', min_size=1, max_size=10), st.data())
def test_grammar_accepts_substrings_and_rejects_others(text: str, data) -> None:
    grammar = xgr.Grammar.from_ebnf(grounded_grammar(text, CONLL2003, SchemaBounds(max_entities=2))[0])
    i = data.draw(st.integers(0, len(text) - 1))
    j = data.draw(st.integers(i + 1, len(text)))
    sub = text[i:j]
    ok = all(c not in '"\\' for c in sub)
    assert xgr.testing._is_grammar_accept_string(grammar, answer(("PER", sub))) == ok
    assert xgr.testing._is_grammar_accept_string(grammar, answer(("PER", text + "x"))) is False
    assert xgr.testing._is_grammar_accept_string(grammar, '{"entities":[]}')
    three = answer(*[("LOC", text[0])] * 3)
    if text[0] not in '"\\':
        assert not xgr.testing._is_grammar_accept_string(grammar, three)  # max_entities=2


def test_budget_covers_longest_grounded_answer() -> None:
    text = "😀" * 10
    _, budget = grounded_grammar(text, CONLL2003, SchemaBounds(max_entities=3))
    worst = answer(*[("MISC", text)] * 3)
    assert len(worst.encode()) + 1 <= budget


@pytest.mark.engine
def test_grounded_decoding_never_hallucinates(loop_thread, tiny_engine) -> None:
    from nerve.extraction import Extractor

    ex = Extractor(tiny_engine, TaskCard.load(tiny_engine.config.model), grounded=True)
    texts = ["彭小军认为，国内银行现在走的是台湾的发卡模式", "Peter Blackburn met \"Bob\" in Rome .", "x"]
    results = loop_thread.run(ex.extract_many(texts))
    for text, r in zip(texts, results, strict=True):
        assert r.parsed and r.finish_reason == "stop", r.raw
        assert not r.hallucinated
        for m in json.loads(r.raw)["entities"]:
            assert m["text"] in text


@pytest.mark.engine
def test_grounded_long_input_gets_the_remaining_context(tiny_engine) -> None:
    """A long input's worst-case grounded answer exceeds the context: the request is capped, not refused."""
    from nerve.extraction import Extractor

    ex = Extractor(tiny_engine, TaskCard.load(tiny_engine.config.model), grounded=True)
    text = " ".join(f"Word{i}" for i in range(100))
    prepared = ex.prepare(text)
    assert prepared.request.grammar is not None
    assert prepared.request.max_tokens == tiny_engine.max_model_len - len(prepared.request.prompt_token_ids)
