"""Training data: reading, splitting, the task card, tokenization with prompt masking, and the data report.

The generative format is the serving format: :func:`nerve.ner.prompts.render_training_pair` renders the prompt (masked
from the loss with -100) and the completion (the compact JSON answer followed by the chat template's end-of-turn
marker). Prompt and completion are tokenized separately, exactly as the server tokenizes the prompt and the
model generates the answer, and every encoded example is checked: labels are -100 on the prompt, equal to the
input ids on the completion, and the completion ends with the end-of-turn token (plus the tokenizer's eos when
the end-of-turn marker is not one of the model's generation eos ids).

:func:`nerve.tuning.report.data_report` gives entity counts per label and token-length percentiles, from which
the maximum training length is chosen (the 99th percentile rounded up, unless set). Longer examples are counted and dropped or
truncated, never silently.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nerve import reports
from nerve.ner.card import CARD_FILENAME, TaskCard
from nerve.ner.labels import PRESETS, LabelSet
from nerve.ner.prompts import answer_format, render_answer, render_training_pair
from nerve.ner.readers import NoEntitiesError, read_dataset
from nerve.ner.schema import TEXT_PATTERN  # noqa: F401  (documents which texts the schema admits)
from nerve.ner.types import Example

from .config import ConfigError, DataArgs, DataSource, expand_path

logger = logging.getLogger("nerve.tuning")

IGNORE_INDEX = -100
LENGTH_ROUND = 16
_CHECK_DECODE = 64
"""Examples whose token ids are also decoded back and compared with the rendered text."""


# --- reading and splitting -----------------------------------------------------------------------------


def load_examples(path: str | Path, format: str = "auto", conll_scheme: str = "auto", *,
                  allow_empty: bool = False) -> list[Example]:
    """Examples of a dataset file (any format :func:`nerve.ner.readers.read_dataset` reads).

    A file in which no example has an entity raises :class:`nerve.ner.readers.NoEntitiesError` unless
    ``allow_empty`` is set.
    """
    resolved = expand_path(str(path))
    assert resolved is not None
    if not Path(resolved).is_file():
        raise FileNotFoundError(f"dataset file not found: {resolved}")
    opts: dict[str, Any] = {}
    if format == "conll" or (format == "auto" and conll_scheme != "auto"):
        opts["scheme"] = conll_scheme
    return read_dataset(resolved, format=format, allow_empty=allow_empty, **opts)


def subset(examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """A random subset of ``n`` examples in their original order (all of them when ``n`` is None)."""
    if n is None or n >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def split_train_dev(examples: Sequence[Example], dev_ratio: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out ``dev_ratio`` of ``examples`` (at least one when the ratio is positive) as a dev set."""
    if not 0.0 <= dev_ratio < 1.0:
        raise ConfigError(f"data.dev_ratio must be in [0, 1), got {dev_ratio}")
    if dev_ratio == 0.0:
        return list(examples), []
    n_dev = max(1, round(len(examples) * dev_ratio))
    dev_idx = set(random.Random(seed).sample(range(len(examples)), n_dev))
    train = [e for i, e in enumerate(examples) if i not in dev_idx]
    dev = [e for i, e in enumerate(examples) if i in dev_idx]
    return train, dev


def load_splits(data: DataArgs) -> tuple[list[Example], list[Example]]:
    """Training and dev examples as configured (dev may be empty).

    A train or dev file without any entity is a :class:`ConfigError` unless ``data.allow_no_entities``.
    """
    if not data.train_file:
        raise ConfigError("data.train_file is required")

    def load(path: str) -> list[Example]:
        try:
            return load_examples(path, data.format, data.conll_scheme, allow_empty=data.allow_no_entities)
        except NoEntitiesError as exc:
            raise ConfigError(f"{exc} (data.allow_no_entities: true)") from exc

    train = load(data.train_file)
    if data.dev_file:
        dev = load(data.dev_file)
    else:
        train, dev = split_train_dev(train, data.dev_ratio, data.seed)
    train = subset(train, data.max_train_examples, data.seed)
    dev = subset(dev, data.max_dev_examples, data.seed + 1)
    if not train:
        raise ConfigError(f"{data.train_file}: no training examples")
    return train, dev


