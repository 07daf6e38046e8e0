"""What a kind of model needs from a tuning run: its task card, its features, and what scores it during training.

Every method (``nerve.tuning.methods``) has a kind, and :data:`RECIPES` the recipe of each kind: the causal-LM
methods (full, freeze, lora, qlora) share :class:`CausalRecipe` (prompt and answer through the card's
template, packing, dev scores from the serving engine), ``token-cls`` has :class:`TaggerRecipe` (BIO tags per
token, scored by the tagger itself). ``nerve.tuning.run.run_config`` calls the recipe and never asks which kind it has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from nerve.ner.card import CARD_FILENAME, TaskCard
from nerve.ner.labels import LabelSet
from nerve.ner.types import Example

from .config import ConfigError, TuneConfig
from .data import (
    Mixture,
    apply_max_length,
    encode_causal,
    end_of_turn,
    generation_eos_ids,
    report_causal,
    sampled_label_lists,
)

logger = logging.getLogger("nerve.tuning")

TUNED_TEMPLATE = "nerve-ner-v2"
"""The prompt template tuned checkpoints use unless ``data.template`` says otherwise (compact, see nerve.ner.prompts)."""


@dataclass
class Features:
    """The encoded data of a run and what was measured on the way."""

    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]
    report: Any
    """The training data's report (``DataReport``: counts, token lengths, the max length chosen)."""
    dev_report: Any | None
    max_length: int
    model_kwargs: dict[str, Any]
    """What ``Method.load`` needs beyond the config (the tagger's tag list)."""


class Recipe:
    """Base class: how one kind of model is prepared for, fed and scored during a tuning run."""

    causal: ClassVar[bool]
    """Whether the model is a causal LM (the trainer's loss on the answer; selective logits apply)."""

    def check_config(self, cfg: TuneConfig) -> None:
        """Raise :class:`ConfigError` for settings this kind of model cannot honour."""

    def base_card(self, model_path: Path) -> TaskCard | None:
        """The card a base checkpoint carries, when the run should start from its labels and descriptions."""
        return None

    def card(self, card: TaskCard, cfg: TuneConfig, tokenizer) -> TaskCard:
        """The run's card, from the card the data gives."""
        raise NotImplementedError

    def features(self, cfg: TuneConfig, tokenizer, model_path: Path, card: TaskCard, train: list[Example],
                 dev: list[Example], mixture: Mixture | None, dropped: int, dropped_dev: int) -> Features:
        raise NotImplementedError

    def evaluator(self, cfg: TuneConfig, dev: list[Example], tokenizer, card: TaskCard, feats: Features):
        """What scores the dev set at each evaluation beyond the dev loss (None: the loss only)."""
        return None


