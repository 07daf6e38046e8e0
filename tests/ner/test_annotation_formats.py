"""The formats of annotation tools and libraries: Label Studio, doccano, spaCy DocBin, Hugging Face datasets.

Round trips on Chinese and English texts with characters outside the Basic Multilingual Plane and combining
marks, exports shaped like the tools' own, detection (ambiguous files name the choices) and malformed input
(errors name the file and line, or the doc or row of a binary file or folder).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from nerve.ner.readers import (
    FORMATS,
    DatasetFormatError,
    MissingDependencyError,
    NoEntitiesError,
    dataset_lines,
    detect_format,
    format_options,
    read_dataset,
    write_dataset,
)
from nerve.ner.types import Entity, Example

# --- data ------------------------------------------------------------------------------------------------


def ent(text: str, surface: str, label: str, nth: int = 0) -> Entity:
    """The entity of the ``nth`` occurrence of ``surface`` in ``text``."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(surface, start + 1)
    return Entity.at(text, start, start + len(surface), label)


ZH_1 = "彭小军认为，𠀀国内银行现在走的是台湾的发卡模式😀"  # U+20000 (plane 2) before a span, an emoji after
ZH_2 = "温格的球队终于又踢了一场经典的比赛，在𠮷野家吃饭"
EN_1 = "Cafe\u0301 Zoe\u0308 met 👩‍🔬 Dr. Ångström in São Paulo"  # combining accents, a ZWJ emoji sequence
EN_2 = "EU rejects German call to boycott British lamb 🐑 ."

