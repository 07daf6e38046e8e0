"""Strict span-level scoring: hand-computed cases and a cross-check against seqeval on CoNLL-2003 testa."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nerve.ner.readers import entities_to_tags, read_dataset, token_offsets
from nerve.ner.readers.conll import entities_to_spans
from nerve.ner.scoring import LabelScore, Scorer, score
from nerve.ner.types import Entity, Example

TEXT = "John Smith visited Paris and Berlin with Acme Corp staff"


def ent(start: int, end: int, label: str) -> Entity:
    return Entity.at(TEXT, start, end, label)


JOHN = ent(0, 10, "PER")
PARIS = ent(19, 24, "LOC")
BERLIN = ent(29, 35, "LOC")
ACME = ent(41, 50, "ORG")
GOLD = [JOHN, PARIS, BERLIN]


def approx(score_: LabelScore, precision: float, recall: float, f1: float) -> None:
    assert (score_.precision, score_.recall, score_.f1) == pytest.approx((precision, recall, f1), abs=1e-12)


def test_perfect() -> None:
    r = score([GOLD], [list(reversed(GOLD))])
    approx(r.micro, 1, 1, 1)
    approx(r.macro, 1, 1, 1)
    assert list(r.labels) == ["LOC", "PER"]
    assert r.labels["LOC"] == LabelScore(1.0, 1.0, 1.0, support=2, tp=2, fp=0, fn=0)
    assert (r.exact_match, r.parse_rate, r.hallucination_rate) == (1.0, 1.0, 0.0)
    assert (r.examples, r.exact, r.gold, r.predicted) == (1, 1, 3, 3)


def test_empty_gold() -> None:
    r = score([[]], [[ent(0, 4, "PER")]])
    assert r.micro == LabelScore(0.0, 0.0, 0.0, support=0, tp=0, fp=1, fn=0)
    assert r.labels == {"PER": r.micro}
    assert r.macro == r.micro  # PER has predictions, so it counts in the macro mean
    assert r.exact_match == 0.0


def test_empty_pred() -> None:
    r = score([GOLD], [[]])
    assert r.micro == LabelScore(0.0, 0.0, 0.0, support=3, tp=0, fp=0, fn=3)
    assert r.labels["LOC"].fn == 2 and r.labels["PER"].fn == 1
    assert r.exact_match == 0.0


def test_both_empty() -> None:
    r = score([[], []], [[], []])
    assert r.labels == {}
    assert r.micro == r.macro == LabelScore(0.0, 0.0, 0.0, support=0, tp=0, fp=0, fn=0)
    assert r.exact_match == 1.0  # the empty prediction is exactly right
    assert r.hallucination_rate == 0.0


def test_no_examples() -> None:
    r = Scorer().report()
    assert (r.examples, r.exact_match, r.parse_rate, r.hallucination_rate) == (0, 0.0, 0.0, 0.0)


def test_duplicate_predictions_count_once() -> None:
    scorer = Scorer()
    scorer.add(GOLD, [JOHN, JOHN, PARIS, ent(0, 4, "PER"), ent(0, 4, "PER")])
    r = scorer.report()
    assert (r.micro.tp, r.micro.fp, r.micro.fn) == (2, 1, 1)
    approx(r.micro, 2 / 3, 2 / 3, 2 / 3)
    assert r.predicted == 3
    assert r.predicted_raw == 5  # raw count keeps the duplicates
    # Duplicates in gold count once too.
    assert score([[JOHN, JOHN]], [[JOHN]]).micro == LabelScore(1.0, 1.0, 1.0, support=1, tp=1, fp=0, fn=0)


def test_label_mismatch() -> None:
    r = score([[JOHN]], [[ent(0, 10, "ORG")]])
    assert r.labels["PER"] == LabelScore(0.0, 0.0, 0.0, support=1, tp=0, fp=0, fn=1)
    assert r.labels["ORG"] == LabelScore(0.0, 0.0, 0.0, support=0, tp=0, fp=1, fn=0)
    assert (r.micro.tp, r.micro.fp, r.micro.fn) == (0, 1, 1)


def test_boundary_mismatch() -> None:
    r = score([[JOHN, PARIS]], [[ent(0, 4, "PER"), ent(18, 24, "LOC")]])
    assert (r.micro.tp, r.micro.fp, r.micro.fn) == (0, 2, 2)
    assert r.labels["PER"].fp == 1 and r.labels["PER"].fn == 1
    assert r.exact_match == 0.0


def test_micro_vs_macro() -> None:
    # PER: tp 1 -> P = R = F1 = 1.  LOC: tp 1, fp 1, fn 3 -> P 1/2, R 1/4, F1 1/3.
    scorer = Scorer()
    scorer.add([JOHN, PARIS, BERLIN], [JOHN, PARIS, ent(25, 28, "LOC")])
    scorer.add([ent(0, 4, "LOC"), ent(5, 10, "LOC")], [])
    r = scorer.report()
    approx(r.labels["PER"], 1, 1, 1)
    approx(r.labels["LOC"], 1 / 2, 1 / 4, 1 / 3)
    approx(r.micro, 2 / 3, 2 / 5, 1 / 2)
    approx(r.macro, 3 / 4, 5 / 8, 2 / 3)
    assert (r.macro.support, r.macro.tp, r.macro.fp, r.macro.fn) == (5, 2, 1, 3)
    assert (r.exact, r.exact_match) == (0, 0.0)


def test_fixed_labels() -> None:
    scorer = Scorer(labels=["PER", "LOC", "ORG"])
    scorer.add([JOHN], [JOHN, ent(19, 24, "CITY")])
    r = scorer.report()
    assert list(r.labels) == ["PER", "LOC", "ORG", "CITY"]
    assert r.unknown_labels == ("CITY",)
    assert r.labels["ORG"] == LabelScore(0.0, 0.0, 0.0, support=0, tp=0, fp=0, fn=0)
    # Macro averages PER and CITY only (LOC and ORG have neither gold nor predictions).
    approx(r.macro, 1 / 2, 1 / 2, 1 / 2)
    approx(r.micro, 1 / 2, 1, 2 / 3)
    assert "CITY" in r.to_markdown()


def test_exact_match_and_parse_rate() -> None:
    scorer = Scorer()
    scorer.add(GOLD, GOLD)
    scorer.add([], [])
    scorer.add(GOLD, GOLD[:2])
    scorer.add(GOLD, [], parsed=False)
    r = scorer.report()
    assert (r.examples, r.exact, r.parsed) == (4, 2, 3)
    assert r.exact_match == 0.5
    assert r.parse_rate == 0.75
    assert len(scorer) == 4


def test_hallucination_rate() -> None:
    scorer = Scorer()
    scorer.add(GOLD, [JOHN, ACME], hallucinated=1)
    scorer.add(GOLD, [PARIS, PARIS], hallucinated=2, predicted_raw=6)
    scorer.add(GOLD, [], parsed=False)
    r = scorer.report()
    assert (r.hallucinated, r.predicted) == (3, 3)  # grounded predictions are counted once each
    assert r.hallucination_rate == 0.5
    assert r.predicted_raw == 3 + 6
    assert score([GOLD], [GOLD]).hallucination_rate == 0.0
    only = Scorer()
    only.add(GOLD, [], hallucinated=4)
    assert only.report().hallucination_rate == 1.0
    with pytest.raises(ValueError, match="hallucinated"):
        only.add(GOLD, [], hallucinated=-1)
    with pytest.raises(ValueError, match="predicted_raw"):
        only.add(GOLD, [], predicted_raw=-1)


def test_report_serialisation() -> None:
    scorer = Scorer(labels=["PER", "LOC"])
    scorer.add(GOLD, [JOHN, PARIS], hallucinated=1)
    r = scorer.report()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["micro"] == {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3, "tp": 2, "fp": 0, "fn": 1}
    assert list(d["labels"]) == ["PER", "LOC"]
    assert d["hallucination_rate"] == pytest.approx(1 / 3)
    assert d["unknown_labels"] == []
    md = r.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "| label | precision | recall | f1 | support | tp | fp | fn |"
    assert "| PER | 1.0000 | 1.0000 | 1.0000 | 1 | 1 | 0 | 0 |" in lines
    assert "| LOC | 1.0000 | 0.5000 | 0.6667 | 2 | 1 | 0 | 1 |" in lines
    assert "| **micro** | 1.0000 | 0.6667 | 0.8000 | 3 | 2 | 0 | 1 |" in lines
    assert "- exact match: 0.0000 (0 of 1)" in lines
    assert "- hallucination rate: 0.3333 (1 of 3 predictions)" in lines
    assert "| PER | 1.00 |" in r.to_markdown(digits=2)


def test_score_requires_paired_inputs() -> None:
    with pytest.raises(ValueError):
        score([GOLD, GOLD], [GOLD])


# --- cross-check against seqeval -------------------------------------------------------------------------


def _perturb(examples: list[Example]) -> list[list[Entity]]:
    """Deterministic predictions: drop every 7th entity, move the end of every 5th by one token (one token
    further when that token is outside every gold entity, else one token back), relabel every 11th."""
    labels = sorted({e.label for ex in examples for e in ex.entities})
    preds: list[list[Entity]] = []
    n = 0
    for ex in examples:
        offsets = token_offsets(ex.text.split(" "))
        gold_spans = entities_to_spans(offsets, ex.entities)
        covered = {i for start, end, _ in gold_spans for i in range(start, end)}
        pred = []
        for start, end, label in gold_spans:
            n += 1
            if n % 7 == 0:
                continue
            if n % 5 == 0:
                if end < len(offsets) and end not in covered:
                    end += 1
                elif end - start > 1:
                    end -= 1
            if n % 11 == 0:
                label = labels[(labels.index(label) + 1) % len(labels)]
            pred.append(Entity.at(ex.text, offsets[start][0], offsets[end - 1][1], label))
        preds.append(pred)
    return preds


def test_matches_seqeval_on_conll_testa(datasets_dir: Path) -> None:
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    path = datasets_dir / "conll2003" / "eng.testa"
    if not path.exists():
        pytest.skip(f"{path} is absent from the shared datasets")
    examples = read_dataset(path)
    preds = _perturb(examples)

    y_true, y_pred = [], []
    for ex, pred in zip(examples, preds, strict=True):
        offsets = token_offsets(ex.text.split(" "))
        y_true.append(entities_to_tags(offsets, ex.entities, "iob2"))
        y_pred.append(entities_to_tags(offsets, pred, "iob2"))

    ours = score([ex.entities for ex in examples], preds)
    theirs = classification_report(y_true, y_pred, output_dict=True, mode=None)

    assert 0.5 < ours.micro.f1 < 0.95  # the perturbation bites, but not everywhere
    assert set(ours.labels) == {"LOC", "MISC", "ORG", "PER"}
    for name, s in ours.labels.items():
        t = theirs[name]
        assert s.precision == pytest.approx(t["precision"], abs=1e-9)
        assert s.recall == pytest.approx(t["recall"], abs=1e-9)
        assert s.f1 == pytest.approx(t["f1-score"], abs=1e-9)
        assert s.support == t["support"]
    for ours_avg, key in ((ours.micro, "micro avg"), (ours.macro, "macro avg")):
        t = theirs[key]
        assert ours_avg.precision == pytest.approx(t["precision"], abs=1e-9)
        assert ours_avg.recall == pytest.approx(t["recall"], abs=1e-9)
        assert ours_avg.f1 == pytest.approx(t["f1-score"], abs=1e-9)
        assert ours_avg.support == t["support"]
    assert ours.micro.precision == pytest.approx(precision_score(y_true, y_pred), abs=1e-9)
    assert ours.micro.recall == pytest.approx(recall_score(y_true, y_pred), abs=1e-9)
    assert ours.micro.f1 == pytest.approx(f1_score(y_true, y_pred), abs=1e-9)
    assert ours.micro.support == 5942
    assert ours.exact_match == sum(
        {e.key for e in ex.entities} == {e.key for e in p} for ex, p in zip(examples, preds, strict=True)
    ) / len(examples)


def test_hallucinated_labels_are_false_positives() -> None:
    text = "Alice met Bob"
    gold = [Entity.at(text, 0, 5, "PER"), Entity.at(text, 10, 13, "PER")]
    pred = [Entity.at(text, 0, 5, "PER")]
    scorer = Scorer(labels=["PER", "LOC"])
    scorer.add(gold, pred, hallucinated=["PER", "LOC"])
    r = scorer.report()
    assert (r.labels["PER"].tp, r.labels["PER"].fp, r.labels["PER"].fn) == (1, 1, 1)
    assert r.labels["LOC"].fp == 1
    assert r.micro.precision == pytest.approx(1 / 3)
    assert r.hallucinated == 2 and r.predicted == 1
    assert r.hallucination_rate == pytest.approx(2 / 3)
    assert r.exact_match == 0.0


def _scored(start: int, end: int, label: str, s: float | None) -> Entity:
    return Entity(start, end, label, TEXT[start:end], score=s)


def test_threshold_curve_counts_predictions_at_or_above_each_threshold() -> None:
    from nerve.ner.scoring import CURVE_THRESHOLDS

    gold = [ent(0, 10, "PER"), ent(19, 24, "LOC"), ent(29, 35, "LOC")]
    pred = [_scored(0, 10, "PER", 0.95), _scored(19, 24, "LOC", 0.42), _scored(41, 50, "ORG", 0.30),
            _scored(0, 10, "PER", 0.20)]  # a duplicate counts once, with its best score
    scorer = Scorer(["PER", "LOC", "ORG"])
    scorer.add(gold, pred, hallucinated=["LOC"], hallucinated_scores=[0.6])
    rep = scorer.report()
    assert [p.threshold for p in rep.curve] == list(CURVE_THRESHOLDS)
    zero = rep.curve[0]
    assert (zero.precision, zero.recall, zero.predicted) == (rep.micro.precision, rep.micro.recall, 4)
    at = {p.threshold: p for p in rep.curve}
    assert (at[0.3].predicted, at[0.31].predicted) == (4, 3)  # the ORG at 0.30 is kept at 0.30, not above
    assert at[0.5].predicted == 2 and at[0.5].precision == pytest.approx(1 / 2) and at[0.5].recall == pytest.approx(1 / 3)
    assert at[0.7].precision == 1.0 and at[0.7].recall == pytest.approx(1 / 3)
    assert rep.at_threshold(0.555) is at[0.55]
    assert [p.predicted for p in rep.curve] == sorted((p.predicted for p in rep.curve), reverse=True)
    assert "best score threshold" in rep.to_markdown()
    assert rep.to_dict()["curve"][0]["predicted"] == 4


def test_no_curve_when_any_prediction_has_no_score() -> None:
    scorer = Scorer()
    scorer.add([ent(0, 10, "PER")], [_scored(0, 10, "PER", 0.9), _scored(19, 24, "LOC", None)])
    assert scorer.report().curve == ()
    unscored_hallucination = Scorer()
    unscored_hallucination.add([ent(0, 10, "PER")], [_scored(0, 10, "PER", 0.9)], hallucinated=["LOC"])
    assert unscored_hallucination.report().curve == ()
    assert score([[ent(0, 10, "PER")]], [[ent(0, 10, "PER")]]).curve == ()