class CausalRecipe(Recipe):
    causal = True

    def base_card(self, model_path: Path) -> TaskCard | None:
        return TaskCard.load(model_path) if (model_path / CARD_FILENAME).is_file() else None

    def card(self, card: TaskCard, cfg: TuneConfig, tokenizer) -> TaskCard:
        card = replace(card, template=cfg.data.template or TUNED_TEMPLATE, open_labels=cfg.data.label_sampling,
                       base_model=cfg.model.name_or_path)
        return card.with_chat_template(tokenizer.chat_template)

    def features(self, cfg: TuneConfig, tokenizer, model_path: Path, card: TaskCard, train: list[Example],
                 dev: list[Example], mixture: Mixture | None, dropped: int, dropped_dev: int) -> Features:
        eot = end_of_turn(tokenizer, card, generation_eos_ids(model_path))
        train_lists = dev_lists = None
        if cfg.data.label_sampling:
            vocabs = mixture.train_vocab if mixture else [tuple(card.labels.names)] * len(train)
            train, train_lists = sampled_label_lists(train, vocabs, cfg.data, card.labels.names, cfg.data.seed)
        if mixture:  # each dev example is scored with its own source's labels, in the card's order
            dev_lists = [LabelSet.from_names([n for n in card.labels.names if n in v]) for v in mixture.dev_vocab]
        encoded = encode_causal(tokenizer, card, train, eot, label_lists=train_lists)
        report = report_causal("train", train, encoded, card, cfg.data, dropped_entities=dropped)
        max_len = report.max_length
        train_enc, over = apply_max_length(encoded, max_len, cfg.data.overlength)
        dev_encoded = encode_causal(tokenizer, card, dev, eot, label_lists=dev_lists)
        dev_report = report_causal("dev", dev, dev_encoded, card, cfg.data, max_len, dropped_dev) if dev else None
        if over:
            logger.warning("%d of %d training examples are longer than max_length %d tokens: %s", over,
                           len(encoded), max_len, "dropped" if cfg.data.overlength == "drop" else "truncated")
        logger.info("end of answer: %r (ids %s)%s", eot.marker, list(eot.marker_ids),
                    f" + eos {eot.append_eos}" if eot.append_eos is not None else "")
        return Features(train=[e.as_feature() for e in train_enc],
                        dev=[e.as_feature() for e in apply_max_length(dev_encoded, max_len, cfg.data.overlength)[0]],
                        report=report, dev_report=dev_report, max_length=max_len, model_kwargs={})

    def evaluator(self, cfg: TuneConfig, dev: list[Example], tokenizer, card: TaskCard, feats: Features):
        from .evaluation import EngineEvaluator, engine_unavailable_reason

        if not cfg.eval.with_engine:
            logger.info("eval.with_engine is false: evaluating dev loss only; best checkpoint by lowest dev loss.")
            return None
        reason = engine_unavailable_reason()
        if reason:
            logger.warning("engine evaluation off: %s. Evaluating dev loss only; best checkpoint by lowest dev loss.",
                           reason)
            return None
        return EngineEvaluator(dev, card, limit=cfg.eval.max_examples, export_dtype=cfg.model.export_dtype,
                               progress=cfg.train.progress)


class TaggerRecipe(Recipe):
    causal = False

    def check_config(self, cfg: TuneConfig) -> None:
        if cfg.train.packing:
            raise ConfigError("train.packing applies to causal-LM methods only (token-cls pads per batch)")

    def card(self, card: TaskCard, cfg: TuneConfig, tokenizer) -> TaskCard:
        return replace(card, base_model=cfg.model.name_or_path, chat_template_sha256=None)

    def features(self, cfg: TuneConfig, tokenizer, model_path: Path, card: TaskCard, train: list[Example],
                 dev: list[Example], mixture: Mixture | None, dropped: int, dropped_dev: int) -> Features:
        from .encoder import bio_tags, encode_token_cls, report_token_cls

        tags = bio_tags(card.labels.names)
        report = report_token_cls("train", train, tokenizer, card, cfg.data, dropped_entities=dropped)
        max_len = report.max_length
        dev_report = report_token_cls("dev", dev, tokenizer, card, cfg.data, max_len, dropped_dev) if dev else None
        if report.overlength:
            logger.warning("%d of %d training texts are longer than max_length %d tokens: truncated (entities past "
                           "the cut: %d)", report.overlength, len(train), max_len, report.untaggable["truncated"])
        return Features(train=encode_token_cls(tokenizer, train, tags, max_len),
                        dev=encode_token_cls(tokenizer, dev, tags, max_len) if dev else [],
                        report=report, dev_report=dev_report, max_length=max_len, model_kwargs={"tags": tags})

    def evaluator(self, cfg: TuneConfig, dev: list[Example], tokenizer, card: TaskCard, feats: Features):
        from .encoder import TaggerEvaluator

        return TaggerEvaluator(dev, tokenizer, feats.model_kwargs["tags"], card.labels.names, feats.max_length,
                               limit=cfg.eval.max_examples)


RECIPES: dict[str, type[Recipe]] = {"causal-lm": CausalRecipe, "token-cls": TaggerRecipe}
"""The recipe of each kind of method (``Method.kind``)."""


def recipe_for(method) -> Recipe:
    """The recipe of a method (a ``nerve.tuning.methods.Method``)."""
    try:
        return RECIPES[method.kind]()
    except KeyError:
        raise ConfigError(f"method {method.name!r} has kind {method.kind!r}, which has no recipe; known kinds: "
                          f"{', '.join(RECIPES)}") from None