ZH = [
    Example(ZH_1, [ent(ZH_1, "彭小军", "name"), ent(ZH_1, "𠀀国内银行", "company"), ent(ZH_1, "台湾", "address")], "zh:0"),
    Example(ZH_2, [ent(ZH_2, "温格", "name"), ent(ZH_2, "𠮷野家", "company")], "zh:1"),
    Example("没有实体", [], "zh:2"),
]
EN = [
    Example(EN_1, [ent(EN_1, "Cafe\u0301 Zoe\u0308", "ORG"), ent(EN_1, "👩‍🔬", "MISC"), ent(EN_1, "Ångström", "PER"),
                   ent(EN_1, "São Paulo", "LOC")], "en:0"),
    Example(EN_2, [ent(EN_2, "EU", "ORG"), ent(EN_2, "German", "MISC"), ent(EN_2, "British", "MISC")], "en:1"),
    Example("nothing here", [], "en:2"),
]


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _jsonl(tmp_path: Path, name: str, records: list) -> Path:
    return _write(tmp_path, name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _error(path: Path, fmt: str = "auto", **opts: object) -> DatasetFormatError:
    with pytest.raises(DatasetFormatError) as info:
        read_dataset(path, fmt, **opts)
    return info.value


def _spans(ex: Example) -> list[tuple[str, str]]:
    return [(e.label, e.text) for e in ex.entities]


def js_utf16(text: str, offset: int) -> int:
    """The JavaScript string index of a code-point offset, computed independently of the library."""
    return len(text[:offset].encode("utf-16-le")) // 2


# --- registry --------------------------------------------------------------------------------------------


def test_the_new_formats_are_registered_with_their_options() -> None:
    assert {"label-studio", "doccano", "spacy", "hf-datasets"} <= set(FORMATS)
    assert format_options("label-studio") == ("source", "text_key")
    assert format_options("label-studio", "write") == ("kind", "from_name", "to_name", "text_key", "model_version",
                                                       "score")
    assert format_options("doccano") == ("offsets", "ignore_fields")
    assert format_options("spacy", "write") == ("lang", "spans_key")
    assert format_options("hf-datasets") == ("split", "tokens", "tags", "sep", "ignore_columns")
    for name in ("spacy", "hf-datasets"):  # a binary file and a folder have no lines to stream
        assert FORMATS[name].lines is None
        with pytest.raises(ValueError, match="not text lines"):
            dataset_lines(EN, name)


# --- round trips -----------------------------------------------------------------------------------------

ROUND_TRIPS = [
    # (format, file name, writer options, reader options, examples)
    ("label-studio", "tasks.json", {}, {}, ZH + EN),
    ("label-studio", "preds.json", {"kind": "predictions", "model_version": "m1", "score": 0.5},
     {"source": "predictions"}, ZH + EN),
    ("label-studio", "other_key.json", {"text_key": "content"}, {"text_key": "content"}, EN),
    ("doccano", "utf16.jsonl", {}, {"offsets": "utf-16"}, ZH + EN),
    ("doccano", "cp.jsonl", {"offsets": "code-points"}, {"offsets": "code-points"}, ZH + EN),
    ("spacy", "xx.spacy", {}, {}, ZH + EN),
    ("spacy", "zh.spacy", {"lang": "zh"}, {}, ZH),
    ("spacy", "en.spacy", {"lang": "en"}, {}, EN),
    ("hf-datasets", "hf_en", {}, {}, EN),
    ("hf-datasets", "hf_zh", {"sep": ""}, {"sep": ""}, ZH),
    ("hf-datasets", "hf_bioes", {"scheme": "bioes", "split": "train"}, {"split": "train"}, EN),
]


@pytest.mark.parametrize(("fmt", "name", "wopts", "ropts", "examples"), ROUND_TRIPS,
                         ids=[f"{r[0]}-{r[1]}" for r in ROUND_TRIPS])
def test_round_trip(tmp_path: Path, fmt: str, name: str, wopts: dict, ropts: dict, examples: list[Example]) -> None:
    out = tmp_path / name
    write_dataset(examples, out, fmt, **wopts)
    assert detect_format(out) == fmt
    assert read_dataset(out, fmt, **ropts) == examples
    if FORMATS[fmt].lines is not None:  # the stream and the file hold the same lines
        assert list(dataset_lines(examples, fmt, **wopts)) == out.read_text(encoding="utf-8").splitlines()


def test_label_studio_output_is_what_label_studio_imports(tmp_path: Path) -> None:
    out = tmp_path / "import.json"
    write_dataset(ZH[:1], out, "label-studio", kind="predictions", model_version="nerve-tiny", score=0.75)
    tasks = json.loads(out.read_text(encoding="utf-8"))  # one JSON array of tasks
    assert tasks == [{
        "data": {"text": ZH_1, "id": "zh:0"},
        "predictions": [{"model_version": "nerve-tiny", "score": 0.75, "result": [
            {"id": f"0-{j}", "from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": e.start, "end": e.end, "text": e.text, "labels": [e.label]}}
            for j, e in enumerate(ZH[0].entities)]}],
    }]
    write_dataset(EN, out, "label-studio")
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert [list(t) for t in tasks] == [["data", "annotations"]] * 3
    ids = [r["id"] for t in tasks for r in t["annotations"][0]["result"]]
    assert len(ids) == len(set(ids)) == 7  # region ids are unique in the file
    write_dataset([], out, "label-studio")
    assert json.loads(out.read_text(encoding="utf-8")) == []
    with pytest.raises(ValueError, match="unknown Label Studio task kind 'gold'"):
        write_dataset(EN, out, "label-studio", kind="gold")


def test_doccano_writes_the_offsets_doccano_counts(tmp_path: Path) -> None:
    out = tmp_path / "doccano.jsonl"
    write_dataset(ZH + EN, out, "doccano")
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    for ex, record in zip(ZH + EN, records, strict=True):
        assert record == {"id": ex.id, "text": ex.text, "label": [
            [js_utf16(ex.text, e.start), js_utf16(ex.text, e.end), e.label] for e in ex.entities]}
    assert records[0]["label"][1] == [6, 12, "company"]  # "𠀀国内银行": its "𠀀" is two UTF-16 code units
    # Code points differ: the default reader will not choose between them.
    err = _error(out)
    assert err.line == 1 and "pass offsets='utf-16' or offsets='code-points'" in err.reason
    # A text whose wide characters come after its spans reads the same either way.
    plain = _jsonl(tmp_path, "after.jsonl", [{"text": "北京😀", "label": [[0, 2, "LOC"]]}])
    assert _spans(read_dataset(plain)[0]) == [("LOC", "北京")]


def test_spacy_sees_the_entities_and_keeps_the_text(tmp_path: Path) -> None:
    import spacy
    from spacy.tokens import DocBin

    out = tmp_path / "corpus.spacy"
    write_dataset(ZH + EN, out, "spacy")
    docs = list(DocBin().from_disk(out).get_docs(spacy.blank("xx").vocab))
    assert [d.text for d in docs] == [ex.text for ex in ZH + EN]
    assert [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs] == \
        [[e.key for e in ex.entities] for ex in ZH + EN]
    assert [d.user_data["id"] for d in docs] == [ex.id for ex in ZH + EN]


