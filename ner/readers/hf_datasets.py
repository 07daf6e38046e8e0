"""Hugging Face ``datasets`` folders: what ``Dataset.save_to_disk`` and ``DatasetDict.save_to_disk`` write.

Read and written with the ``datasets`` library (an optional dependency: ``pip install 'nerve[formats]'``). A
row holds a ``tokens`` column (a list of strings) and a ``ner_tags`` column of tags, integers named by the
column's ``ClassLabel`` feature (as in the Hub's ``conll2003``, ``wikiann``, ``peoples_daily_ner``) or tag
strings. Tags are decoded like CoNLL's (``B-``/``I-``, and ``E-``/``S-`` too, leniently, see
:mod:`.conll`); the text is the tokens joined by ``sep`` (a space; ``sep=""`` for a character-level Chinese
dataset), with offsets computed accordingly. The example id is the ``id`` column when there is one, else
``<folder name>:<row index>``. ``tokens=`` and ``tags=`` name other columns.

A ``DatasetDict`` folder (with ``dataset_dict.json``) holds one folder per split: read ``path/train``, or pass
``split="train"``; without either the reader names the splits. Columns of per-token values other than the tags
(``pos_tags``, ``chunk_tags``, ``langs``: lists as long as ``tokens``) are not needed and are not read; any other
column is an error, unless listed in ``ignore_columns``. A folder has no lines: errors name the row.

The writer writes one ``Dataset`` (or, with ``split=``, a ``DatasetDict`` of that one split) with ``id``,
``tokens`` and ``ner_tags`` (a ``ClassLabel`` of IOB2 tags, or BIOES with ``scheme="bioes"``): tokens are the
whitespace-separated words of the text (``sep=" "``, as the CoNLL writer does) or its characters (``sep=""``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..types import Example
from ._io import default_id
from .conll import Tag, entities_to_tags, example_tokens, normalize_scheme, parse_tag, sentence_example, token_offsets
from .doccano import field_names
from .errors import DatasetFormatError, MissingDependencyError

DATASET_FILES = ("dataset_info.json", "state.json")
"""The files ``Dataset.save_to_disk`` writes beside the Arrow data."""

DATASET_DICT_FILE = "dataset_dict.json"
"""The file ``DatasetDict.save_to_disk`` writes beside its split folders."""


def _datasets(path: str | os.PathLike[str], what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(path, what, "datasets") from None
    return datasets


def is_dataset_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder that ``save_to_disk`` wrote (a ``Dataset`` or a ``DatasetDict``)."""
    p = Path(path)
    return (p / DATASET_DICT_FILE).is_file() or all((p / f).is_file() for f in DATASET_FILES)


