"""`nerve data convert` over the readers and writers, and `nerve extract --format` for annotation tools."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nerve.ner.parsing import Mention
from nerve.ner.readers import FORMATS, read_dataset, write_dataset
from nerve.ner.types import Entity, Example


def nerve(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nerve.cli", *args], capture_output=True, text=True, timeout=timeout)


def said(proc: subprocess.CompletedProcess, text: str) -> bool:
    """Whether stderr holds ``text``, however the console wrapped it."""
    return "".join(text.split()) in "".join(proc.stderr.split())


def ent(text: str, surface: str, label: str) -> Entity:
    start = text.index(surface)
    return Entity.at(text, start, start + len(surface), label)


ZH = "彭小军认为，𠀀国内银行现在走的是台湾的发卡模式"
EN = "Zoe\u0308 met 👩‍🔬 Dr. Ångström in São Paulo"
EXAMPLES = [
    Example(ZH, [ent(ZH, "彭小军", "name"), ent(ZH, "𠀀国内银行", "company"), ent(ZH, "台湾", "address")], "d:0"),
    Example(EN, [ent(EN, "Zoe\u0308", "PER"), ent(EN, "São Paulo", "LOC")], "d:1"),
    Example("nothing", [], "d:2"),
]


def test_convert_through_every_writer_and_back(tmp_path: Path) -> None:
    source = tmp_path / "gold.jsonl"
    write_dataset(EXAMPLES, source, "jsonl")
    targets = {"cluener": "c.jsonl", "jsonl": "n.jsonl", "prodigy": "p.jsonl", "label-studio": "ls.json",
               "doccano": "d.jsonl", "spacy": "s.spacy"}
    read_back = {"doccano": ["-r", "offsets=utf-16"]}  # the astral character: doccano counts UTF-16 code units
    for fmt, name in targets.items():
        out = tmp_path / name
        proc = nerve("data", "convert", str(source), str(out), "--to", fmt)
        assert proc.returncode == 0, proc.stderr
        assert said(proc, f"converted 3 examples, 5 entities: {source} (jsonl) -> {out} ({fmt})")
        back = tmp_path / f"back-{fmt}.jsonl"
        proc = nerve("data", "convert", str(out), str(back), "--to", "jsonl", *read_back.get(fmt, []))
        assert proc.returncode == 0, proc.stderr
        assert said(proc, f"({fmt}) -> {back} (jsonl)")
        assert read_dataset(back) == EXAMPLES, fmt
    assert set(targets) | {"conll", "bmes", "hf-datasets"} == set(FORMATS)  # those three: below


def test_convert_column_formats_and_datasets_folders(tmp_path: Path) -> None:
    en = [Example("EU rejects German call", [Entity.at("EU rejects German call", 0, 2, "ORG"),
                                              Entity.at("EU rejects German call", 11, 17, "MISC")], "e:0")]
    source = tmp_path / "en.jsonl"
    write_dataset(en, source, "jsonl")
    folder = tmp_path / "hf"
    proc = nerve("data", "convert", str(source), str(folder), "--to", "hf-datasets", "-w", "split=train")
    assert proc.returncode == 0, proc.stderr
    assert (folder / "dataset_dict.json").is_file()
    proc = nerve("data", "convert", str(folder), str(tmp_path / "x.conll"), "--to", "conll")
    assert proc.returncode == 2 and said(proc, f"{folder}: a DatasetDict with the splits train: choose one")
    proc = nerve("data", "convert", str(folder), str(tmp_path / "x.conll"), "--to", "conll", "-r", "split=train",
                 "-w", "scheme=bioes")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x.conll").read_text().split("\n")[:2] == ["EU S-ORG", "rejects O"]
    proc = nerve("data", "convert", str(folder / "train"), "-", "--to", "jsonl")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in proc.stdout.splitlines()] == [en[0].to_dict()]
    zh = [Example("北京欢迎你", [Entity.at("北京欢迎你", 0, 2, "LOC")], "z:0")]
    write_dataset(zh, tmp_path / "zh.jsonl", "jsonl")
    proc = nerve("data", "convert", str(tmp_path / "zh.jsonl"), "-", "--to", "bmes")
    assert proc.returncode == 0 and proc.stdout.split("\n")[:2] == ["北 B-LOC", "京 E-LOC"], proc.stderr


def test_convert_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ab", "label": [[0, 2, "X"]]}\n{"text": "ab", "label": [[0, 3, "X"]]}\n')
    out = tmp_path / "out.json"
    proc = nerve("data", "convert", str(bad), str(out), "--to", "label-studio")
    assert proc.returncode == 2 and said(proc, f"{bad}:2: span 0 [0, 3) 'X': outside a text of 2 characters")
    assert not out.exists()

    ambiguous = tmp_path / "ambiguous.jsonl"
    ambiguous.write_text('{"text": "a", "label": []}\n{"text": "a", "label": {}}\n')
    proc = nerve("data", "convert", str(ambiguous), str(out), "--to", "jsonl")
    assert proc.returncode == 2 and said(
        proc, f"{ambiguous}:2: cannot detect the format: this record is cluener, the record on line 1 is doccano or "
              "label-studio; pass the format")
    proc = nerve("data", "convert", str(ambiguous), str(out), "--to", "jsonl", "--from", "doccano")
    assert proc.returncode == 2 and said(proc, f"{ambiguous}:2: 'label' must be a list, got dict")

    astral = tmp_path / "astral.jsonl"
    astral.write_text('{"text": "😀ab", "label": [[2, 4, "X"]]}\n', encoding="utf-8")
    proc = nerve("data", "convert", str(astral), "-", "--to", "jsonl")
    assert proc.returncode == 2 and said(proc, "pass offsets='utf-16' or offsets='code-points' (reader options are "
                                               "given as -r KEY=VALUE)")
    proc = nerve("data", "convert", str(astral), "-", "--to", "jsonl", "-r", "offsets=utf-16")
    assert proc.returncode == 0 and json.loads(proc.stdout)["entities"][0]["text"] == "ab", proc.stderr

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "a", "spans": []}\n')
    proc = nerve("data", "convert", str(empty), str(out), "--to", "jsonl")
    assert proc.returncode == 2 and said(proc, "none with an entity (read as prodigy); unlabelled data must be allowed "
                                               "explicitly (--allow-no-entities)")
    proc = nerve("data", "convert", str(empty), str(out), "--to", "jsonl", "--allow-no-entities")
    assert proc.returncode == 0 and said(proc, "converted 1 examples, 0 entities"), proc.stderr


def test_convert_checks_its_arguments(tmp_path: Path) -> None:
    source = tmp_path / "a.jsonl"
    write_dataset(EXAMPLES, source, "jsonl")
    cases = [
        (("--to", "xml"), "--to 'xml': unknown format (one of: cluener, conll, bmes, jsonl, prodigy, label-studio, "
                          "doccano, spacy, hf-datasets)"),
        (("--to", "jsonl", "--from", "csv"), "--from 'csv': unknown format"),
        (("--to", "conll", "-w", "lang=en"), "--write-option 'lang': the conll writer takes scheme"),
        (("--to", "jsonl", "-r", "split=train"), "--read-option 'split': the jsonl reader takes no options"),
        (("--to", "label-studio", "-w", "score=high"), "--write-option score='high': expected a number"),
        (("--to", "conll", "-w", "scheme"), "--write-option 'scheme': expected KEY=VALUE"),
        (("--to", "jsonl", "--from", "conll", "-r", "scheme=bilou"), "unknown tagging scheme 'bilou'"),
    ]
    for args, message in cases:
        proc = nerve("data", "convert", str(source), str(tmp_path / "o"), *args)
        assert proc.returncode == 2 and said(proc, message), (args, proc.stderr)
    proc = nerve("data", "convert", str(tmp_path / "missing.jsonl"), "-", "--to", "jsonl")
    assert proc.returncode == 2 and said(proc, "missing.jsonl: no such file or folder")
    proc = nerve("data", "convert", str(source), str(source), "--to", "jsonl")
    assert proc.returncode == 2 and said(proc, "the output would replace the input")
    proc = nerve("data", "convert", str(source), "-", "--to", "spacy")
    assert proc.returncode == 2 and said(proc, "cannot write spacy: the spacy format is not text lines")
    # A writer that cannot hold an example leaves no half-written output behind.
    out = tmp_path / "words.conll"
    proc = nerve("data", "convert", str(source), str(out), "--to", "conll")
    assert proc.returncode == 2 and said(proc, f"cannot write {out} as conll: example d:0: entity") and not out.exists()


# --- nerve extract --format ------------------------------------------------------------------------------


def _results() -> list:
    from nerve.extraction.base import ExtractionResult

    return [ExtractionResult(ex.entities, raw="{}", parsed=True,
                             hallucinated=[Mention("PER", "Nobody")] if i == 1 else []) for i, ex in enumerate(EXAMPLES)]


@pytest.mark.parametrize(("fmt", "reader_opts"), [("label-studio", {"source": "predictions"}), ("prodigy", {}),
                                                  ("doccano", {"offsets": "utf-16"})])
def test_extract_formats_hold_the_predictions(tmp_path: Path, fmt: str, reader_opts: dict,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from nerve.cli.data import write_extractions

    texts = [ex.text for ex in EXAMPLES]
    out = tmp_path / f"pre.{fmt}"
    write_extractions(texts, _results(), fmt, out, model_version="tiny")
    assert "1 mention(s) not found in their text left out" in capsys.readouterr().err
    back = read_dataset(out, fmt, **reader_opts)
    assert [(ex.text, ex.entities) for ex in back] == [(ex.text, ex.entities) for ex in EXAMPLES]
    write_extractions(texts, _results(), fmt, None, model_version="tiny")  # standard output: the same lines
    assert capsys.readouterr().out.splitlines() == out.read_text(encoding="utf-8").splitlines()
    if fmt == "label-studio":
        tasks = json.loads(out.read_text(encoding="utf-8"))
        assert [t["predictions"][0]["model_version"] for t in tasks] == ["tiny"] * 3
        assert "annotations" not in tasks[0]


def test_extract_json_is_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nerve.cli.data import write_extractions

    write_extractions([EN], _results()[1:2], "json", None, raw=True)
    assert json.loads(capsys.readouterr().out) == {
        "text": EN, "entities": [e.to_dict() for e in EXAMPLES[1].entities],
        "hallucinated": [{"label": "PER", "text": "Nobody"}], "raw": "{}"}


def test_extract_format_errors_come_before_the_model_loads(tmp_path: Path) -> None:
    proc = nerve("extract", "--model", "no-such-model", "--format", "brat", "hello")
    assert proc.returncode == 2 and said(proc, "--format 'brat': one of json, label-studio, prodigy, doccano")
    proc = nerve("extract", "--model", "no-such-model", "--format", "doccano", "--raw", "hello")
    assert proc.returncode == 2 and said(proc, "--raw is only written with --format json")


@pytest.mark.engine
def test_extract_writes_pre_annotations_end_to_end(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    texts = ["彭小军认为，国内银行现在走的是台湾的发卡模式", "Peter Blackburn 😀"]
    out = tmp_path / "tasks.json"
    proc = nerve("extract", "--model", str(tiny_qwen_dir), "--grounded", "--format", "label-studio", "--out", str(out),
                 *texts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert [t["data"]["text"] for t in tasks] == texts
    for task in tasks:
        assert list(task) == ["data", "predictions"]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == str(tiny_qwen_dir)
        for r in prediction["result"]:
            assert (r["from_name"], r["to_name"], r["type"]) == ("label", "text", "labels")
            assert task["data"]["text"][r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
    assert [ex.text for ex in read_dataset(out, "label-studio", source="predictions", allow_empty=True)] == texts

    for fmt, field in (("prodigy", "spans"), ("doccano", "label")):
        proc = nerve("extract", "--model", str(tiny_qwen_dir), "--grounded", "--format", fmt, *texts)
        assert proc.returncode == 0, proc.stderr[-3000:]
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["text"] for r in records] == texts and all(isinstance(r[field], list) for r in records)
        path = tmp_path / f"pre.{fmt}.jsonl"
        path.write_text(proc.stdout, encoding="utf-8")
        assert [ex.text for ex in read_dataset(path, fmt, allow_empty=True)] == texts