def test_spacy_span_groups_hold_overlapping_entities(tmp_path: Path) -> None:
    text = "《招商银行：投资永隆银行》"
    nested = [Example(text, [ent(text, "《招商银行：投资永隆银行》", "book"), ent(text, "招商银行", "company"),
                             ent(text, "永隆银行", "company")], "n:0")]
    with pytest.raises(ValueError, match="overlapping entities cannot be doc.ents"):
        write_dataset(nested, tmp_path / "ents.spacy", "spacy")
    out = tmp_path / "groups.spacy"
    write_dataset(nested, out, "spacy", spans_key="sc")
    assert read_dataset(out, spans_key="sc") == nested
    err = _error(out)  # doc.ents is empty; the spans are in a group that was not named
    assert str(err) == (f"{out}: doc 0: has spans in the span group(s) 'sc' besides its 0 doc.ents; pass "
                        "spans_key=<group> to read a group, or spans_key='ents'")
    with pytest.raises(NoEntitiesError):
        read_dataset(out, spans_key="ents")
    assert "no span group 'ner' (its groups: 'sc')" in _error(out, spans_key="ner").reason


def test_spacy_writer_refuses_a_span_it_cannot_hold(tmp_path: Path) -> None:
    text = "New York"
    with pytest.raises(ValueError, match="entity 'New ' \\[0, 4\\) starts or ends inside the whitespace"):
        write_dataset([Example(text, [Entity.at(text, 0, 4, "LOC")], "w:0")], tmp_path / "w.spacy", "spacy")
    with pytest.raises(ValueError, match="spaCy language 'qq'"):
        write_dataset(EN, tmp_path / "q.spacy", "spacy", lang="qq")


