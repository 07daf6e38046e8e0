"""``nerve data convert`` and the output formats of ``nerve extract``: datasets between nerve and annotation tools.

Both go through the readers and writers of :mod:`nerve.ner.readers`: ``convert`` reads any format (detected, or
``--from``) and writes any (``--to``); ``extract --format`` writes its predictions as the pre-annotations that
Label Studio, Prodigy and doccano import.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

err = Console(stderr=True)

EXTRACT_FORMATS: dict[str, str] = {
    "json": "one JSON line per input (text, entities, and hallucinated mentions and raw answers when asked)",
    "label-studio": "a JSON array of Label Studio tasks with predictions (pre-annotations)",
    "prodigy": "Prodigy JSONL with spans",
    "doccano": "doccano JSONL with label lists of start, end and type (offsets in UTF-16 code units, as doccano counts)",
}
"""``nerve extract --format`` choices."""


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _format_names() -> list[str]:
    from nerve.ner.readers import FORMATS

    return list(FORMATS)


def parse_options(pairs: Sequence[str] | None, fmt: str, action: str, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` command-line options of a format's reader or writer, checked against its parameters.

    A value is a string, or a number for a parameter annotated as one (``score=0.9``).
    """
    from nerve.ner.readers import FORMATS, format_options

    fmt_def = FORMATS[fmt]
    func = fmt_def.iterate if action == "read" else fmt_def.write
    params = inspect.signature(func).parameters
    allowed = format_options(fmt, action)
    opts: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            _fail(f"{flag} {pair!r}: expected KEY=VALUE")
        if key not in allowed:
            takes = ", ".join(allowed) if allowed else "no options"
            _fail(f"{flag} {key!r}: the {fmt} {'reader' if action == 'read' else 'writer'} takes {takes}")
        annotation = str(params[key].annotation)
        try:
            opts[key] = float(value) if annotation.startswith("float") else int(value) if annotation.startswith("int") \
                else value
        except ValueError:
            _fail(f"{flag} {key}={value!r}: expected a number")
    return opts


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def convert_cmd(
    src: Annotated[Path, typer.Argument(
        metavar="IN", help="Dataset file, or Hugging Face datasets folder (save_to_disk; a DatasetDict's split folder).")],
    dst: Annotated[str, typer.Argument(
        metavar="OUT", help="Output file or folder; '-' writes a text format to standard output.")],
    to: Annotated[str, typer.Option("--to", help="Output format (see the list above).")],
    from_: Annotated[str, typer.Option("--from", help="Input format; auto detects it, and never guesses.")] = "auto",
    read_opts: Annotated[list[str] | None, typer.Option(
        "--read-option", "-r", help="KEY=VALUE for the reader, repeatable: split=train (hf-datasets), "
        "source=predictions (label-studio), offsets=utf-16 (doccano), scheme=iob1 (conll), spans_key=sc (spacy).")] = None,
    write_opts: Annotated[list[str] | None, typer.Option(
        "--write-option", "-w", help="KEY=VALUE for the writer, repeatable: kind=predictions (label-studio), "
        "lang=zh (spacy), sep='' (hf-datasets, characters as tokens), scheme=bioes (conll).")] = None,
    allow_no_entities: Annotated[bool, typer.Option(
        "--allow-no-entities",
        help="Accept input in which no example has an entity (otherwise an error: usually the wrong format).")] = False,
) -> None:
    r"""Convert a dataset between formats: `nerve data convert IN OUT --to FORMAT [--from FORMAT]`.

    Formats: cluener, conll, bmes, jsonl (nerve's own), prodigy, label-studio (JSON export and JSON-MIN; writes
    annotations, or predictions with -w kind=predictions), doccano, spacy (DocBin .spacy files) and hf-datasets
    (save_to_disk folders). spacy and hf-datasets need pip install 'nerve\[formats]'. Errors name the file and
    line; the counts of examples and entities converted are printed at the end.
    """
    from nerve.ner.readers import (
        DatasetFormatError,
        NoEntitiesError,
        dataset_lines,
        dataset_stats,
        detect_format,
        format_options,
        read_dataset,
        write_dataset,
    )

    names = _format_names()
    if to not in names:
        _fail(f"--to {to!r}: unknown format (one of: {', '.join(names)})")
    if from_ != "auto" and from_ not in names:
        _fail(f"--from {from_!r}: unknown format (auto or one of: {', '.join(names)})")
    if not src.exists():
        _fail(f"{src}: no such file or folder")
    if dst != "-" and Path(dst).resolve() == src.resolve():
        _fail(f"{dst}: the output would replace the input")
    wopts = parse_options(write_opts, to, "write", "--write-option")
    fmt = from_
    try:
        if fmt == "auto":
            fmt = detect_format(src)
        ropts = parse_options(read_opts, fmt, "read", "--read-option")
        examples = read_dataset(src, fmt, allow_empty=allow_no_entities, **ropts)
    except NoEntitiesError as exc:
        _fail(f"{exc} (--allow-no-entities)")
    except (DatasetFormatError, ValueError, OSError) as exc:  # ValueError: a bad option value, e.g. scheme=bilou
        options = () if fmt == "auto" else format_options(fmt)
        hint = " (reader options are given as -r KEY=VALUE)" if any(f"{o}=" in str(exc) for o in options) else ""
        _fail(f"{exc}{hint}")
    stats = dataset_stats(examples)
    if dst == "-":
        try:
            for line in dataset_lines(examples, to, **wopts):
                typer.echo(line)
        except ValueError as exc:
            _fail(f"cannot write {to}: {exc}")
    else:
        out = Path(dst)
        existed = out.exists()
        try:
            write_dataset(examples, out, to, **wopts)
        except (DatasetFormatError, ValueError, OSError) as exc:
            if not existed:
                _remove(out)  # no half-written output
            _fail(f"cannot write {dst} as {to}: {exc}")
    err.print(f"converted {stats['sentences']} examples, {stats['entities']} entities: {src} ({fmt}) -> {dst} ({to})",
              highlight=False)


