"""Prompt rendering, the single place where a task becomes model input.

Training and serving both call :func:`render_prompt` (through the tokenizer's own chat template), so the
text a model is tuned on is byte-for-byte the text it is served. The answer format is the compact JSON
produced by :func:`render_answer`, which is also what the output schema (:mod:`nerve.ner.schema`) admits.

Two templates, pinned by the task card:

* ``nerve-ner-v1`` (zero-shot use): instructions with every label's description, answers as objects
  ``{"entities":[{"label":"PER","text":"Ada"}]}``. About 270 prompt tokens for CLUENER.
* ``nerve-ner-v2`` (tuned checkpoints): one line naming the requested labels (with a description only where the
  card or the request gives one), answers as ``[label, text]`` pairs ``[["PER","Ada"]]``. About a quarter of
  v1's tokens per example (``bench/reports/tuning.md``), which is what makes tuning and prefill cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .card import ANSWER_OBJECTS, ANSWER_PAIRS, TaskCard, chat_template_sha256
from .labels import LabelSet
from .types import Entity


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer that rendering needs."""

    chat_template: str | None

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def _system_v1(labels: LabelSet) -> str:
    lines = [
        "You are a named entity recognizer. Find every entity of these types in the user's text:",
        *(f"- {lab.name}: {lab.description}" if lab.description else f"- {lab.name}" for lab in labels),
        'Answer with JSON only: {"entities":[{"label":TYPE,"text":SPAN},...]} listing entities in order of'
        " occurrence, each SPAN copied exactly from the text, once per occurrence."
        ' If there are none, answer {"entities":[]}.',
    ]
    return "\n".join(lines)


def _system_v2(labels: LabelSet) -> str:
    names = ", ".join(f"{lab.name} ({lab.description})" if lab.description else lab.name for lab in labels)
    return f"Extract entities of these types: {names}.\nAnswer [[type,span],...] in order; [] if none."


@dataclass(frozen=True, slots=True)
class Template:
    """A prompt template: its system instructions and the answer format they ask for."""

    id: str
    system: Callable[[LabelSet], str]
    answer_format: str
    """:data:`nerve.ner.card.ANSWER_OBJECTS` or :data:`nerve.ner.card.ANSWER_PAIRS` (what the schema and the parser use)."""


TEMPLATES: dict[str, Template] = {
    t.id: t for t in (Template("nerve-ner-v1", _system_v1, ANSWER_OBJECTS),
                      Template("nerve-ner-v2", _system_v2, ANSWER_PAIRS))
}


def template(card: TaskCard) -> Template:
    try:
        return TEMPLATES[card.template]
    except KeyError:
        raise ValueError(f"unknown prompt template {card.template!r}; known: {sorted(TEMPLATES)}") from None


def answer_format(card: TaskCard) -> str:
    """The answer format the card's template asks for."""
    return template(card).answer_format


def render_messages(card: TaskCard, text: str, labels: LabelSet | None = None) -> list[dict[str, str]]:
    """Chat messages for one input (system instructions + the text as the user turn)."""
    return [
        {"role": "system", "content": template(card).system(labels or card.labels)},
        {"role": "user", "content": text},
    ]


def render_answer(entities: Sequence[Entity], answer_format: str = ANSWER_OBJECTS) -> str:
    """The compact JSON answer for gold entities, in order of occurrence (the training target)."""
    ordered = sorted(entities)
    if answer_format == ANSWER_PAIRS:
        return json.dumps([[e.label, e.text] for e in ordered], ensure_ascii=False, separators=(",", ":"))
    if answer_format != ANSWER_OBJECTS:
        raise ValueError(f"unknown answer format {answer_format!r}")
    items = [{"label": e.label, "text": e.text} for e in ordered]
    return json.dumps({"entities": items}, ensure_ascii=False, separators=(",", ":"))


def check_chat_template(card: TaskCard, tokenizer: ChatTokenizer) -> None:
    """Raise if the tokenizer's chat template differs from the one the card was trained with."""
    if card.chat_template_sha256 is None:
        return
    actual = chat_template_sha256(tokenizer.chat_template)
    if actual != card.chat_template_sha256:
        raise ValueError(
            "the tokenizer's chat template does not match the task card "
            f"(card {card.chat_template_sha256[:12]}…, tokenizer {str(actual)[:12]}…): prompts would differ "
            "from training and accuracy would silently drop"
        )


def render_prompt(
    tokenizer: ChatTokenizer, card: TaskCard, text: str, labels: LabelSet | None = None
) -> str:
    """The full prompt string, ending with the assistant generation prefix."""
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; nerve needs an instruction-tuned checkpoint")
    return tokenizer.apply_chat_template(
        render_messages(card, text, labels), tokenize=False, add_generation_prompt=True
    )


@dataclass(frozen=True, slots=True)
class TrainingPair:
    """A rendered training example: the prompt (masked from the loss) and the completion."""

    prompt: str
    completion: str
    """The answer followed by the template's end-of-turn marker (e.g. ``<|im_end|>``)."""


def render_training_pair(tokenizer: ChatTokenizer, card: TaskCard, text: str, entities: Sequence[Entity],
                         labels: LabelSet | None = None) -> TrainingPair:
    """Prompt and completion for supervised tuning, rendered by the same template as serving.

    ``labels`` is the label list the prompt names (default: the card's); ``entities`` must only use those.
    The completion is what the chat template places after the generation prefix for the assistant turn,
    with trailing whitespace removed, so it ends with the end-of-turn token the server stops on.
    """
    fmt = answer_format(card)
    if labels is not None:
        stray = sorted({e.label for e in entities} - set(labels.names))
        if stray:
            raise ValueError(f"entities with labels {stray} are not in the prompt's label list {labels.names}")
    answer = render_answer(entities, fmt)
    prompt = render_prompt(tokenizer, card, text, labels)
    messages = render_messages(card, text, labels) + [{"role": "assistant", "content": answer}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template renders the conversation with a different prefix than the generation prompt;"
            " prompt masking would be wrong for this template"
        )
    completion = full[len(prompt) :].rstrip()
    if not completion.startswith(answer):
        raise ValueError("the chat template altered the assistant answer; cannot train on it")
    return TrainingPair(prompt=prompt, completion=completion)