def test_hf_datasets_folder_is_what_datasets_loads(tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "hf"
    write_dataset(EN, out, "hf-datasets")
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["id", "tokens", "ner_tags"]
    names = ds.features["ner_tags"].feature.names
    assert names == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert ds[1]["tokens"] == EN_2.split()
    assert [names[i] for i in ds[1]["ner_tags"]] == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O", "O"]
    assert ds[0]["tokens"][:2] == ["Cafe\u0301", "Zoe\u0308"]
    with pytest.raises(ValueError, match="does not align with token boundaries"):
        write_dataset(ZH, tmp_path / "zh", "hf-datasets")  # words of a Chinese text: use sep=""
    with pytest.raises(ValueError, match="sep must be"):
        write_dataset(EN, tmp_path / "x", "hf-datasets", sep="|")


# --- Label Studio exports --------------------------------------------------------------------------------


def _region(text: str, surface: str, *labels: str, to_name: str = "text", nth: int = 0) -> dict:
    e = ent(text, surface, "x", nth)
    return {"id": f"r{e.start}", "from_name": "label", "to_name": to_name, "type": "labels", "origin": "manual",
            "value": {"start": e.start, "end": e.end, "text": surface, "labels": list(labels)}}


def _task(text: str, *annotations: dict, predictions: list | None = None, **fields: object) -> dict:
    task = {"id": 1, "data": {"text": text, "meta_info": {"source": "web"}}, "annotations": list(annotations),
            "predictions": predictions or [], "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:00Z",
            "inner_id": 1, "total_annotations": len(annotations), "cancelled_annotations": 0, "total_predictions": 0,
            "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 3,
            "updated_by": 1, "comment_authors": [], "file_upload": "tasks.json", "drafts": [], **fields}
    return task


def _annotation(*results: dict, cancelled: bool = False, ground_truth: bool = False) -> dict:
    return {"id": 9, "completed_by": 1, "result": list(results), "was_cancelled": cancelled,
            "ground_truth": ground_truth, "created_at": "2024-05-01T10:00:00Z", "lead_time": 4.2, "task": 1}


def test_label_studio_export_chooses_one_annotation(tmp_path: Path) -> None:
    text = "Alice met Bob in Paris"
    tasks = [
        _task(text, _annotation(_region(text, "Alice", "PER"), cancelled=True),  # skipped by its annotator
              _annotation(_region(text, "Bob", "PER")),
              _annotation(_region(text, "Paris", "LOC"), ground_truth=True)),  # the ground truth wins
        {**_task(text, _annotation(_region(text, "Alice", "PER")), _annotation(_region(text, "Bob", "PER"))), "id": 2},
        {**_task(text, _annotation(cancelled=True)), "id": 3},  # only a cancelled one: not gold data
        {**_task(text), "id": 4},  # not annotated (exported with download_all_tasks)
    ]
    path = _write(tmp_path, "project.json", json.dumps(tasks, indent=2))
    assert detect_format(path) == "label-studio"
    examples = read_dataset(path)
    assert [(ex.id, _spans(ex)) for ex in examples] == [("1", [("LOC", "Paris")]), ("2", [("PER", "Alice")])]


def test_label_studio_predictions_and_results_that_are_not_spans(tmp_path: Path) -> None:
    text = "Apple hired Tim Cook"
    prediction = {"model_version": "v1", "score": 0.4, "result": [
        _region(text, "Apple", "ORG"), _region(text, "Tim Cook", "PER", "VIP"),  # two labels: two entities
        {"id": "c", "from_name": "mood", "to_name": "text", "type": "choices", "value": {"choices": ["neutral"]}},
        {"from_id": "rApple", "to_id": "r12", "type": "relation", "direction": "right", "labels": ["employs"]},
    ]}
    path = _write(tmp_path, "preds.json", json.dumps([_task(text, predictions=[prediction, {"result": []}])]))
    err = _error(path)
    assert str(err) == f"{path}: no task has an annotation, 1 have predictions: read them with source='predictions'"
    examples = read_dataset(path, source="predictions")  # the first prediction
    assert _spans(examples[0]) == [("ORG", "Apple"), ("PER", "Tim Cook"), ("VIP", "Tim Cook")]
    with pytest.raises(ValueError, match="unknown Label Studio source 'drafts'"):
        read_dataset(path, source="drafts")


def test_label_studio_ids_old_exports_and_utf16_offsets(tmp_path: Path) -> None:
    text = "😀😀 Paris"
    utf16 = {"type": "labels", "to_name": "text", "from_name": "label",
             "value": {"start": 5, "end": 10, "text": "Paris", "labels": ["LOC"]}}  # Label Studio before 1.x
    tasks = [
        {"id": 7, "data": {"text": text, "id": "mine-1"}, "completions": [{"result": [utf16]}]},  # before 1.0
        {"id": 8, "data": {"text": "Paris"}, "annotations": [{"result": [
            {"type": "labels", "value": {"start": 0, "end": 5, "labels": ["LOC"]}}]}]},  # no value.text
    ]
    examples = read_dataset(_write(tmp_path, "old.json", json.dumps(tasks, ensure_ascii=False)))
    assert [(ex.id, _spans(ex), ex.entities[0].start) for ex in examples] == [
        ("mine-1", [("LOC", "Paris")], 3), ("8", [("LOC", "Paris")], 0)]


def test_label_studio_json_min(tmp_path: Path) -> None:
    text = "北京欢迎你, 𠀀Tim"
    records = [
        {"text": text, "id": 11, "label": [{"start": 0, "end": 2, "text": "北京", "labels": ["LOC"]},
                                           {"start": 7, "end": 11, "text": "𠀀Tim", "labels": ["PER"]}],
         "annotator": 1, "annotation_id": 5, "created_at": "x", "updated_at": "x", "lead_time": 3.1},
        {"text": "Tim", "id": 12, "ner": [{"start": 0, "end": 3, "text": "Tim", "labels": ["PER"]}],
         "sentiment": "Positive", "annotator": 1, "annotation_id": 6, "created_at": "x", "updated_at": "x",
         "lead_time": 1.0},
    ]
    path = _write(tmp_path, "min.json", json.dumps(records, ensure_ascii=False, indent=2))
    assert detect_format(path) == "label-studio"
    examples = read_dataset(path)
    assert [(ex.id, _spans(ex)) for ex in examples] == [("11", [("LOC", "北京"), ("PER", "𠀀Tim")]),
                                                        ("12", [("PER", "Tim")])]
    other = _jsonl(tmp_path, "min_other.jsonl", records[1:])  # the control tag is not named "label"
    assert detect_format(other) == "label-studio"


@pytest.mark.parametrize(
    ("task", "reason"),
    [
        ({"data": {"text": "ab"}, "annotations": [{"result": [{"type": "labels", "value": {
            "start": 0, "end": 2, "text": "xy", "labels": ["X"]}}]}]},
         "annotations\\[0\\].result\\[0\\]: text 'xy' does not match text\\[0:2\\] = 'ab', in code points or in UTF-16"),
        ({"data": {"text": "ab"}, "annotations": [{"result": [{"type": "labels", "value": {
            "start": 0, "end": 5, "labels": ["X"]}}]}]}, "span \\[0, 5\\) outside a text of 2 characters"),
        ({"data": {"text": "ab"}, "annotations": [{"result": [{"type": "rectanglelabels", "value": {}}]}]},
         "result type 'rectanglelabels' is not a span of a plain text"),
        ({"data": {"text": "ab"}, "annotations": [{"result": [
            {"type": "labels", "to_name": "title", "value": {"start": 0, "end": 1, "labels": ["X"]}},
            {"type": "labels", "to_name": "body", "value": {"start": 0, "end": 1, "labels": ["X"]}}]}]},
         "the task's spans label different texts"),
        ({"data": {"text": "ab"}, "annotations": [{"result": [{"type": "labels", "value": {
            "start": 0, "end": 1, "labels": []}}]}]}, "'labels' must be a non-empty list"),
        ({"data": {"text": "ab"}, "annotations": [{"result": [{"type": "labels", "value": {
            "start": 0, "end": 1, "labels": ["X"], "score": 1}}]}]}, "unknown field\\(s\\) 'score'"),
        ({"data": {"content": "ab"}, "annotations": []},
         "the task's 'data' has no string field 'text' \\(its fields: 'content'\\); name the text field with text_key"),
        ({"data": {"text": "ab"}, "annotations": [], "reviews": []},
         "unknown field\\(s\\) 'reviews' for the label-studio reader"),
        ({"data": {"text": "ab"}, "annotations": [{"result": [], "was_cancelled": "no"}]},
         "'was_cancelled' must be true or false"),
    ],
)
def test_label_studio_malformed_tasks_name_file_and_line(tmp_path: Path, task: dict, reason: str) -> None:
    good = {"data": {"text": "ok"}, "annotations": [{"result": [
        {"type": "labels", "value": {"start": 0, "end": 2, "text": "ok", "labels": ["X"]}}]}]}
    path = _write(tmp_path, "bad.json", "[\n" + json.dumps(good) + ",\n" + json.dumps(task) + "\n]\n")
    err = _error(path, "label-studio")
    assert err.path == str(path) and err.line == 3, str(err)
    assert re.search(reason, err.reason), err.reason


# --- doccano ---------------------------------------------------------------------------------------------


def test_doccano_exports_with_and_without_relations(tmp_path: Path) -> None:
    text = "扎实推进垃圾分类示范区创建，覆盖率100%"
    records = [
        {"id": 6400, "text": text, "Comments": [], "relations": [{"id": 1, "from_id": 1, "to_id": 2, "type": "达到"}],
         "entities": [{"id": 1, "label": "关键数据", "start_offset": 14, "end_offset": 17},
                      {"id": 2, "label": "数值", "start_offset": 17, "end_offset": 21}]},
        {"id": 6401, "text": "EU rejects German call", "label": [[0, 2, "ORG"], [11, 17, "MISC"]], "Comments": []},
        {"id": 6402, "text": "nothing", "label": []},
    ]
    path = _jsonl(tmp_path, "export.jsonl", records)
    assert detect_format(path) == "doccano"
    examples = read_dataset(path)
    assert [(ex.id, _spans(ex)) for ex in examples] == [
        ("6400", [("关键数据", "覆盖率"), ("数值", "100%")]), ("6401", [("ORG", "EU"), ("MISC", "German")]), ("6402", [])]


def test_doccano_metadata_fields_are_named_or_ignored(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, "meta.jsonl", [{"id": 1, "text": "Paris", "label": [[0, 5, "LOC"]], "source": "web"}])
    err = _error(path)
    assert err.line == 1 and err.reason == (
        "unknown field(s) 'source' for the doccano reader; expected 'id', 'text', 'label', 'entities', 'relations', "
        "'Comments'; metadata fields that hold no entities can be passed over with ignore_fields=name,...")
    assert _spans(read_dataset(path, ignore_fields="source")[0]) == [("LOC", "Paris")]
    assert _spans(read_dataset(path, ignore_fields=["source"])[0]) == [("LOC", "Paris")]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"text": "ab", "label": [[0, 3, "X"]]}', "span 0 \\[0, 3\\) 'X': outside a text of 2 characters"),
        ('{"text": "ab", "label": [[0, 1]]}', 'label 0: expected \\[start, end, "TYPE"\\], got \\[0, 1\\]'),
        ('{"text": "ab", "label": [[0, 1, "X"]], "entities": []}', "both 'label' and 'entities'"),
        ('{"text": "ab", "entities": [{"label": "X", "start_offset": 0}]}', "entity 0: missing end_offset"),
        ('{"text": "😀ab", "label": [[1, 3, "X"]]}', "pass offsets='utf-16' or offsets='code-points'"),
    ],
)
def test_doccano_malformed_records_name_file_and_line(tmp_path: Path, content: str, reason: str) -> None:
    path = _write(tmp_path, "bad.jsonl", '{"text": "ok", "label": [[0, 2, "X"]]}\n' + content + "\n")
    err = _error(path, "doccano")
    assert err.path == str(path) and err.line == 2
    assert re.search(reason, err.reason), err.reason