# --- nerve extract --format -------------------------------------------------------------------------------


def check_extract_format(fmt: str, raw: bool) -> None:
    """Fail before the model loads when ``--format`` is unknown or cannot hold what was asked for."""
    if fmt not in EXTRACT_FORMATS:
        _fail(f"--format {fmt!r}: one of {', '.join(EXTRACT_FORMATS)}")
    if raw and fmt != "json":
        _fail("--raw is only written with --format json")


def write_extractions(
    texts: Sequence[str], results: Sequence[Any], fmt: str, out: Path | None, *, raw: bool = False,
    model_version: str = "nerve",
) -> None:
    """Write ``nerve extract``'s results in ``fmt`` (see :data:`EXTRACT_FORMATS`) to ``out`` or standard output.

    The annotation tools' formats hold grounded entities only: mentions the model wrote that are not in their
    text have no offsets, so they are counted on standard error and left out.
    """
    from nerve.ner.readers import dataset_lines, write_dataset
    from nerve.ner.types import Example

    if fmt == "json":
        lines: Iterable[str] = (json.dumps(_json_record(text, r, raw), ensure_ascii=False)
                                for text, r in zip(texts, results, strict=True))
    else:
        examples = [Example(text=text, entities=list(r.entities)) for text, r in zip(texts, results, strict=True)]
        opts = {"kind": "predictions", "model_version": model_version} if fmt == "label-studio" else {}
        hallucinated = sum(len(r.hallucinated) for r in results)
        if hallucinated:
            err.print(f"{hallucinated} mention(s) not found in their text left out (they have no offsets)")
        if out is not None:
            write_dataset(examples, out, fmt, **opts)
            return
        lines = dataset_lines(examples, fmt, **opts)
    if out is None:
        for line in lines:
            typer.echo(line)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def _json_record(text: str, result: Any, raw: bool) -> dict:
    out = {"text": text, "entities": [e.to_dict() for e in result.entities]}
    if result.hallucinated:
        out["hallucinated"] = [{"label": m.label, "text": m.text} for m in result.hallucinated]
    if raw:
        out["raw"] = result.raw
    return out
