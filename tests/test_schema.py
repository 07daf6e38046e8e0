"""The output schema's bounds and the worst-case token budget derived from them."""

from __future__ import annotations

import json

import pytest

from ner.card import SchemaBounds
from ner.labels import CLUENER, CONLL2003, LabelSet
from ner.schema import output_spec, worst_case_tokens


def longest_answer(labels: LabelSet, items: int, chars: int, char: str) -> str:
    label = max(labels.names, key=lambda n: len(n.encode()))
    return json.dumps({"entities": [{"label": label, "text": char * chars}] * items}, ensure_ascii=False,
                      separators=(",", ":"))


@pytest.mark.parametrize("labels", [CLUENER, CONLL2003])
@pytest.mark.parametrize("char", ["a", "é", "中", "😀"])
def test_budget_covers_longest_member_in_bytes(labels: LabelSet, char: str) -> None:
    spec = output_spec(labels, SchemaBounds(max_entities=5, max_entity_chars=20))
    worst = longest_answer(labels, spec.max_entities, spec.max_entity_chars, char)
    # Every token is at least one byte, so bytes + the stop token bound the tokens.
    assert len(worst.encode("utf-8")) + 1 <= spec.max_tokens
    if char == "😀":  # 4-byte characters are the worst case: the bound is tight
        assert len(worst.encode("utf-8")) + 1 == spec.max_tokens


def test_budget_covers_longest_member_in_real_tokens(qwen_tokenizer) -> None:
    spec = output_spec(CLUENER, SchemaBounds(max_entities=3, max_entity_chars=16))
    for char in ["a", "中", "😀", "\u0378"]:
        worst = longest_answer(CLUENER, 3, 16, char)
        assert len(qwen_tokenizer.encode(worst, add_special_tokens=False)) + 1 <= spec.max_tokens


def test_schema_shape_and_bucketing() -> None:
    bounds = SchemaBounds(max_entities=8, max_entity_chars=64)
    short = output_spec(CONLL2003, bounds, "EU rejects German call .")
    assert short.max_entity_chars == 32  # 24 characters round up to the next bucket of 16
    ent = short.schema["properties"]["entities"]
    assert ent["maxItems"] == 8
    assert ent["items"]["properties"]["label"]["enum"] == ["PER", "LOC", "ORG", "MISC"]
    assert ent["items"]["properties"]["text"]["pattern"].endswith("{1,32}$")
    assert ent["items"]["additionalProperties"] is False
    # Same bucket, same schema object: grammars compile once per shape.
    assert output_spec(CONLL2003, bounds, "x" * 20) is short
    assert output_spec(CONLL2003, bounds, "x" * 500).max_entity_chars == 64
    assert output_spec(CONLL2003, bounds, "x" * 500, max_entities=2).max_entities == 2
    assert output_spec(CONLL2003, bounds, "x", max_entities=100).max_entities == 8
    with pytest.raises(ValueError):
        output_spec(CONLL2003, bounds, "x", max_entities=0)


def test_regex_backends_get_the_schema_without_bounds_but_the_same_budget() -> None:
    import re

    bounds = SchemaBounds(max_entities=8, max_entity_chars=64)
    full = output_spec(CONLL2003, bounds, "x" * 100)
    loose = output_spec(CONLL2003, bounds, "x" * 100, items_in_schema=False)
    ent = loose.schema["properties"]["entities"]
    assert "maxItems" not in ent and "maxItems" in full.schema["properties"]["entities"]
    rx = re.compile(ent["items"]["properties"]["text"]["pattern"])
    assert rx.match("x" * 500) and not rx.match('a"b') and not rx.match("")
    assert loose.max_tokens == full.max_tokens  # the budget still assumes the card's bounds


def test_worst_case_tokens_formula() -> None:
    # {"entities":[]} + 2 * ({"label":"","text":""} + 4 + 4*3) + 1 comma + stop token
    assert worst_case_tokens(["LONG"], 2, 3) == 15 + 2 * (22 + 4 + 12) + 1 + 1


def test_pattern_forbids_escapes() -> None:
    import re

    pattern = output_spec(CONLL2003, SchemaBounds())
    rx = re.compile(pattern.schema["properties"]["entities"]["items"]["properties"]["text"]["pattern"])
    assert rx.match("New York")
    assert rx.match("北京")
    for bad in ['say "hi"', "back\\slash", "tab\there", ""]:
        assert not rx.match(bad)
    assert not rx.match("x" * 65)


def test_xgrammar_accepts_exactly_the_bounded_language() -> None:
    xgr = pytest.importorskip("xgrammar")
    spec = output_spec(CONLL2003, SchemaBounds(max_entities=2, max_entity_chars=4))
    grammar = xgr.Grammar.from_json_schema(json.dumps(spec.schema), any_whitespace=False, separators=(",", ":"))

    def accepts(s: str) -> bool:
        return xgr.testing._is_grammar_accept_string(grammar, s)

    assert accepts('{"entities":[]}')
    assert accepts('{"entities":[{"label":"PER","text":"Bob"},{"label":"LOC","text":"Rome"}]}')
    assert not accepts('{"entities":[{"label":"PER","text":"Bobby"}]}')  # too long
    assert not accepts('{"entities":[{"label":"XXX","text":"Bob"}]}')  # unknown label
    assert not accepts('{"entities": []}')  # free whitespace
    three = ",".join(['{"label":"PER","text":"Bob"}'] * 3)
    assert not accepts('{"entities":[' + three + "]}")  # too many items