def test_doccano_utf16_offsets_inside_a_character_are_an_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, "half.jsonl", [{"text": "😀ab", "label": [[1, 3, "X"]]}])
    err = _error(path, offsets="utf-16")
    assert err.reason == "span 0 [1, 3) 'X': outside a text of 4 UTF-16 code units, or inside a character of two"
    assert _spans(read_dataset(path, offsets="code-points")[0]) == [("X", "ab")]
    with pytest.raises(ValueError, match="unknown offset unit 'bytes'"):
        read_dataset(path, "doccano", offsets="bytes")


# --- spaCy and Hugging Face datasets: files and folders without lines ---------------------------------------


def test_spacy_errors_name_the_file_and_doc(tmp_path: Path) -> None:
    import spacy
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    doc = nlp.make_doc("Paris is nice")
    doc.ents = [doc.char_span(0, 5, label="LOC")]
    doc_bin = DocBin()
    doc_bin.add(doc)
    doc_bin.to_disk(tmp_path / "plain.spacy")  # spaCy's own file: no ids stored
    assert read_dataset(tmp_path / "plain.spacy") == [Example("Paris is nice", [Entity.at("Paris is nice", 0, 5, "LOC")],
                                                              "plain.spacy:0")]
    garbage = _write(tmp_path, "garbage.spacy", "not a docbin")
    err = _error(garbage)
    assert err.line is None and str(err).startswith(f"{garbage}: not a spaCy DocBin file")