def _renames(source: DataSource) -> dict[str, str]:
    out = {}
    for item in source.rename:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ConfigError(f"data.sources rename {item!r}: expected OLD=new")
        out[old.strip()] = new.strip()
    return out


def _renamed(examples: Sequence[Example], renames: dict[str, str]) -> list[Example]:
    if not renames:
        return list(examples)
    return [Example(ex.text, [replace(e, label=renames.get(e.label, e.label)) for e in ex.entities], ex.id)
            for ex in examples]


@dataclass
class Mixture:
    """Training and dev examples of several sources, each example with its source's label vocabulary."""

    train: list[Example]
    train_vocab: list[tuple[str, ...]]
    dev: list[Example]
    dev_vocab: list[tuple[str, ...]]
    labels: list[str]
    """The union of the sources' labels, in source order (the card's labels)."""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Examples per source file: ``{"train": n, "dev": m}``."""


def load_mixture(data: DataArgs) -> Mixture:
    """The examples of ``data.sources``, renamed, subsetted and concatenated (shuffled by the trainer)."""
    mix = Mixture([], [], [], [], [])
    for i, source in enumerate(data.sources):
        if not source.train_file:
            raise ConfigError(f"data.sources[{i}].train_file is required")
        renames = _renames(source)

        def load(path: str, source: DataSource = source) -> list[Example]:
            try:
                return load_examples(path, source.format, data.conll_scheme, allow_empty=data.allow_no_entities)
            except NoEntitiesError as exc:
                raise ConfigError(f"{exc} (data.allow_no_entities: true)") from exc

        train = _renamed(subset(load(source.train_file), source.max_train_examples, data.seed + i), renames)
        dev = _renamed(subset(load(source.dev_file), source.max_dev_examples, data.seed + 100 + i), renames) \
            if source.dev_file else []
        vocab = tuple(infer_labels(train))
        if not vocab:
            raise ConfigError(f"{source.train_file}: no entities after renaming")
        stray = sorted({e.label for ex in dev for e in ex.entities} - set(vocab))
        if stray:
            raise ConfigError(f"{source.dev_file}: labels {stray} do not occur in {source.train_file}")
        mix.train += train
        mix.train_vocab += [vocab] * len(train)
        mix.dev += dev
        mix.dev_vocab += [vocab] * len(dev)
        mix.labels += [n for n in vocab if n not in mix.labels]
        mix.counts[source.train_file] = {"train": len(train), "dev": len(dev)}
        logger.info("source %s: %d train, %d dev examples, labels %s", source.train_file, len(train), len(dev),
                    ", ".join(vocab))
    return mix


def sample_label_list(example: Example, vocab: Sequence[str], rng: random.Random, data: DataArgs,
                      card_order: Sequence[str]) -> tuple[LabelSet, Example]:
    """A label list for one training example and the example restricted to it.

    With chance ``data.label_full_list`` the list is the source's whole vocabulary in the card's order (what a
    request naming no labels gets). Otherwise each label present in the example stays with chance
    ``1 - label_drop_present`` (a dropped label takes its gold entities out of the answer) and each absent one
    is listed with chance ``label_keep_absent`` (the model must answer nothing for it), in shuffled order.
    The list is never empty.
    """
    present = {e.label for e in example.entities}
    if rng.random() < data.label_full_list:
        names = [n for n in card_order if n in set(vocab)]
    else:
        names = [n for n in vocab if rng.random() >= (data.label_drop_present if n in present
                                                         else 1.0 - data.label_keep_absent)]
        if not names:
            names = [rng.choice(list(vocab))]
        rng.shuffle(names)
    kept = set(names)
    return LabelSet.from_names(names), Example(example.text, [e for e in example.entities if e.label in kept],
                                               example.id)


def sampled_label_lists(examples: Sequence[Example], vocabs: Sequence[Sequence[str]], data: DataArgs,
                        card_order: Sequence[str], seed: int) -> tuple[list[Example], list[LabelSet]]:
    """:func:`sample_label_list` for every example, reproducibly (one seeded generator per example)."""
    out_ex, out_labels = [], []
    for i, (ex, vocab) in enumerate(zip(examples, vocabs, strict=True)):
        labels, kept = sample_label_list(ex, vocab, random.Random(f"{seed}:{i}"), data, card_order)
        out_ex.append(kept)
        out_labels.append(labels)
    return out_ex, out_labels


# --- labels and the task card --------------------------------------------------------------------------


def infer_labels(examples: Sequence[Example]) -> list[str]:
    """Labels used by ``examples``, sorted by name."""
    return sorted({e.label for ex in examples for e in ex.entities})


def resolve_card(data: DataArgs, train: Sequence[Example], *, base_card: TaskCard | None = None,
                 labels: Sequence[str] | None = None) -> TaskCard:
    """The task card of a run: from ``labels`` (a mixture's union), ``data.task`` (preset or card file),
    ``data.labels``, or the data itself.

    ``base_card`` (the base model's own card) lends its prompt template and bounds when the labels come from
    elsewhere; the chat-template hash and metrics are set later.
    """
    if labels:
        card = TaskCard(labels=LabelSet.from_names(list(labels)), name="ner", language="multi")
    elif data.task:
        if data.task in PRESETS:
            card = TaskCard.preset(data.task)
        else:
            path = Path(expand_path(data.task) or "")
            directory = path.parent if path.name == CARD_FILENAME else path
            if not (directory / CARD_FILENAME).is_file():
                raise ConfigError(
                    f"data.task {data.task!r} is neither a preset ({', '.join(PRESETS)}) nor a task card"
                )
            card = TaskCard.load(directory)
    elif data.labels:
        card = TaskCard(labels=LabelSet.from_names(list(data.labels)))
    else:
        names = infer_labels(train)
        if not names:
            raise ConfigError("the training data has no entities; set data.task or data.labels")
        card = TaskCard(labels=LabelSet.from_names(names))
        logger.info("labels inferred from the training data: %s", ", ".join(names))
    if base_card is not None and not data.task:
        card = replace(card, template=base_card.template, bounds=base_card.bounds,
                       language=card.language if labels else base_card.language)
    return replace(card, metrics={}, chat_template_sha256=None, base_model=None)


def restrict_labels(examples: Sequence[Example], labels: Sequence[str], policy: str, split: str) -> tuple[
        list[Example], int]:
    """Examples with entities of unknown labels dropped (``policy="drop"``) or refused (``"error"``)."""
    allowed = set(labels)
    unknown = Counter(e.label for ex in examples for e in ex.entities if e.label not in allowed)
    if not unknown:
        return list(examples), 0
    if policy == "error":
        raise ConfigError(
            f"{split} data has labels outside the task's label set {sorted(allowed)}: "
            + ", ".join(f"{k} ({v})" for k, v in unknown.most_common())
            + "; fix data.task / data.labels or set data.unknown_labels: drop"
        )
    out = [Example(ex.text, [e for e in ex.entities if e.label in allowed], ex.id) for ex in examples]
    dropped = sum(unknown.values())
    logger.warning("%s: dropped %d entities with labels outside the task: %s", split, dropped, dict(unknown))
    return out, dropped


# --- tokenization (generative) -------------------------------------------------------------------------


@dataclass(frozen=True)
class EndOfTurn:
    """How a completion ends: the template's end-of-turn marker and the token ids that close an answer."""

    marker: str
    """Text the chat template puts after the assistant answer (e.g. ``<|im_end|>``); may be empty."""
    marker_ids: tuple[int, ...]
    eos_ids: tuple[int, ...]
    """The model's generation eos ids (generation config and tokenizer)."""
    append_eos: int | None
    """Token appended to every completion because the marker is not a generation eos (else None)."""

    @property
    def stop_ids(self) -> list[int]:
        """Every id that should stop generation: the eos ids and the marker's last token."""
        ids = list(dict.fromkeys([*self.eos_ids, *self.marker_ids[-1:]]))
        return ids


def end_of_turn(tokenizer, card: TaskCard, generation_eos: Sequence[int] | int | None = None) -> EndOfTurn:
    """The end-of-turn marker of ``tokenizer``'s chat template and whether an eos must follow it."""
    pair = render_training_pair(tokenizer, card, "x", [])
    answer = render_answer([], answer_format(card))
    marker = pair.completion[len(answer):]
    marker_ids = tuple(tokenizer(marker, add_special_tokens=False)["input_ids"]) if marker else ()
    if isinstance(generation_eos, int):
        generation_eos = [generation_eos]
    eos = [*(generation_eos or [])]
    if tokenizer.eos_token_id is not None:
        eos.append(tokenizer.eos_token_id)
    eos_ids = tuple(dict.fromkeys(eos))
    append = None
    if not marker_ids or marker_ids[-1] not in eos_ids:
        if tokenizer.eos_token_id is None:
            raise ValueError("the chat template's end-of-turn marker is not an eos token and the tokenizer has no eos")
        append = tokenizer.eos_token_id
    return EndOfTurn(marker=marker, marker_ids=marker_ids, eos_ids=eos_ids, append_eos=append)


def generation_eos_ids(model_dir: str | Path) -> list[int]:
    """The eos ids of a checkpoint's generation config (empty when it has none)."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return []
    eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


@dataclass
class Encoded:
    """Token ids of one example: ``labels`` is -100 on the prompt and equals ``input_ids`` on the completion."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def as_feature(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def encode_causal(tokenizer, card: TaskCard, examples: Sequence[Example], eot: EndOfTurn,
                  *, check_decode: int = _CHECK_DECODE, label_lists: Sequence[LabelSet] | None = None) -> list[Encoded]:
    """Prompt and completion ids of each example, checked (see the module docstring).

    ``label_lists`` gives each example the label list its prompt names (default: the card's labels).
    """
    if label_lists is None:
        pairs = [render_training_pair(tokenizer, card, ex.text, ex.entities) for ex in examples]
    else:
        pairs = [render_training_pair(tokenizer, card, ex.text, ex.entities, labels)
                 for ex, labels in zip(examples, label_lists, strict=True)]
    if not pairs:
        return []
    prompts = tokenizer([p.prompt for p in pairs], add_special_tokens=False)["input_ids"]
    completions = tokenizer([p.completion for p in pairs], add_special_tokens=False)["input_ids"]
    served = tokenizer(pairs[0].prompt)["input_ids"]
    if served != prompts[0]:
        logger.warning("the tokenizer adds special tokens to a rendered prompt (%d vs %d ids); training uses the "
                       "prompt as rendered by the chat template", len(served), len(prompts[0]))
    out = []
    for i, (pair, p, c) in enumerate(zip(pairs, prompts, completions, strict=True)):
        c = list(c)
        if eot.append_eos is not None:
            c.append(eot.append_eos)
        enc = Encoded(input_ids=list(p) + c, labels=[IGNORE_INDEX] * len(p) + c, prompt_len=len(p))
        check_encoded(enc, eot)
        if i < check_decode:
            _check_round_trip(tokenizer, pair.prompt, pair.completion, enc, eot)
        out.append(enc)
    return out


def check_encoded(enc: Encoded, eot: EndOfTurn) -> None:
    """Raise unless the prompt is masked, the completion is supervised and ends with the end token(s)."""
    p = enc.prompt_len
    if len(enc.input_ids) != len(enc.labels) or p >= len(enc.input_ids):
        raise AssertionError("encoded example has no completion or mismatched labels")
    if any(lab != IGNORE_INDEX for lab in enc.labels[:p]):
        raise AssertionError("a prompt token is not masked from the loss")
    if enc.labels[p:] != enc.input_ids[p:]:
        raise AssertionError("completion labels differ from the completion ids")
    tail = [*eot.marker_ids, *([eot.append_eos] if eot.append_eos is not None else [])]
    if tail and enc.input_ids[-len(tail):] != tail:
        raise AssertionError(f"completion does not end with the end-of-turn ids {tail}")


def _check_round_trip(tokenizer, prompt: str, completion: str, enc: Encoded, eot: EndOfTurn) -> None:
    text = tokenizer.decode(enc.input_ids[: enc.prompt_len], skip_special_tokens=False,
                            clean_up_tokenization_spaces=False)
    if text != prompt:
        raise AssertionError(f"prompt ids do not decode to the rendered prompt: {text[-80:]!r} vs {prompt[-80:]!r}")
    comp = tokenizer.decode(enc.input_ids[enc.prompt_len:], skip_special_tokens=False,
                            clean_up_tokenization_spaces=False)
    expected = completion + (tokenizer.decode([eot.append_eos]) if eot.append_eos is not None else "")
    if comp != expected:
        raise AssertionError(f"completion ids do not decode to the rendered completion: {comp!r} vs {expected!r}")


def apply_max_length(encoded: Sequence[Encoded], max_length: int, policy: str) -> tuple[list[Encoded], int]:
    """Examples within ``max_length`` tokens; longer ones dropped or truncated. Returns them and the count."""
    out, over = [], 0
    for enc in encoded:
        if len(enc) <= max_length:
            out.append(enc)
            continue
        over += 1
        if policy == "truncate" and enc.prompt_len < max_length - 1:
            out.append(Encoded(enc.input_ids[:max_length], enc.labels[:max_length], enc.prompt_len))
        # else: dropped (a prompt that fills max_length leaves nothing to learn)
    return out, over


# --- the data report -----------------------------------------------------------------------------------


@dataclass
class LengthStats:
    """Token lengths of examples (prompt + completion for generative runs; encoder tokens for token-cls)."""

    p50: int
    p90: int
    p95: int
    p99: int
    max: int
    mean: float

    @classmethod
    def of(cls, lengths: Sequence[int]) -> LengthStats:
        if not lengths:
            return cls(0, 0, 0, 0, 0, 0.0)
        return cls(*(percentile(lengths, q) for q in (50, 90, 95, 99)), max(lengths),
                   round(sum(lengths) / len(lengths), 1))


def percentile(values: Sequence[int], q: float) -> int:
    """The ``q``-th percentile of token lengths: the nearest rank, so at least ``q``% of values are <= it."""
    return int(reports.percentile(values, q, method="nearest"))


def round_up(n: int, multiple: int = LENGTH_ROUND) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@dataclass
class DataReport:
    """What a dataset looks like to a model, and what the run does about long or unservable examples."""

    split: str
    kind: str
    examples: int
    entities: int
    labels: dict[str, int]
    without_entities: int
    lengths: LengthStats
    max_length: int
    max_length_source: str
    overlength: int
    overlength_policy: str
    prompt_tokens: LengthStats | None = None
    completion_tokens: LengthStats | None = None
    dropped_entities: int = 0
    unservable: dict[str, int] = field(default_factory=dict)
    """Examples whose gold answer the serving schema cannot produce (too many entities, too long, escapes)."""
    untaggable: dict[str, int] = field(default_factory=dict)
    """token-cls: entities not on token boundaries, or overlapping another, that BIO tags cannot hold."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [
            f"### Data report: {self.split} ({self.kind})",
            "",
            f"- examples: {self.examples} ({self.without_entities} without entities), entities: {self.entities}",
            "- entities per label: " + ", ".join(f"{k} {v}" for k, v in self.labels.items()),
            f"- tokens per example: p50 {self.lengths.p50}, p90 {self.lengths.p90}, p95 {self.lengths.p95}, "
            f"p99 {self.lengths.p99}, max {self.lengths.max}, mean {self.lengths.mean}",
            f"- max length: {self.max_length} ({self.max_length_source}); longer examples: {self.overlength} "
            f"({self.overlength_policy})",
        ]
        if self.completion_tokens is not None:
            lines.append(f"- answer tokens: p50 {self.completion_tokens.p50}, p99 {self.completion_tokens.p99}, "
                         f"max {self.completion_tokens.max}")
        if self.dropped_entities:
            lines.append(f"- entities dropped (label outside the task): {self.dropped_entities}")
        for k, v in {**self.unservable, **self.untaggable}.items():
            if v:
                lines.append(f"- {k.replace('_', ' ')}: {v}")
        return "\n".join(lines) + "\n"

    def print(self, console=None) -> None:
        """A rich table of the report."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console(stderr=True)
        table = Table(title=f"{self.split}: {self.examples} examples, {self.entities} entities", show_header=True)
        table.add_column("label")
        table.add_column("entities", justify="right")
        for k, v in self.labels.items():
            table.add_row(k, str(v))
        console.print(table)
        ls = self.lengths
        console.print(f"tokens/example p50 {ls.p50} p90 {ls.p90} p95 {ls.p95} p99 {ls.p99} max {ls.max}; "
                      f"max_length {self.max_length} ({self.max_length_source}); "
                      f"{self.overlength} longer → {self.overlength_policy}")
        extra = {k: v for k, v in {**self.unservable, **self.untaggable}.items() if v}
        if extra or self.dropped_entities:
            console.print("[yellow]" + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in extra.items())
                          + (f" dropped entities: {self.dropped_entities}" if self.dropped_entities else ""))


