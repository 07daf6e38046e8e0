"""Character offsets in other units than Python's code points.

Annotation tools written in JavaScript count UTF-16 code units, in which a character outside the Basic
Multilingual Plane (most emoji, rare CJK ideographs in plane 2) takes two units: after such a character, a
JavaScript offset is larger than the code-point offset of the same position. For texts without such characters
the two are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

OFFSET_UNITS = ("code-points", "utf-16")
"""Units a reader or writer may be told to count offsets in."""


def is_astral(ch: str) -> bool:
    """Whether ``ch`` is outside the Basic Multilingual Plane (two UTF-16 code units)."""
    return ord(ch) > 0xFFFF


def has_astral(text: str) -> bool:
    return any(is_astral(ch) for ch in text)


def utf16_positions(text: str) -> list[int]:
    """The UTF-16 offset of every code-point position of ``text``: ``len(text) + 1`` increasing integers."""
    positions = [0]
    for ch in text:
        positions.append(positions[-1] + (2 if is_astral(ch) else 1))
    return positions


def to_utf16(text: str, offsets: Sequence[int]) -> list[int]:
    """Code-point ``offsets`` of ``text`` as UTF-16 offsets."""
    if not has_astral(text):
        return list(offsets)
    positions = utf16_positions(text)
    return [positions[o] for o in offsets]


def from_utf16(text: str, offsets: Sequence[int]) -> list[int | None]:
    """UTF-16 ``offsets`` of ``text`` as code-point offsets; ``None`` for one that falls inside a surrogate pair
    (between the two halves of one character) or outside the text."""
    if not has_astral(text):
        return [o if 0 <= o <= len(text) else None for o in offsets]
    index = {u: i for i, u in enumerate(utf16_positions(text))}
    return [index.get(o) for o in offsets]


def check_unit(units: str, *, allow_auto: bool = False) -> str:
    """``units`` if it names an offset unit (or ``auto`` when allowed), else :class:`ValueError`."""
    allowed = OFFSET_UNITS + (("auto",) if allow_auto else ())
    if units not in allowed:
        raise ValueError(f"unknown offset unit {units!r} (expected one of: {', '.join(allowed)})")
    return units