def _hf_folder(tmp_path: Path, name: str, rows: dict, tag_feature: object = None, splits: tuple[str, ...] = ()) -> Path:
    import datasets

    features = {}
    for column, values in rows.items():
        if column in ("tokens", "words"):
            features[column] = datasets.Sequence(datasets.Value("string"))
        elif column in ("ner_tags", "labels"):
            features[column] = datasets.Sequence(tag_feature or datasets.ClassLabel(names=["O", "B-PER", "I-PER",
                                                                                          "B-LOC", "I-LOC"]))
        elif column == "id":
            features[column] = datasets.Value("string")
        else:
            inner = values[0][0] if values and isinstance(values[0], list) and values[0] else values[0]
            value = datasets.Value("int32" if isinstance(inner, int) else "string")
            features[column] = datasets.Sequence(value) if isinstance(values[0], list) else value
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features(features))
    path = tmp_path / name
    datasets.disable_progress_bars()
    (datasets.DatasetDict({s: ds for s in splits}) if splits else ds).save_to_disk(str(path))
    return path


CONLL_ROWS = {"id": ["0", "1"], "tokens": [["Tim", "Cook", "in", "São", "Paulo"], ["hi"]],
              "pos_tags": [[1, 1, 2, 1, 1], [3]], "chunk_tags": [[1, 2, 0, 1, 2], [0]],
              "ner_tags": [[1, 2, 0, 3, 4], [0]]}