def entity_counts(examples: Sequence[Example], labels: Sequence[str] | None = None) -> dict[str, int]:
    counts = Counter(e.label for ex in examples for e in ex.entities)
    order = list(labels) if labels else []
    order += sorted(k for k in counts if k not in order)
    return {k: counts.get(k, 0) for k in order}


def unservable_counts(examples: Sequence[Example], card: TaskCard) -> dict[str, int]:
    """Gold answers the bounded serving schema (:mod:`nerve.ner.schema`) cannot express."""
    too_many = sum(len(ex.entities) > card.bounds.max_entities for ex in examples)
    too_long = sum(any(len(e.text) > card.bounds.max_entity_chars for e in ex.entities) for ex in examples)
    escaped = sum(any(any(ch == '"' or ch == "\\" or ord(ch) < 0x20 for ch in e.text) for e in ex.entities)
                  for ex in examples)
    return {"too_many_entities": too_many, "entity_too_long": too_long, "entity_needs_escape": escaped}


def choose_max_length(lengths: Sequence[int], explicit: int | None, q: float) -> tuple[int, str]:
    if explicit is not None:
        if explicit < 8:
            raise ConfigError(f"data.max_length {explicit} is too small")
        return explicit, "explicit"
    if not lengths:
        return LENGTH_ROUND, f"p{q:g} (no data)"
    return round_up(percentile(lengths, q)), f"p{q:g} rounded up to a multiple of {LENGTH_ROUND}"


def report_causal(split: str, examples: Sequence[Example], encoded: Sequence[Encoded], card: TaskCard,
                  data: DataArgs, max_length: int | None = None, dropped_entities: int = 0) -> DataReport:
    lengths = [len(e) for e in encoded]
    if max_length is None:
        max_length, source = choose_max_length(lengths, data.max_length, data.length_percentile)
    else:
        source = "from the training data"
    return DataReport(
        split=split, kind="causal-lm", examples=len(examples),
        entities=sum(len(ex.entities) for ex in examples),
        labels=entity_counts(examples, card.labels.names),
        without_entities=sum(not ex.entities for ex in examples),
        lengths=LengthStats.of(lengths), max_length=max_length, max_length_source=source,
        overlength=sum(n > max_length for n in lengths), overlength_policy=data.overlength,
        prompt_tokens=LengthStats.of([e.prompt_len for e in encoded]),
        completion_tokens=LengthStats.of([len(e) - e.prompt_len for e in encoded]),
        dropped_entities=dropped_entities, unservable=unservable_counts(examples, card),
    )
