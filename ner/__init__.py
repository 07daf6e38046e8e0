"""The NER task contract shared by tuning and serving.

Pure Python (no torch at import): entity types, label sets, the task card, prompt rendering, the output
schema with its token budget, answer parsing and grounding, scoring and dataset readers.
"""

from .card import CARD_FILENAME, SchemaBounds, TaskCard
from .labels import CLUENER, CONLL2003, PRESETS, Label, LabelSet
from .parsing import AnswerParseError, Grounding, Mention, ground, parse_answer
from .prompts import check_chat_template, render_answer, render_messages, render_prompt, render_training_pair
from .schema import OutputSpec, output_spec
from .types import Entity, Example

__all__ = [
    "CARD_FILENAME", "CLUENER", "CONLL2003", "PRESETS", "AnswerParseError", "Entity", "Example", "Grounding",
    "Label", "LabelSet", "Mention", "OutputSpec", "SchemaBounds", "TaskCard", "check_chat_template", "ground",
    "output_spec", "parse_answer", "render_answer", "render_messages", "render_prompt", "render_training_pair",
]