def test_hf_datasets_like_the_hub_conll2003(tmp_path: Path) -> None:
    path = _hf_folder(tmp_path, "conll", CONLL_ROWS, splits=("train", "validation"))
    assert detect_format(path) == detect_format(path / "train") == "hf-datasets"
    err = _error(path)
    assert str(err) == (f"{path}: a DatasetDict with the splits train, validation: choose one, e.g. {path / 'train'} "
                        "or split='train'")
    expected = [Example("Tim Cook in São Paulo", [Entity.at("Tim Cook in São Paulo", 0, 8, "PER"),
                                                  Entity.at("Tim Cook in São Paulo", 12, 21, "LOC")], "0"),
                Example("hi", [], "1")]
    assert read_dataset(path / "train") == expected  # pos_tags and chunk_tags are per-token: not read
    assert read_dataset(path, split="validation") == expected
    assert "no split 'test' (the splits: train, validation)" in _error(path, split="test").reason
    assert "split='train' given, but this folder is a single Dataset" in _error(path / "train", split="train").reason


def test_hf_datasets_string_tags_and_columns_not_read(tmp_path: Path) -> None:
    import datasets

    rows = {"tokens": [["北", "京"], ["好"]], "ner_tags": [["B-LOC", "I-LOC"], ["O"]],
            "spans": [["LOC: 北京"], []]}
    path = _hf_folder(tmp_path, "wikiann", rows, tag_feature=datasets.Value("string"))
    err = _error(path)
    assert err.line is None and str(err) == (
        f"{path}: row 0: column 'spans' is not read (it is not a list of one value per token); pass "
        "ignore_columns='spans' if it holds no entities")
    assert read_dataset(path, sep="", ignore_columns="spans") == [
        Example("北京", [Entity.at("北京", 0, 2, "LOC")], "wikiann:0"), Example("好", [], "wikiann:1")]
    ints = _hf_folder(tmp_path, "ints", {"tokens": [["a"]], "ner_tags": [[1]]}, tag_feature=datasets.Value("int32"))
    assert re.fullmatch("column 'ner_tags' is .*int32.*, not a list of ClassLabel-named tags or of tag strings",
                        _error(ints).reason)  # integers without names cannot be read as tags
    bad = _hf_folder(tmp_path, "bad", {"tokens": [["a"], ["b"]], "ner_tags": [["O"], ["X-PER"]]},
                     tag_feature=datasets.Value("string"))
    assert str(_error(bad)) == f"{bad}: row 1, token 0: invalid tag 'X-PER' (expected O or B-X/I-X/E-X/S-X)"
    other = _hf_folder(tmp_path, "other", {"words": [["a"]], "labels": [["B-X"]]}, tag_feature=datasets.Value("string"))
    assert "no column 'tokens', 'ner_tags' (the columns: words, labels)" in _error(other).reason
    assert read_dataset(other, tokens="words", tags="labels")[0].entities == [Entity.at("a", 0, 1, "X")]


def test_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "some").mkdir()
    err = _error(tmp_path / "some")
    assert "a folder, but not one that Hugging Face datasets' save_to_disk wrote" in err.reason
    assert "not a Hugging Face datasets folder (no dataset_info.json, state.json)" in \
        _error(tmp_path / "some", "hf-datasets").reason


@pytest.mark.parametrize(("module", "fmt", "target"), [("spacy", "spacy", "x.spacy"), ("datasets", "hf-datasets", "hf")])
def test_a_missing_optional_library_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, fmt: str, target: str
) -> None:
    out = tmp_path / target
    write_dataset(EN, out, fmt)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(MissingDependencyError) as info:
        read_dataset(out, fmt)
    assert isinstance(info.value, DatasetFormatError) and info.value.package == module
    assert str(info.value).endswith(f"needs the {module} package, which is not installed: pip install 'nerve[formats]'")
    with pytest.raises(MissingDependencyError, match="writing"):
        write_dataset(EN, tmp_path / ("again" + target), fmt)


# --- detection -------------------------------------------------------------------------------------------


