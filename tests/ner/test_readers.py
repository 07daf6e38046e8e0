"""Dataset readers and writers: real shared data, round trips, tagging schemes, errors, no silent misreads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerve.ner.readers import (
    FORMATS,
    DatasetFormatError,
    NoEntitiesError,
    dataset_stats,
    detect_format,
    entities_to_tags,
    read_dataset,
    tags_to_spans,
    token_offsets,
    write_dataset,
)
from nerve.ner.readers.conll import detect_scheme, entities_to_spans, parse_tag, read_conll_scheme, spans_to_tags
from nerve.ner.types import Entity, Example

# --- helpers ---------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _pairs(examples: list[Example]) -> list[tuple[str, list[Entity]]]:
    """Text and entities, without ids (column formats cannot store ids)."""
    return [(ex.text, ex.entities) for ex in examples]


def _spans(ex: Example) -> list[tuple[str, str]]:
    return [(e.label, e.text) for e in ex.entities]


def _raw_conll_tags(path: Path) -> list[list[str]]:
    """Last-column tags per sentence, read independently of the library."""
    sentences: list[list[str]] = []
    current: list[str] = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        cols = line.split()
        if not cols or cols[0] == "-DOCSTART-":
            if current:
                sentences.append(current)
                current = []
            continue
        current.append(cols[-1])
    if current:
        sentences.append(current)
    return sentences


def _sentence_offsets(ex: Example) -> list[tuple[int, int]]:
    return token_offsets(ex.text.split(" "))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent from the shared datasets")
    return path


# --- real shared data ------------------------------------------------------------------------------------

CLUENER_COUNTS = {
    "train": (10748, 23971, dict(address=2891, book=1139, company=2980, game=2376, government=1835, movie=1123,
                                 name=3755, organization=3210, position=3141, scene=1521)),
    "dev": (1343, 3072, dict(address=373, book=154, company=378, game=295, government=247, movie=151, name=465,
                             organization=367, position=433, scene=209)),
}

CONLL_COUNTS = {
    "eng.train": (14041, 23499, dict(PER=6600, LOC=7140, ORG=6321, MISC=3438)),
    "eng.testa": (3250, 5942, dict(PER=1842, LOC=1837, ORG=1341, MISC=922)),
    "eng.testb": (3453, 5648, dict(PER=1617, LOC=1668, ORG=1661, MISC=702)),
}


@pytest.fixture(scope="module")
def cluener(datasets_dir: Path) -> dict[str, list[Example]]:
    return {s: read_dataset(_need(datasets_dir / "cluener" / f"{s}.jsonl"), allow_empty=s == "test")
            for s in ("train", "dev", "test")}


@pytest.fixture(scope="module")
def conll(datasets_dir: Path) -> dict[str, list[Example]]:
    return {s: read_dataset(_need(datasets_dir / "conll2003" / s)) for s in CONLL_COUNTS}


@pytest.mark.parametrize("split", sorted(CLUENER_COUNTS))
def test_cluener_counts(cluener: dict[str, list[Example]], datasets_dir: Path, split: str) -> None:
    sentences, entities, per_label = CLUENER_COUNTS[split]
    assert detect_format(datasets_dir / "cluener" / f"{split}.jsonl") == "cluener"
    stats = dataset_stats(cluener[split])
    assert stats["sentences"] == sentences
    assert stats["entities"] == entities
    assert stats["labels"] == dict(sorted(per_label.items()))


def test_cluener_nested_entities(cluener: dict[str, list[Example]]) -> None:
    # The README names one nested pair; the book title actually contains two company names.
    assert dataset_stats(cluener["dev"])["overlapping_pairs"] == 0
    assert dataset_stats(cluener["train"])["overlapping_pairs"] == 2
    nested = [ex for ex in cluener["train"] if dataset_stats([ex])["overlapping_pairs"]]
    assert len(nested) == 1
    ex = nested[0]
    assert ex.id == "train.jsonl:1506"
    book = Entity.at(ex.text, 15, 35, "book")
    assert book.text == "《招商银行：投资永隆银行浮亏逾百亿港元》"
    assert ex.entities == sorted(
        [book, Entity.at(ex.text, 16, 20, "company"), Entity.at(ex.text, 23, 27, "company")]
    )
    assert [e.text for e in ex.entities if e.label == "company"] == ["招商银行", "永隆银行"]


def test_cluener_test_split_is_unlabelled(cluener: dict[str, list[Example]]) -> None:
    test = cluener["test"]
    assert len(test) == 1345
    assert all(not ex.entities for ex in test)
    assert [ex.id for ex in test[:3]] == ["0", "1", "2"]
    assert test[1].text == "尼日利亚海军发言人当天在阿布贾向尼日利亚通讯社证实了这一消息。"


def test_cluener_first_record(cluener: dict[str, list[Example]]) -> None:
    ex = cluener["train"][0]
    assert ex.id == "train.jsonl:0"
    assert _spans(ex) == [("company", "浙商银行"), ("name", "叶老桂")]
    assert [(e.start, e.end) for e in ex.entities] == [(0, 4), (9, 12)]


def test_cluener_round_trip_real(cluener: dict[str, list[Example]], datasets_dir: Path, tmp_path: Path) -> None:
    for split in ("dev", "test"):
        out = tmp_path / f"{split}.jsonl"
        write_dataset(cluener[split], out, "cluener")
        assert read_dataset(out, allow_empty=split == "test") == cluener[split]
    # The test split's integer ids are written back as integers, byte for byte like the source.
    source = (datasets_dir / "cluener" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    written = (tmp_path / "test.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in written] == [{**json.loads(line), "label": {}} for line in source]
    jsonl = tmp_path / "dev.nerve.jsonl"
    write_dataset(cluener["dev"], jsonl, "jsonl")
    assert detect_format(jsonl) == "jsonl"
    assert read_dataset(jsonl) == cluener["dev"]


@pytest.mark.parametrize("split", list(CONLL_COUNTS))
def test_conll_counts(conll: dict[str, list[Example]], datasets_dir: Path, split: str) -> None:
    sentences, entities, per_label = CONLL_COUNTS[split]
    assert detect_format(datasets_dir / "conll2003" / split) == "conll"
    stats = dataset_stats(conll[split])
    assert stats["sentences"] == sentences
    assert stats["entities"] == entities
    assert stats["labels"] == dict(sorted(per_label.items()))
    assert stats["overlapping_pairs"] == 0


def test_conll_first_sentences(conll: dict[str, list[Example]]) -> None:
    first = conll["eng.train"][0]
    assert first.id == "eng.train:0"
    assert first.text == "EU rejects German call to boycott British lamb ."
    assert _spans(first) == [("ORG", "EU"), ("MISC", "German"), ("MISC", "British")]
    assert _spans(conll["eng.train"][1]) == [("PER", "Peter Blackburn")]
    assert conll["eng.testb"][-1].id == "eng.testb:3452"


@pytest.mark.parametrize("split", ["eng.testa", "eng.testb"])
def test_conll_iob1_reencodes_to_the_file(conll: dict[str, list[Example]], datasets_dir: Path, split: str) -> None:
    path = datasets_dir / "conll2003" / split
    assert read_conll_scheme(path) == "iob1"
    raw = _raw_conll_tags(path)
    examples = conll[split]
    assert [entities_to_tags(_sentence_offsets(ex), ex.entities, "iob1") for ex in examples] == raw
    # B- only between adjacent same-type entities: README counts 4 (testa) and 20 (testb).
    assert sum(t.startswith("B-") for tags in raw for t in tags) == {"eng.testa": 4, "eng.testb": 20}[split]


def test_conll_decoding_matches_seqeval(conll: dict[str, list[Example]], datasets_dir: Path) -> None:
    from seqeval.metrics.sequence_labeling import get_entities

    raw = _raw_conll_tags(datasets_dir / "conll2003" / "eng.testa")
    for ex, tags in zip(conll["eng.testa"], raw, strict=True):
        ours = entities_to_spans(_sentence_offsets(ex), ex.entities)
        theirs = sorted((start, end + 1, label) for label, start, end in get_entities(tags))
        assert ours == theirs, ex.id


def test_conll_write_iob1_reproduces_tags(conll: dict[str, list[Example]], datasets_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "testa.conll"
    write_dataset(conll["eng.testa"], out, "conll", scheme="iob1")
    assert _raw_conll_tags(out) == _raw_conll_tags(datasets_dir / "conll2003" / "eng.testa")
    assert _pairs(read_dataset(out)) == _pairs(conll["eng.testa"])
    for scheme in ("iob2", "bioes"):
        write_dataset(conll["eng.testa"], out, "conll", scheme=scheme)
        assert read_conll_scheme(out) == scheme
        assert _pairs(read_dataset(out, scheme=scheme)) == _pairs(conll["eng.testa"])


# --- hand-made round trips -------------------------------------------------------------------------------


def _chinese_examples() -> list[Example]:
    texts = [
        ("浙商银行企业信贷部叶老桂博士", [(0, 4, "company"), (9, 12, "name")]),
        ("他在北京 😀 见到了《三体》作者", [(2, 4, "address"), (10, 14, "book")]),
        ("没有实体的句子。", []),
        ("叶老桂和叶老桂", [(0, 3, "name"), (4, 7, "name")]),
    ]
    return [
        Example(text=t, entities=[Entity.at(t, s, e, lab) for s, e, lab in ents], id=f"x:{i}")
        for i, (t, ents) in enumerate(texts)
    ]


def _english_examples() -> list[Example]:
    texts = [
        ("EU rejects German call", [(0, 2, "ORG"), (11, 17, "MISC")]),
        ("Peter Blackburn met John Smith Jr.", [(0, 15, "PER"), (20, 34, "PER")]),
        ("Paris Berlin Zürich São Paulo", [(0, 5, "LOC"), (6, 12, "LOC"), (13, 19, "LOC"), (20, 29, "LOC")]),
        ("nothing here", []),
    ]
    return [
        Example(text=t, entities=[Entity.at(t, s, e, lab) for s, e, lab in ents], id=f"y:{i}")
        for i, (t, ents) in enumerate(texts)
    ]


@pytest.mark.parametrize("fmt", ["cluener", "jsonl", "prodigy"])
def test_json_round_trip(tmp_path: Path, fmt: str) -> None:
    examples = _chinese_examples() + _english_examples()
    examples.append(Example(text="nested 北京大学", entities=[Entity.at("nested 北京大学", 7, 11, "org"),
                                                              Entity.at("nested 北京大学", 7, 9, "loc")]))
    out = tmp_path / f"data.{fmt}.jsonl"
    write_dataset(examples, out, fmt)
    assert "北京" in out.read_text(encoding="utf-8")  # ensure_ascii=False
    back = read_dataset(out)
    assert back[:-1] == examples[:-1]
    assert back[-1].id == f"{out.name}:{len(examples) - 1}"  # no id in the record: name:index
    assert _pairs(back) == _pairs(examples)


@pytest.mark.parametrize("scheme", ["iob1", "iob2", "bio", "bioes", "iobes"])
def test_conll_round_trip(tmp_path: Path, scheme: str) -> None:
    out = tmp_path / "data.conll"
    write_dataset(_english_examples(), out, "conll", scheme=scheme)
    assert detect_format(out) == "conll"
    assert _pairs(read_dataset(out)) == _pairs(_english_examples())
    assert _pairs(read_dataset(out, format="conll", scheme=scheme)) == _pairs(_english_examples())


def test_bmes_round_trip(tmp_path: Path) -> None:
    examples = _chinese_examples() + [
        Example(text="a 北京", entities=[Entity.at("a 北京", 2, 4, "LOC")]),
        Example(text="\u3000东京\t", entities=[Entity.at("\u3000东京\t", 1, 3, "LOC")]),
    ]
    out = tmp_path / "data.bmes"
    write_dataset(examples, out, "bmes")
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[:5] == ["浙 B-company", "商 M-company", "银 M-company", "行 E-company", "企 O"]
    assert "  O" in lines  # a space character
    assert detect_format(out) == "bmes"
    assert _pairs(read_dataset(out)) == _pairs(examples)
    assert read_dataset(out)[0].id == "data.bmes:0"


def test_writers_reject_unrepresentable(tmp_path: Path) -> None:
    text = "New York City"
    nested = Example(text=text, entities=[Entity.at(text, 0, 13, "LOC"), Entity.at(text, 0, 8, "LOC")], id="n")
    with pytest.raises(ValueError, match="example n: overlapping"):
        write_dataset([nested], tmp_path / "x.conll", "conll")
    with pytest.raises(ValueError, match="example n: overlapping"):
        write_dataset([nested], tmp_path / "x.bmes", "bmes")
    partial = Example(text=text, entities=[Entity.at(text, 0, 6, "LOC")], id="p")
    with pytest.raises(ValueError, match="example p: .*token boundaries"):
        write_dataset([partial], tmp_path / "x.conll", "conll")
    with pytest.raises(ValueError, match="empty text"):
        write_dataset([Example(text="")], tmp_path / "x.conll", "conll")
    with pytest.raises(ValueError, match="line break"):
        write_dataset([Example(text="a\nb")], tmp_path / "x.bmes", "bmes")


# --- tagging schemes -------------------------------------------------------------------------------------

IOB1 = """\
-DOCSTART- -X- O O

