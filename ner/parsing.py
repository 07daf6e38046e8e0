"""Parsing model answers and grounding them in the input text.

The model names entities by surface text; offsets come from grounding, never from the model. A predicted
surface that does not occur in the input is a hallucination: it is dropped and counted, never returned
with made-up offsets.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .card import ANSWER_OBJECTS, ANSWER_PAIRS
from .types import Entity


class AnswerParseError(ValueError):
    """The model's answer is not the JSON the task asks for."""


@dataclass(frozen=True, slots=True)
class Mention:
    """One predicted entity as the model wrote it (label and surface, no offsets)."""

    label: str
    text: str
    score: float | None = field(default=None, compare=False)
    """The model's confidence in this mention (:func:`mention_scores`)."""


def parse_answer(raw: str, labels: Iterable[str] | None = None, answer_format: str = ANSWER_OBJECTS) -> list[Mention]:
    """Parse ``{"entities":[{"label":...,"text":...}, ...]}`` (objects) or ``[[label, text], ...]`` (pairs).

    Raises :class:`AnswerParseError` for anything else: invalid JSON, wrong shape, unknown label (when
    ``labels`` is given), empty text.
    """
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AnswerParseError(f"invalid JSON at character {exc.pos}: {exc.msg}") from None
    pairs: list[tuple[object, object]] = []
    if answer_format == ANSWER_PAIRS:
        if not isinstance(obj, list):
            raise AnswerParseError("expected a list of [label, text] pairs")
        for i, item in enumerate(obj):
            if not isinstance(item, list) or len(item) != 2:
                raise AnswerParseError(f"entity {i} is not a [label, text] pair")
            pairs.append((item[0], item[1]))
    elif answer_format == ANSWER_OBJECTS:
        if not isinstance(obj, dict) or not isinstance(obj.get("entities"), list):
            raise AnswerParseError('expected an object with an "entities" list')
        for i, item in enumerate(obj["entities"]):
            if not isinstance(item, dict):
                raise AnswerParseError(f"entity {i} is not an object with string 'label' and 'text'")
            pairs.append((item.get("label"), item.get("text")))
    else:
        raise ValueError(f"unknown answer format {answer_format!r}")
    allowed = None if labels is None else set(labels)
    mentions = []
    for i, (label, text) in enumerate(pairs):
        if not isinstance(label, str) or not isinstance(text, str):
            raise AnswerParseError(f"entity {i} has no string label and text")
        if allowed is not None and label not in allowed:
            raise AnswerParseError(f"entity {i} has unknown label {label!r}")
        if not text:
            raise AnswerParseError(f"entity {i} has empty text")
        mentions.append(Mention(label, text))
    return mentions


def mention_spans(raw: str, answer_format: str = ANSWER_OBJECTS) -> list[tuple[int, int]]:
    """The character span of each entity in a parsed answer ``raw``: from the ``[`` or ``{`` that opens the
    entity to just past the bracket that closes it, in the order :func:`parse_answer` returns the mentions."""
    depth_of_entity = 2 if answer_format == ANSWER_PAIRS else 3  # [[...]] or {"entities":[{...}]}
    spans: list[tuple[int, int]] = []
    depth, in_string, escaped, start = 0, False, False, 0
    for i, ch in enumerate(raw):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth == depth_of_entity:
                start = i
        elif ch in "]}":
            if depth == depth_of_entity:
                spans.append((start, i + 1))
            depth -= 1
    return spans


def mention_scores(raw: str, answer_format: str, token_logprobs: Sequence[float],
                   token_ends: Sequence[int]) -> list[float]:
    """Each entity's score: the probability with which the model wrote it, ``exp`` of the summed
    log-probabilities of the tokens that overlap the entity's span in the answer (:func:`mention_spans`).

    Under constrained decoding the log-probabilities are those of the distribution sampled from, after the
    schema's mask: a token the schema forces costs nothing, and the score is the chance of this label and this
    text at this point of the answer, given the entities before it. A token across two entities (``"],["``)
    counts for both. Scores are in (0, 1].
    """
    spans = mention_spans(raw, answer_format)
    scores = []
    starts = [0, *token_ends[:-1]]
    for s, e in spans:
        total = 0.0
        for lp, t0, t1 in zip(token_logprobs, starts, token_ends, strict=True):
            # a token that ends inside a character (t1 == t0) belongs to that character
            if t0 < e and max(t1, t0 + 1) > s:
                total += lp
        scores.append(math.exp(min(total, 0.0)))
    return scores


@dataclass(slots=True)
class Grounding:
    """Result of locating mentions in the text."""

    entities: list[Entity] = field(default_factory=list)
    hallucinated: list[Mention] = field(default_factory=list)
    """Mentions whose text does not occur in the input."""
    duplicates: int = 0
    """Mentions that repeat an already grounded entity (same label and occurrence)."""


def _occurrences(text: str, surface: str) -> list[int]:
    starts, i = [], text.find(surface)
    while i != -1:
        starts.append(i)
        i = text.find(surface, i + 1)
    return starts


def ground(text: str, mentions: Sequence[Mention]) -> Grounding:
    """Assign each mention an occurrence of its surface in ``text``.

    Mentions are expected in order of occurrence, a repeated surface once per occurrence. Each mention
    takes the first unused occurrence (for its label and surface) at or after the start of the previous
    grounded mention; if there is none there it takes the first unused occurrence anywhere (the model
    listed out of order). When every occurrence is used the mention is a duplicate and is dropped.
    Overlapping and nested entities of different labels are kept. Returned entities are sorted by offset.
    """
    result = Grounding()
    used: set[tuple[int, int, str]] = set()
    cursor = 0
    cache: dict[str, list[int]] = {}
    for m in mentions:
        starts = cache.get(m.text)
        if starts is None:
            starts = cache[m.text] = _occurrences(text, m.text)
        if not starts:
            result.hallucinated.append(m)
            continue
        free = [s for s in starts if (s, s + len(m.text), m.label) not in used]
        if not free:
            result.duplicates += 1
            continue
        after = [s for s in free if s >= cursor]
        start = after[0] if after else free[0]
        used.add((start, start + len(m.text), m.label))
        result.entities.append(Entity(start=start, end=start + len(m.text), label=m.label, text=m.text, score=m.score))
        cursor = start
    result.entities.sort()
    return result