def test_detect_the_tools_formats(tmp_path: Path) -> None:
    cases = {
        "ls_array.json": '[\n  {"data": {"text": "a"}, "annotations": []}\n]\n',
        "ls_lines.jsonl": '{"data": {"text": "a"}, "predictions": []}\n',
        "ls_array.txt": '[{"data": {"text": "a"}}]',  # any suffix: an array of objects is JSON
        "doccano.jsonl": '{"text": "ab", "label": [[0, 1, "X"]]}\n',
        "doccano_entities.jsonl": '{"text": "ab", "entities": [{"label": "X", "start_offset": 0, "end_offset": 1}]}\n',
        "cluener.jsonl": '{"text": "ab", "label": {"X": {"a": [[0, 0]]}}}\n',
        "nerve.jsonl": '{"text": "ab", "entities": [{"label": "X", "start": 0, "end": 1}]}\n',
        "json_min.json": '[{"text": "ab", "label": [{"start": 0, "end": 1, "labels": ["X"]}]}]',
        # Empty entity lists decide nothing until a record, or the other fields, tell the readers apart.
        "empty_then_doccano.jsonl": '{"text": "a", "label": []}\n{"text": "ab", "label": [[0, 1, "X"]]}\n',
        "empty_doccano.jsonl": '{"id": 1, "text": "a", "label": [], "Comments": []}\n',
        "empty_min.json": '[{"id": 1, "text": "a", "label": [], "annotator": 1, "lead_time": 1.0}]',
        "empty_entities.jsonl": '{"text": "a", "entities": [], "Comments": []}\n',
        "columns.txt": "[ O\nfoo B-X\n] O\n",  # a bracket token is not a JSON array
        "corpus.spacy": "",  # by its suffix: spaCy's binary file
    }
    expected = {"ls_array.json": "label-studio", "ls_lines.jsonl": "label-studio", "ls_array.txt": "label-studio",
                "doccano.jsonl": "doccano", "doccano_entities.jsonl": "doccano", "cluener.jsonl": "cluener",
                "nerve.jsonl": "jsonl", "json_min.json": "label-studio", "empty_then_doccano.jsonl": "doccano",
                "empty_doccano.jsonl": "doccano", "empty_min.json": "label-studio", "empty_entities.jsonl": "doccano",
                "columns.txt": "conll", "corpus.spacy": "spacy"}
    assert {name: detect_format(_write(tmp_path, name, content)) for name, content in cases.items()} == expected


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ('{"text": "a", "label": ["positive"]}\n', 1,
         "cannot detect the format: 'label' is a list, but neither of doccano's [start, end, type] nor of Label "
         "Studio's {start, end, labels} regions (a list of names is doccano's text classification, not entities); "
         "pass the format"),
        ('{"text": "a", "label": "X"}\n', 1,
         "cannot detect the format: 'label' is a str, neither CLUENER's object nor a list of doccano's [start, end, "
         "type] or of Label Studio's {start, end, labels} regions; pass the format"),
        ('{"text": "a"}\n{"text": "a", "label": []}\n{"text": "a", "label": {}}\n', 3,
         "cannot detect the format: this record is cluener, the record on line 2 is doccano or label-studio; "
         "pass the format"),
        ('{"text": "a", "entities": [{"start_offset": 0}, {"start": 0}]}\n', 1,
         "cannot detect the format: 'entities' mixes doccano's {start_offset, end_offset} objects with other items; "
         "pass the format"),
        ('{"data": {"text": "a"}, "label": {}}\n', 1,
         "cannot detect the format: the record has the entity fields 'data' (label-studio), 'label' (cluener) of "
         "different formats; pass the format"),
        ('{"text": "a", "annotations": []}\n', 1,
         "cannot detect the format: the record has 'annotations' but no 'data'; a Label Studio task holds its text "
         "in data.text"),
    ],
)
def test_ambiguous_files_are_an_error_naming_the_choices(tmp_path: Path, content: str, line: int, reason: str) -> None:
    path = _write(tmp_path, "ambiguous.jsonl", content)
    with pytest.raises(DatasetFormatError) as info:
        detect_format(path)
    assert str(info.value) == f"{path}:{line}: {reason}"


def test_a_format_named_by_hand_reads_what_detection_refuses(tmp_path: Path) -> None:
    path = _write(tmp_path, "mixed.jsonl", '{"text": "ab", "label": []}\n{"text": "ab", "label": [[0, 1, "X"]]}\n')
    assert _spans(read_dataset(path, "doccano")[1]) == [("X", "a")]
    err = _error(path, "cluener")  # and the other reader says why it does not fit
    assert err.line == 1 and err.reason == "'label' must be an object, got list"
    err = _error(_write(tmp_path, "c.jsonl", '{"text": "a", "label": {}}\n'), "doccano")
    assert err.reason == ("'label' must be a list, got dict (an object of type -> surface -> spans is CLUENER's "
                          "'label': format='cluener')")
