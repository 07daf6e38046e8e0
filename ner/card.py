"""The task card: everything about the task that training and serving must agree on.

A card is saved as ``nerve_task.json`` next to a checkpoint's ``config.json``. The service reads it;
nothing about the task is configured twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .labels import PRESETS, LabelSet

CARD_FILENAME = "nerve_task.json"
ENCODER_FILENAME = "nerve_encoder.json"
"""Beside the card in token-classification checkpoints: their tag set, CRF flag and max length."""
CARD_VERSION = 1
ANSWER_OBJECTS = "objects"
"""Answers as ``{"entities":[{"label":L,"text":T},...]}`` (template nerve-ner-v1)."""
ANSWER_PAIRS = "pairs"
"""Answers as ``[[L,T],...]`` (template nerve-ner-v2): about 40% fewer tokens than objects."""


@dataclass(frozen=True, slots=True)
class SchemaBounds:
    """Bounds that make every constrained answer finite (see :mod:`nerve.ner.schema`)."""

    max_entities: int = 24
    """Most entities one answer may hold (``maxItems``)."""
    max_entity_chars: int = 64
    """Longest entity surface in characters (``maxLength``); also capped by the input's length."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_entities <= 512:
            raise ValueError("max_entities must be in [1, 512]")
        if not 1 <= self.max_entity_chars <= 1024:
            raise ValueError("max_entity_chars must be in [1, 1024]")


@dataclass(frozen=True)
class TaskCard:
    """Labels, prompt template, output bounds and provenance of an NER task."""

    labels: LabelSet
    name: str = "ner"
    language: str = "multi"
    """``zh``, ``en`` or ``multi``: informs prompt wording and reports only."""
    template: str = "nerve-ner-v1"
    """Id of the prompt template in :mod:`nerve.ner.prompts`."""
    bounds: SchemaBounds = field(default_factory=SchemaBounds)
    chat_template_sha256: str | None = None
    """Hash of the tokenizer chat template the model was trained with; checked at load time."""
    base_model: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    """Evaluation results recorded at export (free-form, e.g. ``{"dev": {"micro_f1": 0.8}}``)."""
    open_labels: bool = False
    """Whether requests may name labels that are not in ``labels`` (a model tuned on sampled label lists);
    ``labels`` is then the default list for requests that name none."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CARD_VERSION,
            "name": self.name,
            "language": self.language,
            "template": self.template,
            "labels": self.labels.to_list(),
            "bounds": asdict(self.bounds),
            "chat_template_sha256": self.chat_template_sha256,
            "base_model": self.base_model,
            "metrics": self.metrics,
            "open_labels": self.open_labels,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskCard:
        version = d.get("version", CARD_VERSION)
        if version != CARD_VERSION:
            raise ValueError(f"task card version {version} is not supported (expected {CARD_VERSION})")
        if "labels" not in d:
            raise ValueError("task card has no 'labels'")
        return cls(
            labels=LabelSet.from_list(d["labels"]),
            name=d.get("name", "ner"),
            language=d.get("language", "multi"),
            template=d.get("template", "nerve-ner-v1"),
            bounds=SchemaBounds(**d.get("bounds", {})),
            chat_template_sha256=d.get("chat_template_sha256"),
            base_model=d.get("base_model"),
            metrics=d.get("metrics", {}),
            open_labels=bool(d.get("open_labels", False)),
        )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CARD_FILENAME
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TaskCard:
        path = Path(directory) / CARD_FILENAME
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no task card; export the checkpoint with `nerve export`"
                                    " or pass --task to choose a preset") from None
        except (json.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: invalid task card: {exc}") from exc

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TaskCard:
        """A card for a built-in label set (``cluener`` or ``conll2003``)."""
        try:
            labels = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown task preset {name!r}; choose one of {sorted(PRESETS)}") from None
        language = {"cluener": "zh", "conll2003": "en"}.get(name, "multi")
        return cls(labels=labels, name=name, language=language, **overrides)

    def with_chat_template(self, chat_template: str | None) -> TaskCard:
        from dataclasses import replace

        return replace(self, chat_template_sha256=chat_template_sha256(chat_template))


def chat_template_sha256(chat_template: str | None) -> str | None:
    if chat_template is None:
        return None
    return hashlib.sha256(chat_template.encode("utf-8")).hexdigest()