def dataset_splits(path: str | os.PathLike[str]) -> list[str] | None:
    """The splits of a ``DatasetDict`` folder, ``None`` for a ``Dataset`` folder."""
    p = Path(path) / DATASET_DICT_FILE
    if not p.is_file():
        return None
    try:
        splits = json.loads(p.read_text(encoding="utf-8"))["splits"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetFormatError(p, None, f"not a DatasetDict file ({exc})") from None
    return [str(s) for s in splits]


def split_folder(path: str | os.PathLike[str], split: str | None) -> Path:
    """The ``Dataset`` folder to read: ``path`` itself, or its ``split`` for a ``DatasetDict``."""
    p = Path(path)
    if not p.is_dir():
        raise DatasetFormatError(path, None, "not a folder (a Hugging Face datasets folder is what save_to_disk writes)")
    splits = dataset_splits(p)
    if splits is not None:
        if not splits:
            raise DatasetFormatError(path, None, "a DatasetDict without splits")
        if split is None:
            raise DatasetFormatError(
                path, None, f"a DatasetDict with the splits {', '.join(splits)}: choose one, e.g. {p / splits[0]} "
                f"or split={splits[0]!r}"
            )
        if split not in splits:
            raise DatasetFormatError(path, None, f"no split {split!r} (the splits: {', '.join(splits)})")
        p = p / split
    elif split is not None:
        raise DatasetFormatError(path, None, f"split={split!r} given, but this folder is a single Dataset, not a "
                                             "DatasetDict")
    missing = [f for f in DATASET_FILES if not (p / f).is_file()]
    if missing:
        raise DatasetFormatError(p, None, f"not a Hugging Face datasets folder (no {', '.join(missing)})")
    return p


def read_hf_datasets(
    path: str | os.PathLike[str], split: str | None = None, tokens: str = "tokens", tags: str = "ner_tags",
    sep: str = " ", ignore_columns: str | Collection[str] = (),
) -> list[Example]:
    """Read a ``save_to_disk`` folder (one split of it for a ``DatasetDict``)."""
    return list(iter_hf_datasets(path, split, tokens, tags, sep, ignore_columns))


def iter_hf_datasets(
    path: str | os.PathLike[str], split: str | None = None, tokens: str = "tokens", tags: str = "ner_tags",
    sep: str = " ", ignore_columns: str | Collection[str] = (),
) -> Iterator[Example]:
    """The examples of :func:`read_hf_datasets`, one row at a time (the Arrow data is memory-mapped)."""
    datasets = _datasets(path, "reading Hugging Face datasets folders")
    folder = split_folder(path, split)
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets' own errors for a damaged folder
        raise DatasetFormatError(folder, None, f"cannot load the dataset ({type(exc).__name__}: {exc})") from None
    names = _tag_names(ds.features, folder, tokens, tags)
    read = {"id", tokens, tags, *field_names(ignore_columns)}
    others = [c for c in ds.column_names if c not in read]
    for index, row in enumerate(ds):
        yield _row_example(row, index, folder, tokens, tags, names, others, sep)


def _inner(feature: Any) -> Any | None:
    """The item feature of a list feature (``List``/``Sequence``, or a plain list of one feature), else ``None``."""
    if isinstance(feature, list):
        return feature[0] if len(feature) == 1 else None
    return getattr(feature, "feature", None)


def _tag_names(features: Any, folder: Path, tokens: str, tags: str) -> Sequence[str] | None:
    """The ``ClassLabel`` names of the tag column, or ``None`` when it holds strings."""
    missing = [c for c in (tokens, tags) if c not in features]
    if missing:
        raise DatasetFormatError(
            folder, None, f"no column {', '.join(repr(c) for c in missing)} (the columns: {', '.join(features)}); "
            "name the columns with tokens=... and tags=..."
        )
    item = _inner(features[tags])
    if item is not None and hasattr(item, "names"):
        return list(item.names)
    if item is not None and getattr(item, "dtype", None) in ("string", "large_string"):
        return None
    raise DatasetFormatError(
        folder, None, f"column {tags!r} is {features[tags]}, not a list of ClassLabel-named tags or of tag strings"
    )


def _row_example(
    row: dict, index: int, folder: Path, tokens_col: str, tags_col: str, names: Sequence[str] | None,
    others: Sequence[str], sep: str,
) -> Example:
    where = f"row {index}"
    tokens, values = row[tokens_col], row[tags_col]
    if not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise DatasetFormatError(folder, None, f"{where}: {tokens_col!r} must be a list of strings")
    if not isinstance(values, list) or len(values) != len(tokens):
        raise DatasetFormatError(
            folder, None, f"{where}: {len(tokens)} tokens but {len(values) if isinstance(values, list) else 'no'} tags"
        )
    for column in others:
        value = row[column]
        if not (isinstance(value, list) and len(value) == len(tokens)):
            raise DatasetFormatError(
                folder, None, f"{where}: column {column!r} is not read (it is not a list of one value per token); "
                f"pass ignore_columns={column!r} if it holds no entities"
            )
    parsed: list[Tag] = []
    for i, value in enumerate(values):
        tag = value
        if names is not None:
            if not (isinstance(value, int) and 0 <= value < len(names)):
                raise DatasetFormatError(folder, None, f"{where}, token {i}: tag {value!r} is not one of the "
                                                       f"{len(names)} ClassLabel names")
            tag = names[value]
        try:
            parsed.append(parse_tag(str(tag)))
        except ValueError as exc:
            raise DatasetFormatError(folder, None, f"{where}, token {i}: {exc}") from None
    rid = row.get("id")
    return sentence_example(tokens, parsed, sep, default_id(folder, index) if rid in (None, "") else str(rid))


# --- writing -------------------------------------------------------------------------------------------


def example_tag_row(example: Example, n: int, sep: str = " ", scheme: str = "iob2") -> tuple[list[str], list[str]]:
    """The tokens (whitespace-separated words for ``sep=" "``, characters for ``sep=""``) and tags of an example."""
    if sep == " ":
        tokens, offsets = example_tokens(example)
    elif sep == "":
        tokens = list(example.text)
        offsets = token_offsets(tokens, "")
    else:
        raise ValueError(f"sep must be ' ' (words) or '' (characters), not {sep!r}")
    try:
        return tokens, entities_to_tags(offsets, example.entities, scheme)
    except ValueError as exc:
        raise ValueError(f"example {example.id or n}: {exc}") from None


def tag_names(labels: Iterable[str], scheme: str = "iob2") -> list[str]:
    """The ``ClassLabel`` names of ``labels``: ``O``, then each label's tags (``B``, ``I``; BIOES adds ``E``, ``S``)."""
    prefixes = "BIES" if normalize_scheme(scheme) == "bioes" else "BI"
    return ["O", *(f"{p}-{label}" for label in sorted(set(labels)) for p in prefixes)]


def write_hf_datasets(
    examples: Iterable[Example], path: str | os.PathLike[str], sep: str = " ", scheme: str = "iob2",
    split: str | None = None,
) -> None:
    """Write a ``save_to_disk`` folder (a ``DatasetDict`` of one ``split`` when given). Raises :class:`ValueError`
    for an entity that does not fall on token boundaries, or overlapping entities."""
    datasets = _datasets(path, "writing Hugging Face datasets folders")
    scheme = normalize_scheme(scheme)
    if scheme == "iob1":
        raise ValueError("write IOB2 or BIOES tags (iob1 is a reading scheme of old CoNLL files)")
    rows: dict[str, list[Any]] = {"id": [], "tokens": [], "ner_tags": []}
    labels: set[str] = set()
    for n, ex in enumerate(examples):
        tokens, tags = example_tag_row(ex, n, sep, scheme)
        rows["id"].append(ex.id)
        rows["tokens"].append(tokens)
        rows["ner_tags"].append(tags)
        labels.update(e.label for e in ex.entities)
    names = tag_names(labels, scheme)
    index = {name: i for i, name in enumerate(names)}
    rows["ner_tags"] = [[index[t] for t in tags] for tags in rows["ner_tags"]]
    features = datasets.Features({
        "id": datasets.Value("string"),
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
    })
    ds = datasets.Dataset.from_dict(rows, features=features)
    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a library call writes no progress bars to the caller's terminal
    try:
        (datasets.DatasetDict({split: ds}) if split else ds).save_to_disk(str(path))
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
