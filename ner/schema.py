"""The output JSON schema and the token budget that makes every constrained answer complete.

A constrained decoder (xgrammar, guidance, outlines) only admits strings of the schema's language, but a
model that rambles can still run out of ``max_tokens`` halfway through a string and leave invalid JSON.
nerve closes that hole by making the language finite and sizing ``max_tokens`` to its longest member:

* labels are an ``enum``; the entity list has ``maxItems``;
* entity text matches ``[^"\\\\\\x00-\\x1f]{1,L}``: no escapes, so each character costs at most 4 UTF-8
  bytes, and at most ``L`` characters (``L`` is bucketed from the input's length, so a handful of schemas
  cover all requests and compiled grammars are reused);
* the engine emits compact JSON (no free whitespace, ``,``/``:`` separators), so structure costs a known
  number of bytes;
* every token is at least one byte, so the worst-case byte count bounds the token count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from .card import ANSWER_OBJECTS, ANSWER_PAIRS, SchemaBounds
from .labels import LabelSet

TEXT_PATTERN = '^[^"\\\\\\x00-\\x1f]{1,%d}$'
"""Entity text: 1..L characters, none of which needs a JSON escape."""
UNBOUNDED_TEXT_PATTERN = '^[^"\\\\\\x00-\\x1f]+$'
"""The same without the length bound (regex-compiling backends only; see :func:`output_spec`)."""

_LENGTH_BUCKET = 16
_MAX_UTF8_BYTES = 4


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """A concrete schema for one request shape, with its worst-case token count."""

    schema: dict
    max_tokens: int
    max_entities: int
    max_entity_chars: int

    @property
    def key(self) -> str:
        """Stable JSON text of the schema (what grammar caches are keyed by)."""
        return json.dumps(self.schema, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _bucket(n: int) -> int:
    return max(_LENGTH_BUCKET, -(-n // _LENGTH_BUCKET) * _LENGTH_BUCKET)


def items_for_text(n_chars: int) -> int:
    """Most entities a text of ``n_chars`` characters can hold, rounded up to a power of two.

    Mentions are listed once per occurrence and do not overlap; unless one-character entities sit side by side,
    a text of ``n`` characters holds at most ``ceil(n / 2)`` of them. No example of the CLUENER train and dev
    sets or of CoNLL-2003 train exceeds that (the densest: 3 entities in 6 characters, ``早报记者官平``). The
    power-of-two rounding keeps the number of distinct schemas, and so of grammar compilations, small.
    """
    need = max(1, -(-n_chars // 2))
    return 1 << (need - 1).bit_length()


def output_spec(labels: LabelSet, bounds: SchemaBounds, text: str | None = None,
                max_entities: int | None = None, *, items_in_schema: bool = True,
                answer_format: str = ANSWER_OBJECTS) -> OutputSpec:
    """The schema and ``max_tokens`` for ``text`` (or for any text when ``text`` is ``None``).

    The bounds follow the input: no entity longer than the text (bucketed), no more entities than the text can
    hold (:func:`items_for_text`), so the worst-case answer grows with the input instead of being the card's
    worst case for every text. ``max_entities`` may lower (never raise) the card's bound for one request.
    ``items_in_schema=False`` leaves the bounds out of the schema (``maxItems`` and the length of entity texts;
    the token budget still assumes them): regex-based backends (outlines) unroll bounded repetitions into a
    state machine too large to compile in vLLM's time limit, so with them a model that never closes a string
    or the list can run out of tokens; xgrammar and guidance keep the bounds.
    """
    chars = bounds.max_entity_chars
    items = bounds.max_entities if max_entities is None else min(max_entities, bounds.max_entities)
    if items < 1:
        raise ValueError("max_entities must be at least 1")
    if text is not None:
        chars = min(chars, _bucket(len(text)))
        items = min(items, items_for_text(len(text)))
    if answer_format == ANSWER_PAIRS:
        return _pairs_spec(tuple(labels.names), items, chars, items_in_schema)
    if answer_format != ANSWER_OBJECTS:
        raise ValueError(f"unknown answer format {answer_format!r}")
    return _spec(tuple(labels.names), items, chars, items_in_schema)


@lru_cache(maxsize=256)
def _pairs_spec(label_names: tuple[str, ...], items: int, chars: int, items_in_schema: bool = True) -> OutputSpec:
    pattern = TEXT_PATTERN % chars if items_in_schema else UNBOUNDED_TEXT_PATTERN
    schema: dict = {
        "type": "array",
        "items": {
            "type": "array",
            "prefixItems": [{"enum": list(label_names)}, {"type": "string", "pattern": pattern}],
            "items": False,
            "minItems": 2,
            "maxItems": 2,
        },
    }
    if items_in_schema:
        schema["maxItems"] = items
    return OutputSpec(schema=schema, max_tokens=worst_case_tokens(label_names, items, chars, ANSWER_PAIRS),
                      max_entities=items, max_entity_chars=chars)


@lru_cache(maxsize=256)
def _spec(label_names: tuple[str, ...], items: int, chars: int, items_in_schema: bool = True) -> OutputSpec:
    schema = {
        "type": "object",
        "properties": {
            "entities": {
                "type": "array",
                "maxItems": items,
                "items": {
                    "type": "object",
                    "properties": {
                        "label": {"enum": list(label_names)},
                        "text": {"type": "string", "pattern": TEXT_PATTERN % chars},
                    },
                    "required": ["label", "text"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["entities"],
        "additionalProperties": False,
    }
    if not items_in_schema:
        del schema["properties"]["entities"]["maxItems"]
        schema["properties"]["entities"]["items"]["properties"]["text"]["pattern"] = UNBOUNDED_TEXT_PATTERN
    return OutputSpec(schema=schema, max_tokens=worst_case_tokens(label_names, items, chars),
                      max_entities=items, max_entity_chars=chars)


def worst_case_tokens(label_names: tuple[str, ...] | list[str], items: int, chars: int,
                      answer_format: str = ANSWER_OBJECTS) -> int:
    """Upper bound on the tokens of the longest compact answer, plus one for the stop token."""
    longest_label = max(len(n.encode("utf-8")) for n in label_names)
    if answer_format == ANSWER_PAIRS:
        entity = len('["",""]') + longest_label + _MAX_UTF8_BYTES * chars
        total = len("[]") + items * entity + (items - 1)
    else:
        entity = len('{"label":"","text":""}') + longest_label + _MAX_UTF8_BYTES * chars
        total = len('{"entities":[]}') + items * entity + (items - 1)
    return total + 1
