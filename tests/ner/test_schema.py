"""The output schema's bounds and the worst-case token budget derived from them."""

from __future__ import annotations

import json

import pytest

from nerve.ner.card import SchemaBounds
from nerve.ner.labels import CLUENER, CONLL2003, LabelSet
from nerve.ner.schema import output_spec, worst_case_tokens


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
    assert output_spec(CONLL2003, bounds, "x" * 40, max_entities=100).max_entities == 8
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


def test_bounds_follow_the_input() -> None:
    """A short text cannot hold the card's worst case: its answer bound shrinks with it."""
    from nerve.ner.schema import items_for_text

    assert [items_for_text(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 17, 33)] == [1, 1, 1, 2, 2, 4, 4, 8, 16, 32]
    bounds = SchemaBounds(max_entities=24, max_entity_chars=64)
    tiny, short, long = (output_spec(CLUENER, bounds, t) for t in ("卢进", "浙商银行企业信贷部叶老桂博士", "x" * 400))
    assert (tiny.max_entities, short.max_entities, long.max_entities) == (1, 8, 24)
    assert tiny.max_tokens < short.max_tokens < long.max_tokens
    assert tiny.schema["properties"]["entities"]["maxItems"] == 1


def test_pairs_schema_admits_exactly_the_v2_answers() -> None:
    """The v2 schema: a list of [label, text] pairs, labels from the enum, bounded like v1, fewer bytes."""
    import re

    from nerve.ner.card import ANSWER_PAIRS

    bounds = SchemaBounds(max_entities=8, max_entity_chars=64)
    text = "EU rejects German call to boycott British lamb ."
    v2 = output_spec(CONLL2003, bounds, text, answer_format=ANSWER_PAIRS)
    v1 = output_spec(CONLL2003, bounds, text)
    assert v2.schema["type"] == "array" and v2.schema["maxItems"] == 8
    pair = v2.schema["items"]
    assert pair["prefixItems"][0] == {"enum": ["PER", "LOC", "ORG", "MISC"]}
    assert re.fullmatch(pair["prefixItems"][1]["pattern"].strip("^$"), "British")
    assert (pair["minItems"], pair["maxItems"], pair["items"]) == (2, 2, False)
    assert v2.max_entities == v1.max_entities and v2.max_tokens < v1.max_tokens
    unbounded = output_spec(CONLL2003, bounds, text, answer_format=ANSWER_PAIRS, items_in_schema=False)
    assert "maxItems" not in unbounded.schema and unbounded.max_tokens == v2.max_tokens
    with pytest.raises(ValueError, match="unknown answer format"):
        output_spec(CONLL2003, bounds, text, answer_format="yaml")


def test_pairs_budget_covers_longest_member_in_real_tokens(qwen_tokenizer) -> None:
    import json

    from nerve.ner.card import ANSWER_PAIRS

    spec = output_spec(CLUENER, SchemaBounds(max_entities=3, max_entity_chars=16), answer_format=ANSWER_PAIRS)
    longest = max(CLUENER.names, key=lambda n: len(n.encode()))
    for char in ["a", "中", "😀", "\u0378"]:
        worst = json.dumps([[longest, char * 16]] * 3, ensure_ascii=False, separators=(",", ":"))
        assert len(qwen_tokenizer.encode(worst, add_special_tokens=False)) + 1 <= spec.max_tokens
