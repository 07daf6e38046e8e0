"""Core value types of the NER task contract.

Offsets are Unicode code-point indices into the input text (Python ``str`` indices),
``start`` inclusive and ``end`` exclusive, so ``text[start:end] == entity.text`` always holds
for a grounded entity.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, order=True)
class Entity:
    """A labelled span of the input text."""

    start: int
    end: int
    label: str
    text: str
    score: float | None = field(default=None, compare=False)
    """The model's confidence in this entity, in (0, 1], where the engine gives one (not part of its identity:
    equal entities with other scores are equal). See :func:`nerve.ner.parsing.mention_scores`."""

    def __post_init__(self) -> None:
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"invalid span [{self.start}, {self.end}) for entity {self.text!r}")
        if len(self.text) != self.end - self.start:
            raise ValueError(
                f"entity text {self.text!r} has {len(self.text)} characters but span "
                f"[{self.start}, {self.end}) has {self.end - self.start}"
            )

    @property
    def key(self) -> tuple[int, int, str]:
        """Identity used by strict span-level scoring."""
        return (self.start, self.end, self.label)

    def to_dict(self) -> dict:
        """``label``, ``text``, ``start``, ``end``, and ``score`` when there is one."""
        d: dict = {"label": self.label, "text": self.text, "start": self.start, "end": self.end}
        if self.score is not None:
            d["score"] = self.score
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Entity:
        return cls(start=int(d["start"]), end=int(d["end"]), label=str(d["label"]), text=str(d["text"]))

    @classmethod
    def at(cls, text: str, start: int, end: int, label: str) -> Entity:
        """The entity covering ``text[start:end]``."""
        if not 0 <= start < end <= len(text):
            raise ValueError(f"span [{start}, {end}) outside a text of {len(text)} characters")
        return cls(start=start, end=end, label=label, text=text[start:end])


@dataclass(slots=True)
class Example:
    """One input text with its gold entities (sorted by offset)."""

    text: str
    entities: list[Entity] = field(default_factory=list)
    id: str | None = None

    def __post_init__(self) -> None:
        for e in self.entities:
            if e.end > len(self.text) or self.text[e.start : e.end] != e.text:
                raise ValueError(
                    f"entity {e.text!r} [{e.start}, {e.end}) does not match the text"
                    f" {self.text[e.start:e.end]!r}"
                )
        self.entities = sorted(self.entities)

    def to_dict(self) -> dict:
        d: dict = {"text": self.text, "entities": [e.to_dict() for e in self.entities]}
        if self.id is not None:
            d = {"id": self.id, **d}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Example:
        return cls(
            text=d["text"],
            entities=[Entity.from_dict(e) for e in d.get("entities", [])],
            id=d.get("id"),
        )
