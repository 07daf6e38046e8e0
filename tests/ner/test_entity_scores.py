"""Per-entity confidence: where each entity sits in the answer, and the score from its tokens' log-probabilities."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nerve.ner.card import ANSWER_OBJECTS, ANSWER_PAIRS
from nerve.ner.parsing import Mention, ground, mention_scores, mention_spans, parse_answer
from nerve.ner.types import Entity


def _answer(mentions: list[tuple[str, str]], fmt: str) -> str:
    if fmt == ANSWER_PAIRS:
        return json.dumps([[lab, text] for lab, text in mentions], ensure_ascii=False, separators=(",", ":"))
    return json.dumps({"entities": [{"label": lab, "text": text} for lab, text in mentions]}, ensure_ascii=False,
                      separators=(",", ":"))


@pytest.mark.parametrize("fmt", [ANSWER_OBJECTS, ANSWER_PAIRS])
def test_spans_cover_each_entity_whatever_its_text(fmt: str) -> None:
    mentions = [("PER", 'a [b] {c}'), ("LOC", 'say "hi"'), ("ORG", "x\\y"), ("LOC", "北京")]
    raw = _answer(mentions, fmt)
    spans = mention_spans(raw, fmt)
    assert len(spans) == len(mentions) == len(parse_answer(raw, answer_format=fmt))
    for (s, e), (label, text) in zip(spans, mentions, strict=True):
        piece = json.loads(raw[s:e])
        assert piece == ([label, text] if fmt == ANSWER_PAIRS else {"label": label, "text": text})


@given(st.lists(st.tuples(st.sampled_from(["PER", "LOC"]), st.text(min_size=1, max_size=8)), max_size=5),
       st.sampled_from([ANSWER_OBJECTS, ANSWER_PAIRS]))
def test_spans_match_the_parser_on_any_answer(mentions: list[tuple[str, str]], fmt: str) -> None:
    raw = _answer(mentions, fmt)
    spans = mention_spans(raw, fmt)
    assert [json.loads(raw[s:e]) for s, e in spans] == [
        [lab, t] if fmt == ANSWER_PAIRS else {"label": lab, "text": t} for lab, t in mentions]


def _tokens(pieces: list[str]) -> list[int]:
    ends, n = [], 0
    for p in pieces:
        n += len(p)
        ends.append(n)
    return ends


def test_score_is_the_probability_of_the_entity_tokens() -> None:
    # {"entities":[  {"label":"PER","text":"Bob"}  ,  {"label":"LOC","text":"Rome"}  ]}
    pieces = ['{"entities":[', '{"label":"', "PER", '","text":"', "B", "ob", '"}', ",", '{"label":"', "LOC",
              '","text":"', "Rome", '"}]}', ""]
    raw = "".join(pieces)
    lps = [0.0, 0.0, math.log(0.9), 0.0, math.log(0.5), math.log(0.8), math.log(0.95), math.log(0.7), 0.0,
           math.log(0.6), 0.0, math.log(0.99), math.log(0.9), 0.0]
    scores = mention_scores(raw, ANSWER_OBJECTS, lps, _tokens(pieces))
    # the first entity's tokens: PER, B, ob, "} ; the separator "," lies outside both entities
    assert scores[0] == pytest.approx(0.9 * 0.5 * 0.8 * 0.95)
    # the second: LOC, Rome, "}]} (the closing token reaches into the entity)
    assert scores[1] == pytest.approx(0.6 * 0.99 * 0.9)
    assert all(0 < s <= 1 for s in scores)


def test_a_token_across_two_entities_counts_for_both_and_forced_tokens_cost_nothing() -> None:
    pieces = ["[[", '"PER","', "Al", '"],["', 'LOC","', "Oslo", '"]]']
    raw = "".join(pieces)
    assert raw == '[["PER","Al"],["LOC","Oslo"]]'
    lps = [0.0, math.log(0.5), math.log(0.5), math.log(0.8), math.log(0.5), math.log(0.5), 0.0]
    first, second = mention_scores(raw, ANSWER_PAIRS, lps, _tokens(pieces))
    assert first == pytest.approx(0.5 * 0.5 * 0.8)  # "PER"," + Al + "],[" (the opening [[ is forced)
    assert second == pytest.approx(0.8 * 0.5 * 0.5)  # "],[" + LOC"," + Oslo (the closing "]] is forced)


def test_tokens_inside_one_character_belong_to_it() -> None:
    # tokens '[["', 'LOC","', <first bytes of 北>, <last byte of 北>, '"]]': the third ends where 北 starts
    # (it decodes to an incomplete character), yet belongs to 北
    raw = '[["LOC","北"]]'
    ends = [3, 9, 9, 10, 13]
    lps = [0.0, 0.0, math.log(0.5), math.log(0.5), 0.0]
    (score,) = mention_scores(raw, ANSWER_PAIRS, lps, ends)
    assert score == pytest.approx(0.25)


def test_scores_travel_through_grounding_and_do_not_change_identity() -> None:
    g = ground("Bob met Bob", [Mention("PER", "Bob", 0.9), Mention("PER", "Bob", 0.4), Mention("PER", "Zed", 0.1)])
    assert [(e.start, e.score) for e in g.entities] == [(0, 0.9), (8, 0.4)]
    assert [m.score for m in g.hallucinated] == [0.1]
    assert Entity(0, 3, "PER", "Bob", score=0.2) == Entity(0, 3, "PER", "Bob")
    assert Entity(0, 3, "PER", "Bob", score=0.2).to_dict()["score"] == 0.2
    assert "score" not in Entity(0, 3, "PER", "Bob").to_dict()


def _logprob_steps(ids: list[int], values: list[float]) -> list[dict[int, SimpleNamespace]]:
    return [{tid: SimpleNamespace(logprob=v)} for tid, v in zip(ids, values, strict=True)]


def test_token_ends_from_a_real_byte_level_tokenizer(qwen_tokenizer) -> None:
    from nerve.engines.vllm import token_logprobs

    raw = '{"entities":[{"label":"人名","text":"🙂 Ångström 北京"}]}'
    ids = qwen_tokenizer.encode(raw, add_special_tokens=False) + [qwen_tokenizer.eos_token_id]
    values = [-0.1 * i for i in range(len(ids))]
    got = token_logprobs(ids, _logprob_steps(ids, values), raw, qwen_tokenizer)
    assert got is not None
    lps, ends = got
    assert list(lps) == pytest.approx(values)
    assert list(ends) == sorted(ends) and ends[-1] == len(raw)
    # every token end that is not inside a character is the end of the decoded prefix
    for i, end in enumerate(ends):
        prefix = qwen_tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        if not prefix.endswith("\ufffd"):
            assert end == len(prefix), (i, prefix)
    # no log-probabilities, or fewer than tokens: no scores rather than an error
    assert token_logprobs(ids, None, raw, qwen_tokenizer) is None
    assert token_logprobs(ids, _logprob_steps(ids, values)[:-1], raw, qwen_tokenizer) is None
