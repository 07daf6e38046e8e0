"""Error analysis: every category on hand-built examples, nested spans, duplicates, empty examples, and invariants
against the strict scorer on random examples."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nerve.ner.errors_analysis import NONE, Alignment, Category, ErrorAnalysis, align
from nerve.ner.parsing import Mention
from nerve.ner.scoring import Scorer
from nerve.ner.types import Entity

TEXT = "John Smith visited New York City with Acme Corp staff"


def ent(start: int, end: int, label: str, text: str = TEXT) -> Entity:
    return Entity.at(text, start, end, label)


JOHN_SMITH = ent(0, 10, "PER")
NEW_YORK_CITY = ent(19, 32, "LOC")
ACME_CORP = ent(38, 47, "ORG")


def summary(alignments: list[Alignment]) -> list[tuple[str, tuple | None, tuple | None]]:
    """(category, gold key, predicted key or mention) of each alignment, in order."""

    def key(e: Entity | Mention | None) -> tuple | None:
        if e is None:
            return None
        return e.key if isinstance(e, Entity) else (e.label, e.text)

    return [(a.category.value, key(a.gold), key(a.pred)) for a in alignments]


@pytest.mark.parametrize(
    ("gold", "pred", "category"),
    [
        (JOHN_SMITH, ent(0, 10, "PER"), Category.CORRECT),
        (JOHN_SMITH, ent(0, 10, "ORG"), Category.WRONG_TYPE),
        (JOHN_SMITH, ent(0, 4, "PER"), Category.BOUNDARY),  # shorter
        (JOHN_SMITH, ent(5, 18, "PER"), Category.BOUNDARY),  # shifted: "Smith visited"
        (NEW_YORK_CITY, ent(19, 27, "ORG"), Category.WRONG_TYPE_AND_BOUNDARY),
    ],
)
def test_each_pair_category(gold: Entity, pred: Entity, category: Category) -> None:
    assert align([gold], [pred]) == [Alignment(category, gold, pred)]


def test_missed_and_spurious() -> None:
    got = align([JOHN_SMITH], [ACME_CORP])
    assert got == [Alignment(Category.MISSED, JOHN_SMITH, None), Alignment(Category.SPURIOUS, None, ACME_CORP)]
    assert got[0].pred_label == NONE and got[1].gold_label == NONE
    # touching spans do not overlap: [0, 10) and [10, 18)
    assert summary(align([JOHN_SMITH], [ent(10, 18, "PER")])) == [
        ("missed", (0, 10, "PER"), None), ("spurious", None, (10, 18, "PER"))]


def test_hallucinated_mentions_are_spurious_without_a_span() -> None:
    m = Mention("ORG", "Globex")
    got = align([JOHN_SMITH], [JOHN_SMITH], [m, m])
    assert summary(got) == [("correct", (0, 10, "PER"), (0, 10, "PER")),
                            ("spurious", None, ("ORG", "Globex")), ("spurious", None, ("ORG", "Globex"))]
    assert got[-1].to_dict() == {"category": "spurious", "gold": None, "predicted": {"label": "ORG", "text": "Globex"}}


def test_empty_examples() -> None:
    assert align([], []) == []
    assert summary(align([], [ACME_CORP])) == [("spurious", None, (38, 47, "ORG"))]
    assert summary(align([ACME_CORP], [])) == [("missed", (38, 47, "ORG"), None)]


def test_duplicates_count_once() -> None:
    got = align([JOHN_SMITH, JOHN_SMITH], [ent(0, 4, "PER"), ent(0, 4, "PER")])
    assert summary(got) == [("boundary", (0, 10, "PER"), (0, 4, "PER"))]


def test_one_to_one_alignment_of_a_split_mention() -> None:
    """Two predictions over one gold entity: the larger overlap is the boundary error, the other is spurious."""
    got = align([NEW_YORK_CITY], [ent(19, 22, "LOC"), ent(23, 32, "LOC")])  # "New", "York City"
    assert summary(got) == [("spurious", None, (19, 22, "LOC")), ("boundary", (19, 32, "LOC"), (23, 32, "LOC"))]


def test_the_tiers_prefer_exact_then_same_span_then_the_same_label() -> None:
    # exact match first, even when another prediction has the same span
    assert summary(align([JOHN_SMITH], [ent(0, 10, "ORG"), ent(0, 10, "PER")])) == [
        ("spurious", None, (0, 10, "ORG")), ("correct", (0, 10, "PER"), (0, 10, "PER"))]  # sorted by span, label
    # the same span with another label before an overlap with the same label
    assert summary(align([JOHN_SMITH], [ent(0, 4, "PER"), ent(0, 10, "ORG")])) == [
        ("spurious", None, (0, 4, "PER")), ("wrong_type", (0, 10, "PER"), (0, 10, "ORG"))]
    # an overlap with the same label before a larger overlap with another label
    assert summary(align([NEW_YORK_CITY], [ent(19, 31, "ORG"), ent(28, 32, "LOC")])) == [
        ("spurious", None, (19, 31, "ORG")), ("boundary", (19, 32, "LOC"), (28, 32, "LOC"))]
    # two gold entities competing for one prediction: the larger overlap wins
    assert summary(align([ent(0, 4, "PER"), ent(5, 10, "PER")], [ent(2, 10, "PER")])) == [
        ("missed", (0, 4, "PER"), None), ("boundary", (5, 10, "PER"), (2, 10, "PER"))]


NESTED = "北京大学的学生"
UNIVERSITY = ent(0, 4, "organization", NESTED)
BEIJING = ent(0, 2, "address", NESTED)


def test_nested_gold_entities() -> None:
    """CLUENER nests an address in an organization: one prediction can only account for one of them."""
    assert summary(align([UNIVERSITY, BEIJING], [UNIVERSITY])) == [
        ("missed", (0, 2, "address"), None), ("correct", (0, 4, "organization"), (0, 4, "organization"))]
    assert summary(align([UNIVERSITY, BEIJING], [BEIJING])) == [
        ("correct", (0, 2, "address"), (0, 2, "address")), ("missed", (0, 4, "organization"), None)]
    both = align([UNIVERSITY, BEIJING], [ent(0, 3, "address", NESTED), ent(1, 4, "organization", NESTED)])
    assert summary(both) == [("boundary", (0, 2, "address"), (0, 3, "address")),
                             ("boundary", (0, 4, "organization"), (1, 4, "organization"))]


def test_nested_predictions() -> None:
    got = align([UNIVERSITY], [UNIVERSITY, BEIJING, ent(0, 4, "company", NESTED)])
    assert summary(got) == [("spurious", None, (0, 2, "address")), ("spurious", None, (0, 4, "company")),
                            ("correct", (0, 4, "organization"), (0, 4, "organization"))]


def test_analysis_counts_the_matrix_and_the_markdown() -> None:
    an = ErrorAnalysis(["PER", "LOC", "ORG"])
    an.add_example([JOHN_SMITH, NEW_YORK_CITY], [ent(0, 4, "PER"), ent(19, 32, "ORG")], [Mention("ORG", "Globex")])
    an.add_example([ACME_CORP], [ACME_CORP])
    an.add_example([], [])
    an.add_example([JOHN_SMITH], [ent(0, 10, "MISC")])  # a label outside the fixed list
    assert an.labels == ["PER", "LOC", "ORG", "MISC", NONE]
    assert an.categories == {"correct": 1, "wrong_type": 2, "boundary": 1, "wrong_type_and_boundary": 0,
                             "missed": 0, "spurious": 1}
    assert an.errors == 4 and (an.examples, an.with_errors) == (4, 2)
    assert an.matrix() == [
        [1, 0, 0, 1, 0],  # PER: a boundary error, a PER read as MISC
        [0, 0, 1, 0, 0],  # LOC read as ORG
        [0, 0, 1, 0, 0],  # ORG correct
        [0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],  # the hallucinated ORG
    ]
    assert an.by_label()["ORG"] == {"correct": 1, "wrong_type": 0, "boundary": 0, "wrong_type_and_boundary": 0,
                                    "missed": 0, "spurious": 1}
    d = an.to_dict()
    assert d["confusion"]["labels"] == an.labels and d["confusion"]["matrix"] == an.matrix()
    assert d["categories"] == an.categories and d["examples_with_errors"] == 2
    md = an.to_markdown()
    assert "| **all** | 1 | 2 | 1 | 0 | 0 | 1 |" in md
    assert "| LOC | 0 | 0 | 1 | 0 | 0 |" in md  # the matrix row
    assert "- examples with errors: 2 of 4" in md


ALPHABET = "abcdefghijklmnopqrstuvwxyz"
LABELS = st.sampled_from(["A", "B", "C"])


@st.composite
def entity(draw: st.DrawFn) -> Entity:
    start = draw(st.integers(0, 12))
    return Entity.at(ALPHABET, start, draw(st.integers(start + 1, start + 6)), draw(LABELS))


@st.composite
def example(draw: st.DrawFn) -> tuple[list[Entity], list[Entity], list[Mention]]:
    gold = draw(st.lists(entity(), max_size=6))
    pred = draw(st.lists(entity(), max_size=6))
    if draw(st.booleans()):  # predictions near the gold ones: shifted, relabelled, duplicated
        pred += [Entity.at(ALPHABET, max(0, g.start - draw(st.integers(0, 1))), g.end, draw(LABELS)) for g in gold]
    hallucinated = draw(st.lists(st.builds(Mention, LABELS, st.just("zz")), max_size=2))
    return gold, pred, hallucinated


def _overlap(a: Entity, b: Entity) -> bool:
    return max(a.start, b.start) < min(a.end, b.end)


@settings(max_examples=300, deadline=None)
@given(st.lists(example(), min_size=1, max_size=4))
def test_invariants_against_the_strict_scorer(examples) -> None:
    an, scorer = ErrorAnalysis(["A", "B", "C"]), Scorer(["A", "B", "C"])
    for gold, pred, hallucinated in examples:
        got = an.add_example(gold, pred, hallucinated)
        scorer.add(gold, pred, hallucinated=[m.label for m in hallucinated])
        # every unique entity exactly once
        assert Counter(a.gold.key for a in got if a.gold) == Counter({e.key: 1 for e in gold})
        assert Counter(a.pred.key for a in got if isinstance(a.pred, Entity)) == Counter({e.key: 1 for e in pred})
        assert sum(isinstance(a.pred, Mention) for a in got) == len(hallucinated)
        for a in got:  # each category means what it says
            g, p = a.gold, a.pred
            if a.category is Category.CORRECT:
                assert g.key == p.key
            elif a.category is Category.WRONG_TYPE:
                assert (g.start, g.end) == (p.start, p.end) and g.label != p.label
            elif a.category is Category.BOUNDARY:
                assert (g.start, g.end) != (p.start, p.end) and _overlap(g, p) and g.label == p.label
            elif a.category is Category.WRONG_TYPE_AND_BOUNDARY:
                assert (g.start, g.end) != (p.start, p.end) and _overlap(g, p) and g.label != p.label
            else:
                assert (g is None) == (a.category is Category.SPURIOUS) and (p is None) == (a.category is Category.MISSED)
        # nothing left over could have been aligned: no missed gold overlaps a spurious prediction
        missed = [a.gold for a in got if a.category is Category.MISSED]
        spurious = [a.pred for a in got if a.category is Category.SPURIOUS and isinstance(a.pred, Entity)]
        assert not any(_overlap(g, p) for g in missed for p in spurious)
    report = scorer.report()
    labels, matrix = an.labels, an.matrix()
    assert matrix[-1][-1] == 0
    for i, label in enumerate(labels[:-1]):
        s = report.labels[label]
        correct = an.by_label()[label]["correct"]
        assert correct == s.tp
        assert sum(matrix[i]) == s.support  # the row: every gold entity of the label
        assert sum(row[i] for row in matrix) == s.tp + s.fp  # the column: every prediction of the label
    assert an.categories["correct"] == report.micro.tp
    assert an.errors == report.micro.fp + report.micro.fn - sum(  # a pair is one error for a fp and a fn
        n for c, n in an.categories.items() if c in ("wrong_type", "boundary", "wrong_type_and_boundary"))
