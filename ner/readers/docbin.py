"""spaCy ``DocBin`` files (``.spacy``): the binary corpora ``spacy train`` reads and ``spacy convert`` writes.

Read and written with spaCy itself (an optional dependency: ``pip install 'nerve[formats]'``). An example is a
``Doc``: its ``text``, and its entities from ``doc.ents`` with character offsets (``start_char``/``end_char``),
or from the span group ``doc.spans[spans_key]`` (span groups may overlap; ``doc.ents`` may not). With
``spans_key="auto"`` (the default) ``doc.ents`` is read, and a ``Doc`` that also holds spans in a span group is
an error naming its groups: which one holds the entities is the user's to say (``spans_key="ents"`` reads
``doc.ents`` all the same). The example id is ``doc.user_data["id"]`` (the writer stores it there), else
``<file name>:<doc index>``. A file has no lines: errors name the ``Doc`` by its index.

The writer tokenizes each text with ``spacy.blank(lang)`` (``xx``, the multi-language tokenizer, by default;
``zh`` splits Chinese into characters) and also splits tokens at entity boundaries, so that every entity is a
span of whole tokens and the text is kept exactly (``Doc.text`` is the example's text).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..types import Entity, Example
from ._io import default_id
from .errors import DatasetFormatError, MissingDependencyError


def _spacy(path: str | os.PathLike[str], what: str) -> Any:
    try:
        import spacy
        import spacy.tokens
        import spacy.vocab
    except ImportError:
        raise MissingDependencyError(path, what, "spacy") from None
    return spacy


def read_spacy(path: str | os.PathLike[str], spans_key: str = "auto") -> list[Example]:
    """Read a DocBin file; ``spans_key`` chooses ``doc.ents`` (``auto``, ``ents``) or a span group."""
    return list(iter_spacy(path, spans_key))


def iter_spacy(path: str | os.PathLike[str], spans_key: str = "auto") -> Iterator[Example]:
    """The examples of :func:`read_spacy` (spaCy loads the whole file; the docs are made one at a time)."""
    spacy = _spacy(path, "reading spaCy DocBin files")
    if not Path(path).is_file():
        raise DatasetFormatError(path, None, "no such file")
    try:
        doc_bin = spacy.tokens.DocBin().from_disk(path)
    except Exception as exc:  # zlib, msgpack and spaCy's own errors for a file that is not a DocBin
        raise DatasetFormatError(path, None, f"not a spaCy DocBin file ({type(exc).__name__}: {exc})") from None
    for index, doc in enumerate(doc_bin.get_docs(spacy.vocab.Vocab())):
        yield doc_to_example(doc, path, index, spans_key)


def doc_to_example(doc: Any, path: str | os.PathLike[str], index: int, spans_key: str = "auto") -> Example:
    """The :class:`Example` of the ``index``-th ``Doc`` of a file."""
    where = f"doc {index}"
    if spans_key in ("auto", "ents"):
        groups = [key for key, group in doc.spans.items() if len(group)]
        if spans_key == "auto" and groups:
            raise DatasetFormatError(
                path, None, f"{where}: has spans in the span group(s) {', '.join(repr(g) for g in groups)} besides "
                f"its {len(doc.ents)} doc.ents; pass spans_key=<group> to read a group, or spans_key='ents'"
            )
        spans = list(doc.ents)
    elif spans_key in doc.spans:
        spans = list(doc.spans[spans_key])
    else:
        raise DatasetFormatError(
            path, None, f"{where}: no span group {spans_key!r} (its groups: {', '.join(map(repr, doc.spans)) or 'none'})"
        )
    entities = []
    for span in spans:
        if not span.label_:
            raise DatasetFormatError(path, None, f"{where}: span {span.text!r} [{span.start_char}, {span.end_char}) "
                                                 "has no label")
        entities.append(Entity.at(doc.text, span.start_char, span.end_char, span.label_))
    rid = doc.user_data.get("id")
    return Example(text=doc.text, entities=entities, id=default_id(path, index) if rid is None else str(rid))


# --- writing -------------------------------------------------------------------------------------------


def entity_aligned_doc(nlp: Any, example: Example) -> Any:
    """A ``Doc`` of the example's text: ``nlp``'s tokens, split further at every entity boundary."""
    from spacy.tokens import Doc

    cuts = sorted({e.start for e in example.entities} | {e.end for e in example.entities})
    words: list[str] = []
    spaces: list[bool] = []
    for token in nlp.make_doc(example.text):
        start, end = token.idx, token.idx + len(token.text)
        bounds = [start, *cuts[bisect.bisect_right(cuts, start) : bisect.bisect_left(cuts, end)], end]
        for a, b in zip(bounds, bounds[1:], strict=False):
            words.append(example.text[a:b])
            spaces.append(False)
        spaces[-1] = bool(token.whitespace_)
    return Doc(nlp.vocab, words=words, spaces=spaces)


def example_to_doc(nlp: Any, example: Example, n: int, spans_key: str = "ents") -> Any:
    """The ``Doc`` of an example, entities in ``doc.ents`` or in the span group ``spans_key``."""
    doc = entity_aligned_doc(nlp, example)
    name = example.id or n
    spans = []
    for e in example.entities:
        span = doc.char_span(e.start, e.end, label=e.label)
        if span is None:  # only whitespace that spaCy attaches to the token before it is not a token
            raise ValueError(f"example {name}: entity {e.text!r} [{e.start}, {e.end}) starts or ends inside the "
                             "whitespace after a token, which spaCy cannot make a span boundary")
        spans.append(span)
    if spans_key == "ents":
        try:
            doc.ents = spans
        except ValueError:
            raise ValueError(f"example {name}: overlapping entities cannot be doc.ents; write them to a span group "
                             "(spans_key=...)") from None
    else:
        doc.spans[spans_key] = spans
    if example.id is not None:
        doc.user_data["id"] = example.id
    return doc


def write_spacy(
    examples: Iterable[Example], path: str | os.PathLike[str], lang: str = "xx", spans_key: str = "ents"
) -> None:
    """Write a DocBin file: tokens from ``spacy.blank(lang)``, entities in ``doc.ents`` (``spans_key="ents"``) or in
    ``doc.spans[spans_key]``, ids in ``doc.user_data``. Raises :class:`ValueError` for an example it cannot hold."""
    spacy = _spacy(path, "writing spaCy DocBin files")
    try:
        nlp = spacy.blank(lang)
    except ImportError as exc:  # an unknown language, or one whose tokenizer needs another package
        raise ValueError(f"spaCy language {lang!r}: {exc}") from None
    doc_bin = spacy.tokens.DocBin(store_user_data=True)
    for n, example in enumerate(examples):
        doc_bin.add(example_to_doc(nlp, example, n, spans_key))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    doc_bin.to_disk(path)