John NNP I-NP I-PER
Smith NNP I-NP I-PER
Mary NNP I-NP B-PER
saw VBD I-VP O
Paris NNP I-NP I-LOC
London NNP I-NP I-ORG
"""

IOB2 = """\
John B-PER
Smith I-PER
Mary B-PER
saw O
Paris B-LOC
London B-ORG

Ann B-PER
"""

BIOES = """\
John B-PER
Smith E-PER
Mary S-PER
saw O
Paris S-LOC
London S-ORG
"""

EXPECTED = [("PER", "John Smith"), ("PER", "Mary"), ("LOC", "Paris"), ("ORG", "London")]


@pytest.mark.parametrize(("content", "scheme"), [(IOB1, "iob1"), (IOB2, "iob2"), (BIOES, "bioes")])
def test_schemes_decode_adjacent_same_type(tmp_path: Path, content: str, scheme: str) -> None:
    path = _write(tmp_path, "s.txt", content)
    assert read_conll_scheme(path) == scheme
    for opt in ("auto", scheme):
        examples = read_dataset(path, "conll", scheme=opt)
        assert examples[0].text == "John Smith Mary saw Paris London"
        assert _spans(examples[0]) == EXPECTED
        assert [(e.start, e.end) for e in examples[0].entities] == [(0, 10), (11, 15), (20, 25), (26, 32)]
    assert len(read_dataset(path)) == (2 if scheme == "iob2" else 1)  # -DOCSTART- is not a sentence


def test_lenient_decoding() -> None:
    # I- after O or another type starts an entity; E- without an open entity is a single-token entity.
    assert tags_to_spans(["O", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == [(1, 2, "PER"), (2, 3, "LOC"), (3, 5, "LOC")]
    assert tags_to_spans(["E-PER", "B-PER", "I-PER", "O", "B-LOC", "E-LOC", "I-LOC"]) == [
        (0, 1, "PER"), (1, 3, "PER"), (4, 6, "LOC"), (6, 7, "LOC"),
    ]
    assert tags_to_spans(["B-PER", "B-PER", "S-PER", "I-PER"]) == [
        (0, 1, "PER"), (1, 2, "PER"), (2, 3, "PER"), (3, 4, "PER"),
    ]


def test_detect_scheme() -> None:
    def parsed(*tags: str) -> list[tuple[str, str]]:
        return [parse_tag(t) for t in tags]

    assert detect_scheme([parsed("B-PER", "I-PER", "O"), parsed("B-LOC")]) == "iob2"
    assert detect_scheme([parsed("B-PER", "I-PER"), parsed("O", "I-LOC")]) == "iob1"
    assert detect_scheme([parsed("B-PER", "I-LOC")]) == "iob1"
    assert detect_scheme([parsed("I-PER", "B-PER")]) == "iob1"
    assert detect_scheme([parsed("B-PER", "I-PER"), parsed("S-LOC")]) == "bioes"
    assert detect_scheme([]) == "iob2"


@pytest.mark.parametrize(
    ("scheme", "tags"),
    [
        ("iob1", ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG"]),
        ("iob2", ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"]),
        ("bioes", ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "B-ORG", "E-ORG"]),
    ],
)
def test_entities_to_tags(scheme: str, tags: list[str]) -> None:
    tokens = ["John", "Smith", "Mary", "saw", "Paris", "New", "Corp"]
    text = " ".join(tokens)
    offsets = token_offsets(tokens)
    spans = [(0, 2, "PER"), (2, 3, "PER"), (4, 5, "LOC"), (5, 7, "ORG")]
    entities = [Entity.at(text, offsets[a][0], offsets[b - 1][1], lab) for a, b, lab in spans]
    assert entities_to_tags(offsets, entities, scheme) == tags
    assert tags_to_spans(tags) == spans
    with pytest.raises(ValueError, match="token boundaries"):
        entities_to_tags(offsets, [Entity.at(text, 1, 4, "PER")], scheme)
    with pytest.raises(ValueError, match="overlapping"):
        entities_to_tags(offsets, [entities[0], Entity.at(text, 5, 15, "PER")], scheme)


span_lists = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 3), st.sampled_from(["PER", "LOC"])), max_size=6),
    )
)


@settings(max_examples=200, deadline=None)
@given(span_lists, st.sampled_from(["iob1", "iob2", "bioes"]))
def test_tags_round_trip_property(case: tuple[int, list[tuple[int, int, str]]], scheme: str) -> None:
    n, raw = case
    spans, covered = [], set()
    for start, length, label in sorted(raw):
        end = min(start + length, n)
        if covered.isdisjoint(range(start, end)):
            spans.append((start, end, label))
            covered.update(range(start, end))
    assert tags_to_spans(spans_to_tags(n, spans, scheme)) == sorted(spans)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
                        min_size=1, max_size=12), min_size=1, max_size=4),
       st.sampled_from(["jsonl", "cluener", "prodigy", "bmes"]))
def test_unicode_round_trip_property(tmp_path_factory: pytest.TempPathFactory, texts: list[str], fmt: str) -> None:
    examples = []
    for i, text in enumerate(texts):
        entities = [Entity.at(text, 0, 1, "A")] if len(text) > 2 else []
        if len(text) > 4:
            entities.append(Entity.at(text, 2, len(text) - 1, "B"))
        examples.append(Example(text=text, entities=entities, id=str(i)))
    out = tmp_path_factory.mktemp("rt") / f"data.{fmt}"
    write_dataset(examples, out, fmt)
    back = read_dataset(out, fmt, allow_empty=True)  # texts of one or two characters have no entities
    assert _pairs(back) == _pairs(examples)


# --- auto detection --------------------------------------------------------------------------------------


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(_write(tmp_path, "a.jsonl", '\n{"text": "x", "label": {}}\n')) == "cluener"
    assert detect_format(_write(tmp_path, "b.jsonl", '{"text": "x", "entities": []}\n')) == "jsonl"
    assert detect_format(_write(tmp_path, "c.json", '[{"id": 1, "text": "x"}]')) == "cluener"
    assert detect_format(_write(tmp_path, "d.txt", '{"text": "x", "entities": []}\n')) == "jsonl"
    assert detect_format(_write(tmp_path, "e.txt", "北 B-LOC\n京 E-LOC\n\n东 S-LOC\n")) == "bmes"
    assert detect_format(_write(tmp_path, "f.bio", "EU B-ORG\nrejects O\n. O\n")) == "conll"
    assert detect_format(_write(tmp_path, "g.txt", "-DOCSTART- O\n\nA B-X\nb O\n")) == "conll"
    assert detect_format(_write(tmp_path, "h.jsonl", "")) == "jsonl"
    assert read_dataset(tmp_path / "h.jsonl", allow_empty=True) == []
    unlabelled = read_dataset(_write(tmp_path, "i.jsonl", '{"id": 7, "text": "北京"}\n'), allow_empty=True)
    assert unlabelled == [Example(text="北京", id="7")]
    for fmt in ("jsonl", "prodigy"):
        assert read_dataset(tmp_path / "i.jsonl", fmt, allow_empty=True) == unlabelled
    assert detect_format(_write(tmp_path, "j.jsonl", '{"text": "x", "spans": []}\n')) == "prodigy"
    # Unlabelled records are passed over: the first labelled one decides.
    later = _write(tmp_path, "k.jsonl", '{"text": "x"}\n{"text": "Paris", "spans": [{"start": 0, "end": 5, "label": "LOC"}]}\n')
    assert detect_format(later) == "prodigy"
    assert _spans(read_dataset(later)[1]) == [("LOC", "Paris")]


def test_cluener_json_array_and_pretty_printed(tmp_path: Path) -> None:
    records = [
        {"text": "浙商银行叶老桂", "label": {"company": {"浙商银行": [[0, 3]]}, "name": {"叶老桂": [[4, 6]]}}},
        {"text": "北京", "label": {"address": {"北京": [[0, 1]]}}},
    ]
    array = _write(tmp_path, "arr.json", json.dumps(records, ensure_ascii=False, indent=2))
    pretty = _write(tmp_path, "pretty.json", "\n".join(json.dumps(r, ensure_ascii=False, indent=4) for r in records))
    for path in (array, pretty):
        examples = read_dataset(path)
        assert [_spans(ex) for ex in examples] == [[("company", "浙商银行"), ("name", "叶老桂")], [("address", "北京")]]


def test_formats_registry(tmp_path: Path) -> None:
    assert set(FORMATS) == {"cluener", "conll", "bmes", "jsonl", "prodigy", "label-studio", "doccano", "spacy",
                            "hf-datasets"}
    with pytest.raises(ValueError, match="unknown dataset format 'xml'"):
        read_dataset(_write(tmp_path, "a.jsonl", ""), "xml")
    with pytest.raises(ValueError, match="unknown dataset format"):
        write_dataset([], tmp_path / "b", "xml")
    with pytest.raises(ValueError, match="unknown tagging scheme"):
        read_dataset(_write(tmp_path, "c.conll", "a O\n"), "conll", scheme="bilou")


def test_dataset_stats() -> None:
    stats = dataset_stats(_chinese_examples())
    assert stats == {"sentences": 4, "entities": 6, "labels": {"address": 1, "book": 1, "company": 1, "name": 3},
                     "overlapping_pairs": 0}


# --- malformed input -------------------------------------------------------------------------------------


def _error(path: Path, fmt: str = "auto", **opts: object) -> DatasetFormatError:
    with pytest.raises(DatasetFormatError) as info:
        read_dataset(path, fmt, **opts)
    return info.value


@pytest.mark.parametrize(
    ("name", "content", "fmt", "line", "reason"),
    [
        ("bad_span.jsonl",
         '{"text": "北京", "label": {}}\n\n{"text": "上海市", "label": {"address": {"上海": [[1, 2]]}}}\n',
         "auto", 3, "not the surface"),
        ("outside.jsonl", '{"text": "上海", "label": {"address": {"上海": [[0, 2]]}}}\n', "cluener", 1, "outside"),
        ("span_shape.jsonl", '{"text": "上海", "label": {"address": {"上海": [0, 1]}}}\n', "cluener", 1,
         "expected \\[start, end_inclusive\\]"),
        ("syntax.jsonl", '{"text": "a", "label": {}}\n{"text": "b", "label": {}\n{"text": "c"}\n', "cluener", 2,
         "invalid JSON"),
        ("not_object.jsonl", '{"text": "a"}\n[1, 2]\n', "cluener", 2, "expected a JSON object"),
        ("no_text.jsonl", '{"text": "a"}\n{"id": 3}\n', "cluener", 2, "no string field 'text'"),
        ("nerve_as_cluener.jsonl", '{"text": "a", "entities": []}\n', "cluener", 1, "format='jsonl'"),
        ("cluener_as_nerve.jsonl", '{"text": "a", "label": {}}\n', "jsonl", 1,
         "unknown field\\(s\\) 'label' for the jsonl reader.*format='cluener'"),
        ("extra_field.jsonl", '{"text": "a", "label": {}}\n{"text": "b", "label": {}, "source": "web"}\n', "auto", 2,
         "unknown field\\(s\\) 'source' for the cluener reader; expected 'id', 'text', 'label'$"),
        ("prodigy_extra.jsonl", '{"text": "a", "spans": [], "_task_hash": 1, "tokens": [], "ents": []}\n', "auto",
         1, "unknown field\\(s\\) 'ents' for the prodigy reader; expected 'id', 'text', 'spans', 'answer'"),
        ("two_kinds.jsonl", '{"text": "a", "entities": [], "spans": []}\n', "auto", 1,
         "the record has the entity fields 'entities' \\(jsonl or doccano\\), 'spans' \\(prodigy\\) of different formats"),
        ("span_offsets.jsonl", '{"text": "Paris", "spans": [{"start": 0, "end": 6, "label": "LOC"}]}\n', "prodigy", 1,
         "span 0: span \\[0, 6\\) outside a text of 5"),
        ("span_text.jsonl", '{"text": "Paris", "spans": [{"start": 0, "end": 4, "label": "LOC", "text": "Paris"}]}\n',
         "auto", 1, "span 0: text 'Paris' does not match"),
        ("span_label.jsonl", '{"text": "Paris", "spans": [{"start": 0, "end": 5}]}\n', "auto", 1, "span 0: missing label"),
        ("spans_shape.jsonl", '{"text": "Paris", "spans": {"start": 0}}\n', "prodigy", 1, "'spans' must be a list"),
        ("answer.jsonl", '{"text": "Paris", "spans": [], "answer": "maybe"}\n', "prodigy", 1,
         "'answer' must be one of accept, reject, ignore"),
        ("offsets.jsonl",
         '{"text": "Paris", "entities": []}\n{"text": "Paris", "entities": [{"label": "LOC", "start": 0, "end": 9}]}\n',
         "jsonl", 2, "outside a text of 5"),
        ("mismatch.jsonl",
         '{"text": "Paris", "entities": [{"label": "LOC", "text": "Pari", "start": 0, "end": 5}]}\n',
         "auto", 1, "does not match"),
        ("missing.jsonl", '{"text": "Paris", "entities": [{"label": "LOC", "start": 0}]}\n', "jsonl", 1,
         "missing end"),
        ("array.json", '[\n  {"text": "a", "label": {}},\n  {"text": "b", "label": {"x": {"c": [[0, 0]]}}}\n]\n',
         "cluener", 3, "not the surface"),
        ("array_comma.json", '[\n  {"text": "a"}\n  {"text": "b"}\n]\n', "cluener", 3, "expected ',' or ']'"),
        ("bad_tag.conll", "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\n\nPeter NNP I-NP PER\n", "conll", 5,
         "invalid tag 'PER'"),
        ("bad_tag2.txt", "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP X-ORG\n", "auto", 4,
         "invalid tag 'X-ORG'"),
        ("one_col.conll", "EU B-ORG\nrejects\n", "conll", 2, "expected a token and a tag"),
        ("empty_type.conll", "EU B-\n", "conll", 1, "invalid tag 'B-'"),
        ("bad_bmes.bmes", "北 B-LOC\n京 E-LOC\n\n东 Q-LOC\n", "bmes", 4, "invalid tag 'Q-LOC'"),
        ("bad_bmes2.bmes", "北 B-LOC\n京\n", "bmes", 2, "expected '<char> <tag>'"),
        ("utf8.jsonl", None, "auto", 2, "not valid UTF-8"),
    ],
)
def test_malformed_input_names_file_and_line(
    tmp_path: Path, name: str, content: str | None, fmt: str, line: int, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / name
    if content is None:
        path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    else:
        path.write_text(content, encoding="utf-8")
    err = _error(path, fmt)
    assert str(err).startswith(f"{path}:{line}: "), str(err)
    assert err.line == line and err.path == str(path)
    assert isinstance(err, ValueError)
    assert re.search(reason, err.reason), err.reason
    # A relative path is reported as given.
    monkeypatch.chdir(tmp_path)
    assert str(_error(Path(name), fmt)).startswith(f"{name}:{line}: ")


def test_explicit_scheme_rejects_other_prefixes(tmp_path: Path) -> None:
    path = _write(tmp_path, "s.conll", "EU B-ORG\n\nParis S-LOC\n")
    assert _spans(read_dataset(path)[1]) == [("LOC", "Paris")]  # auto: bioes
    for scheme in ("iob1", "iob2", "bio"):
        err = _error(path, "conll", scheme=scheme)
        assert str(err).startswith(f"{path}:3: invalid tag 'S-LOC' (expected O or B-X/I-X)")
        assert "need scheme='bioes'" in str(err)


def test_bioes_explicit_vs_bmes_m_tag(tmp_path: Path) -> None:
    path = _write(tmp_path, "m.conll", "New B-LOC\nYork M-LOC\n")
    assert _error(path, "conll").line == 2
    assert _spans(read_dataset(path, "bmes")[0]) == [("LOC", "NewYork")]  # BMES: tokens concatenated
    assert _spans(read_dataset(_write(tmp_path, "i.bmes", "北 B-LOC\n京 I-LOC\n市 E-LOC\n"))[0]) == [("LOC", "北京市")]


# --- no silent misreads ----------------------------------------------------------------------------------

SPACY_SPANS = [
    {"text": "Apple hired Tim Cook in Cupertino", "spans": [
        {"start": 0, "end": 5, "label": "ORG"}, {"start": 12, "end": 20, "label": "PER"},
        {"start": 24, "end": 33, "label": "LOC"}]},
    {"text": "nothing to see", "spans": []},
]


def test_spans_records_are_read_as_prodigy_not_as_unlabelled_cluener(tmp_path: Path) -> None:
    # The bug of issue #16: this file was detected as CLUENER and every example came back without entities.
    path = _write(tmp_path, "data.jsonl", "".join(json.dumps(r) + "\n" for r in SPACY_SPANS))
    assert detect_format(path) == "prodigy"
    examples = read_dataset(path)
    assert [_spans(ex) for ex in examples] == [[("ORG", "Apple"), ("PER", "Tim Cook"), ("LOC", "Cupertino")], []]
    assert [ex.id for ex in examples] == ["data.jsonl:0", "data.jsonl:1"]
    for fmt, expected in (("cluener", "'id', 'text', 'label'"), ("jsonl", "'id', 'text', 'entities'")):
        err = _error(path, fmt)
        assert str(err) == (f"{path}:1: unknown field(s) 'spans' for the {fmt} reader; expected {expected} "
                            "('spans' is read by format='prodigy')")


def test_detection_names_the_choices_when_no_reader_fits(tmp_path: Path) -> None:
    path = _write(tmp_path, "hf.jsonl", '{"text": "a"}\n{"tokens": ["a"], "ner_tags": [1]}\n')
    err = _error(path)
    assert str(err) == (
        f"{path}:2: cannot detect the format: the record has 'tokens', 'ner_tags' but none of the entity fields "
        "'label' (cluener, doccano), 'entities' (jsonl, doccano), 'spans' (prodigy), 'data' (label-studio), "
        "'annotations' (label-studio), 'predictions' (label-studio); pass the format (one of: cluener, conll, bmes, "
        "jsonl, prodigy, label-studio, doccano, spacy, hf-datasets); token and tag lists are read from Hugging Face "
        "datasets folders (save_to_disk), not from JSON records"
    )


def test_prodigy_records(tmp_path: Path) -> None:
    tokens = [{"text": "Paris", "start": 0, "end": 5, "id": 0}, {"text": "rocks", "start": 6, "end": 11, "id": 1}]
    records = [
        {"text": "Paris rocks", "_input_hash": 1, "_task_hash": 2, "_view_id": "ner_manual", "tokens": tokens,
         "meta": {"source": "web"}, "answer": "accept",
         "spans": [{"start": 0, "end": 5, "label": "LOC", "token_start": 0, "token_end": 0, "text": "Paris"}]},
        {"text": "Berlin rocks", "answer": "reject", "spans": [{"start": 0, "end": 6, "label": "ORG"}]},
        {"text": "Rome", "answer": "ignore"},
        {"id": "r4", "text": "Oslo and Rome", "spans": [{"start": 9, "end": 13, "label": "LOC"},
                                                        {"start": 0, "end": 4, "label": "LOC"}]},
    ]
    path = _write(tmp_path, "db-out.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    examples = read_dataset(path)
    # Rejected and ignored answers are skipped; ids keep pointing at their records.
    assert [ex.id for ex in examples] == ["db-out.jsonl:0", "r4"]
    assert [_spans(ex) for ex in examples] == [[("LOC", "Paris")], [("LOC", "Oslo"), ("LOC", "Rome")]]
    out = tmp_path / "back.jsonl"
    write_dataset(examples, out, "prodigy")
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[1]) == {
        "id": "r4", "text": "Oslo and Rome",
        "spans": [{"start": 0, "end": 4, "label": "LOC"}, {"start": 9, "end": 13, "label": "LOC"}]}
    assert read_dataset(out) == examples


@pytest.mark.parametrize(
    ("name", "content", "fmt", "count"),
    [
        ("cluener.jsonl", '{"text": "北京", "label": {}}\n{"text": "上海"}\n', "cluener", 2),
        ("nerve.jsonl", '{"text": "Paris", "entities": []}\n', "jsonl", 1),
        ("prodigy.jsonl", '{"text": "Paris", "spans": []}\n{"text": "Rome", "spans": [{"start": 0, "end": 4, '
         '"label": "LOC"}], "answer": "reject"}\n', "prodigy", 1),
        ("tags.conll", "-DOCSTART- -X- O O\n\nEU O\nrejects O\n", "conll", 1),
        ("chars.bmes", "北 O\n京 O\n\n东 O\n", "bmes", 2),
        ("unlabelled.jsonl", '{"id": 0, "text": "北京"}\n', "cluener", 1),
    ],
)
def test_a_file_without_entities_is_an_error_unless_allowed(tmp_path: Path, name: str, content: str, fmt: str,
                                                             count: int) -> None:
    path = _write(tmp_path, name, content)
    for requested in ("auto", fmt):
        with pytest.raises(NoEntitiesError) as info:
            read_dataset(path, requested)
        err = info.value
        assert isinstance(err, DatasetFormatError) and err.path == str(path) and err.line is None
        assert err.format == fmt and err.examples == count
        assert str(err) == (f"{path}: {count} example(s), none with an entity (read as {fmt}); "
                            "unlabelled data must be allowed explicitly")
    examples = read_dataset(path, allow_empty=True)
    assert len(examples) == count and not any(ex.entities for ex in examples)


def test_an_empty_file_has_no_examples(tmp_path: Path) -> None:
    path = _write(tmp_path, "empty.jsonl", "\n")
    with pytest.raises(NoEntitiesError, match=f"^{re.escape(str(path))}: no examples \\(read as jsonl\\)"):
        read_dataset(path)
    assert read_dataset(path, allow_empty=True) == []


def test_one_entity_anywhere_is_enough(tmp_path: Path) -> None:
    lines = ['{"text": "x", "label": {}}'] * 50 + ['{"text": "北京", "label": {"address": {"北京": [[0, 1]]}}}']
    examples = read_dataset(_write(tmp_path, "sparse.jsonl", "\n".join(lines) + "\n"))
    assert len(examples) == 51 and sum(bool(ex.entities) for ex in examples) == 1
