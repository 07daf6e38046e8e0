"""Grounded decoding: a per-request grammar whose entity texts can only be substrings of the input.

The bounded JSON schema (:mod:`nerve.ner.schema`) guarantees a parseable answer but lets the model write any text,
which grounding then drops as a hallucination. This grammar goes further: each entity's ``text`` is a path in
the suffix automaton of the input, so every answer is made of real substrings and nothing is ever dropped.
The automaton has at most ``2n`` states and ``3n`` transitions for an input of ``n`` characters, so the grammar
stays linear in the input; the price is one grammar compilation per request (no cache reuse), measured in
``bench/reports/spine.md``.

Characters that would need a JSON escape (``"``, ``\\``, control characters) end the substrings they occur
in, exactly like the schema's text pattern.
"""

from __future__ import annotations

import json

from .card import ANSWER_OBJECTS, ANSWER_PAIRS, SchemaBounds
from .labels import LabelSet
from .schema import items_for_text, worst_case_tokens


def _suffix_automaton(text: str) -> list[dict[str, int]]:
    """Transitions of the suffix automaton of ``text`` (state 0 is the initial state)."""
    nxt: list[dict[str, int]] = [{}]
    link, length = [-1], [0]
    last = 0
    for ch in text:
        cur = len(nxt)
        nxt.append({})
        length.append(length[last] + 1)
        link.append(0)
        p = last
        while p != -1 and ch not in nxt[p]:
            nxt[p][ch] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][ch]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(nxt)
                nxt.append(dict(nxt[q]))
                length.append(length[p] + 1)
                link.append(link[q])
                while p != -1 and nxt[p].get(ch) == q:
                    nxt[p][ch] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        last = cur
    return nxt


def _ebnf_char(ch: str) -> str:
    return json.dumps(ch, ensure_ascii=False)  # a quoted EBNF literal with the same escapes as JSON


def _allowed(ch: str) -> bool:
    return ch not in '"\\' and ord(ch) >= 0x20


def grounded_grammar(text: str, labels: LabelSet, bounds: SchemaBounds,
                     max_entities: int | None = None, answer_format: str = ANSWER_OBJECTS) -> tuple[str, int]:
    """EBNF grammar (xgrammar / GBNF dialect) for answers whose entity texts are substrings of ``text``.

    Returns the grammar and its worst-case token count (the ``max_tokens`` to request).
    """
    items = bounds.max_entities if max_entities is None else min(max_entities, bounds.max_entities)
    items = min(items, items_for_text(len(text)))
    chars = min(bounds.max_entity_chars, len(text))
    nxt = _suffix_automaton(text)
    # Keep only states reachable through allowed characters, numbering them compactly.
    order, seen, stack = [], {0}, [0]
    while stack:
        s = stack.pop()
        order.append(s)
        for ch, t in nxt[s].items():
            if _allowed(ch) and t not in seen:
                seen.add(t)
                stack.append(t)
    rules = []
    for s in order:
        alts = [f"{_ebnf_char(ch)} t{t}" for ch, t in sorted(nxt[s].items()) if _allowed(ch)]
        if s == 0:
            rules.append(f"s0 ::= {' | '.join(alts)}" if alts else 's0 ::= "\\u0000"')
        else:
            rules.append(f"t{s} ::= \"\"" + "".join(f" | {a}" for a in alts))
    label_alt = " | ".join(json.dumps(json.dumps(n)) for n in labels.names)
    more = f'("," item){{0,{items - 1}}}' if items > 1 else ""
    if answer_format == ANSWER_PAIRS:
        item = '"[" label ",\\"" s0 "\\"]"'
        root = f'root ::= "[" (item {more})? "]"'
    elif answer_format == ANSWER_OBJECTS:
        item = '"{\\"label\\":" label ",\\"text\\":\\"" s0 "\\"}"'
        root = f'root ::= "{{\\"entities\\":[" (item {more})? "]}}"'
    else:
        raise ValueError(f"unknown answer format {answer_format!r}")
    head = [
        root,
        f"item ::= {item}",
        f"label ::= {label_alt}",
    ]
    grammar = "\n".join(head + rules) + "\n"
    # Substrings are at most len(text) long; max_entity_chars is not enforced here (the input bounds them).
    budget = worst_case_tokens(labels.names, items, max(chars, len(text)), answer_format)
    return grammar, budget
