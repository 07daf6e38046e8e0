"""Answer parsing and grounding of mentions in the input text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nerve.ner.parsing import AnswerParseError, Mention, ground, parse_answer
from nerve.ner.prompts import render_answer
from nerve.ner.types import Entity


def test_parse_valid_and_invalid() -> None:
    assert parse_answer('{"entities":[{"label":"PER","text":"Bob"}]}') == [Mention("PER", "Bob")]
    assert parse_answer('{"entities":[]}') == []
    for bad in ['{"entities":[{"label":"PER","text":"Bob"}', "[]", '{"entities":{}}',
                '{"entities":[{"label":"PER"}]}', '{"entities":[{"label":"PER","text":""}]}', "garbage"]:
        with pytest.raises(AnswerParseError):
            parse_answer(bad)
    with pytest.raises(AnswerParseError, match="unknown label"):
        parse_answer('{"entities":[{"label":"FOO","text":"Bob"}]}', labels=["PER"])


def test_repeated_surfaces_take_successive_occurrences() -> None:
    text = "Paris is not Paris, Texas; Paris again."
    g = ground(text, [Mention("LOC", "Paris")] * 3)
    assert [e.start for e in g.entities] == [0, 13, 27]
    assert all(text[e.start:e.end] == "Paris" for e in g.entities)
    assert g.duplicates == 0 and not g.hallucinated


def test_more_mentions_than_occurrences_are_duplicates() -> None:
    g = ground("Bob and Bob", [Mention("PER", "Bob")] * 3)
    assert [e.start for e in g.entities] == [0, 8]
    assert g.duplicates == 1


def test_out_of_order_mentions() -> None:
    text = "Alice met Bob, then Alice left."
    g = ground(text, [Mention("PER", "Bob"), Mention("PER", "Alice"), Mention("PER", "Alice")])
    assert [(e.start, e.text) for e in g.entities] == [(0, "Alice"), (10, "Bob"), (20, "Alice")]


def test_nested_and_overlapping_labels() -> None:
    text = "《招商银行：投资永隆银行浮亏逾百亿港元》"
    g = ground(text, [Mention("book", text), Mention("company", "招商银行"), Mention("company", "永隆银行")])
    assert [(e.start, e.end, e.label) for e in g.entities] == [(0, 20, "book"), (1, 5, "company"), (8, 12, "company")]


def test_hallucinations_are_dropped_not_placed() -> None:
    g = ground("温格的球队战胜曼联", [Mention("name", "温格"), Mention("position", "射手"), Mention("name", "温 格")])
    assert [e.text for e in g.entities] == ["温格"]
    assert g.hallucinated == [Mention("position", "射手"), Mention("name", "温 格")]


def test_unicode_offsets_are_code_points() -> None:
    text = "😀 Zoë visited 北京."
    g = ground(text, [Mention("PER", "Zoë"), Mention("LOC", "北京")])
    assert [(e.start, e.end) for e in g.entities] == [(2, 5), (14, 16)]
    assert all(text[e.start:e.end] == e.text for e in g.entities)


@given(st.text(min_size=1, max_size=40), st.lists(st.tuples(st.integers(0, 39), st.integers(1, 8)), max_size=6))
def test_grounded_entities_always_match_the_text(text: str, spans: list[tuple[int, int]]) -> None:
    mentions = [Mention("X", text[s:s + n]) for s, n in spans if text[s:s + n]] + [Mention("Y", "\x00absent\x00")]
    g = ground(text, mentions)
    for e in g.entities:
        assert text[e.start:e.end] == e.text
    assert len(g.entities) + len(g.hallucinated) + g.duplicates == len(mentions)
    assert Mention("Y", "\x00absent\x00") in g.hallucinated or "\x00absent\x00" in text


def test_answer_round_trip() -> None:
    text = "Alice met Bob in Rome"
    gold = [Entity.at(text, 17, 21, "LOC"), Entity.at(text, 0, 5, "PER"), Entity.at(text, 10, 13, "PER")]
    answer = render_answer(gold)
    assert answer == ('{"entities":[{"label":"PER","text":"Alice"},{"label":"PER","text":"Bob"},'
                      '{"label":"LOC","text":"Rome"}]}')
    assert ground(text, parse_answer(answer)).entities == sorted(gold)


def test_pairs_answers_parse_and_ground() -> None:
    from nerve.ner.card import ANSWER_PAIRS

    text = "Alice met Bob in Rome"
    gold = [Entity.at(text, 17, 21, "LOC"), Entity.at(text, 0, 5, "PER"), Entity.at(text, 10, 13, "PER")]
    answer = render_answer(gold, ANSWER_PAIRS)
    assert answer == '[["PER","Alice"],["PER","Bob"],["LOC","Rome"]]'
    assert ground(text, parse_answer(answer, ["PER", "LOC"], ANSWER_PAIRS)).entities == sorted(gold)
    assert parse_answer("[]", None, ANSWER_PAIRS) == []
    for bad, why in [('{"entities":[]}', "list of"), ('[["PER"]]', "pair"), ('[["PER","Bob","x"]]', "pair"),
                     ('[[1,"Bob"]]', "string label"), ('[["ORG","Bob"]]', "unknown label"), ('[["PER",""]]', "empty")]:
        with pytest.raises(AnswerParseError, match=why):
            parse_answer(bad, ["PER", "LOC"], ANSWER_PAIRS)
