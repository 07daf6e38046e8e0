"""`nerve eval` on the tiny model: the predictions file, the error analysis and the HTML page it leaves beside the
report, checked against the report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nerve.ner.scoring import LabelScore


def nerve(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nerve.cli", *args], capture_output=True, text=True, timeout=timeout)


ROWS = [  # CLUENER JSONL
    {"text": "彭小军认为，国内银行现在走的是台湾的发卡模式",
     "label": {"name": {"彭小军": [[0, 2]]}, "address": {"台湾": [[15, 16]]}}},
    {"text": "温格的球队终于又踢了一场经典的比赛", "label": {"name": {"温格": [[0, 1]]}}},
    {"text": "北京大学的学生在上海参加了比赛",
     "label": {"organization": {"北京大学": [[0, 3]]}, "address": {"上海": [[8, 9]]}}},
    {"text": "<script>alert(1)</script> 张三在腾讯工作",
     "label": {"name": {"张三": [[26, 27]]}, "company": {"腾讯": [[29, 30]]}}},
    {"text": "今天天气很好", "label": {}},
]


def write_gold(tmp_path: Path) -> Path:
    data = tmp_path / "gold.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n", encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, qwen_dir: Path) -> Path:
    """The tiny random Qwen2 of the shared ``tiny_qwen_dir`` fixture, built with seed 4: those random weights
    predict entities (seed 0's predict none), overlapping and mislabelled ones, so the error categories and the
    page's marks have something to show."""
    from tests.helpers import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-qwen-seed4"), qwen_dir, task="cluener", seed=4)


def check_categories_against_the_scores(report: dict) -> None:
    """Every gold entity not correct is a false negative, every prediction not correct a false positive."""
    c, micro = report["errors"]["categories"], report["micro"]
    paired = c["wrong_type"] + c["boundary"] + c["wrong_type_and_boundary"]
    assert (c["correct"], paired + c["missed"], paired + c["spurious"]) == (micro["tp"], micro["fn"], micro["fp"])


def test_html_examples_must_not_be_negative(tmp_path: Path) -> None:
    proc = nerve("eval", "--data", str(write_gold(tmp_path)), "--model", str(tmp_path), "--html-examples", "-1")
    assert proc.returncode == 2 and "--html-examples" in proc.stderr


@pytest.mark.engine
def test_eval_writes_predictions_errors_and_a_page_that_agree_with_the_report(tiny_dir: Path, tmp_path: Path) -> None:
    data, out = write_gold(tmp_path), tmp_path / "reports"
    common = ("eval", "--model", str(tiny_dir), "--data", str(data), "--format", "cluener", "--out", str(out))
    proc = nerve(*common, "--name", "tiny", "--grounded", "--html-examples", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = ["tiny.json", "tiny.md", "tiny.png", "tiny.confusion.png", "tiny.threshold.png", "tiny.predictions.jsonl",
             "tiny.html"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no partial file left
    printed = "".join(proc.stderr.split())
    assert all(str(out / n) in printed for n in names), proc.stderr

    report = json.loads((out / "tiny.json").read_text(encoding="utf-8"))
    assert len(report["curve"]) == 100 and report["curve"][0]["predicted"] == report["predicted"]  # scored entities
    assert "best score threshold" in (out / "tiny.md").read_text(encoding="utf-8")
    records = [json.loads(line) for line in (out / "tiny.predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in records] == list(range(len(ROWS))) and report["examples"] == len(ROWS)
    assert [r["text"] for r in records] == [r["text"] for r in ROWS]
    gold = [sorted((e["start"], e["end"], e["label"]) for e in r["gold"]) for r in records]
    assert gold == [sorted((s, e + 1, label) for label, spans in r["label"].items() for v in spans.values()
                           for s, e in v) for r in ROWS]
    for r in records:  # grounded decoding: every prediction is a span of its text
        assert r["hallucinated"] == []
        assert all(r["text"][e["start"]:e["end"]] == e["text"] for e in r["predicted"])
    assert sum(len(r["predicted"]) for r in records) > 0, "the tiny model predicted nothing: build it with another seed"

    # the error categories and the confusion matrix in the report are those of the records
    errors = report["errors"]
    counts = Counter(e["category"] for r in records for e in r["gold"])
    counts["spurious"] += sum(e["category"] == "spurious" for r in records for e in r["predicted"])
    assert errors["categories"] == {c: counts[c] for c in errors["categories"]}
    assert sum(errors["categories"].values()) - errors["categories"]["correct"] == \
        sum(len(r["errors"]) for r in records)
    labels = errors["confusion"]["labels"]
    cells: Counter[tuple[str, str]] = Counter()
    for r in records:
        cells.update((e["label"], e["label"]) for e in r["gold"] if e["category"] == "correct")
        cells.update((x["gold"]["label"] if x["gold"] else "(none)", x["predicted"]["label"] if x["predicted"] else
                      "(none)") for x in r["errors"])
    assert errors["confusion"]["matrix"] == [[cells[g, p] for p in labels] for g in labels]
    check_categories_against_the_scores(report)

    # the strict scores recomputed from the records are the report's
    tp, fp, fn = Counter(), Counter(), Counter()
    for r in records:
        g = {(e["start"], e["end"], e["label"]) for e in r["gold"]}
        p = {(e["start"], e["end"], e["label"]) for e in r["predicted"]}
        tp.update(k[2] for k in g & p)
        fp.update(k[2] for k in p - g)
        fn.update(k[2] for k in g - p)
    micro = LabelScore.from_counts(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    assert micro.f1 == pytest.approx(report["micro"]["f1"], abs=1e-12)
    assert (micro.tp, micro.fp, micro.fn) == (report["micro"]["tp"], report["micro"]["fp"], report["micro"]["fn"])
    for label, s in report["labels"].items():
        assert (tp[label], fp[label], fn[label]) == (s["tp"], s["fp"], s["fn"]), label

    # the page: two examples, those with errors first, every entity of them marked, every text escaped
    html = (out / "tiny.html").read_text(encoding="utf-8")
    wrong = [r for r in records if r["errors"] or not r["parsed"]]
    first = (wrong + [r for r in records if r not in wrong])[:2]
    assert [int(i) for i in re.findall(r'<section class="example [a-z]+" data-index="(\d+)"', html)] == \
        [r["index"] for r in first]
    assert html.count('<mark class="ent') == sum(len(r["gold"]) + len(r["predicted"]) for r in first)
    assert f"of {len(ROWS)} examples ({min(2, len(wrong))} of {len(wrong)} with errors)" in html
    assert "<script>alert(1)" not in html and html.count("<script>") == 1
    assert f'{report["micro"]["f1"]:.4f}' in html
    md = (out / "tiny.md").read_text(encoding="utf-8")
    assert "## Errors" in md and "| gold \\ predicted |" in md

    # free decoding: the mentions the text does not contain are spurious predictions of their labels
    proc = nerve(*common, "--name", "bare", "--no-predictions", "--no-html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("bare*")) == ["bare.confusion.png", "bare.json", "bare.md", "bare.png",
                                                          "bare.threshold.png"]
    report = json.loads((out / "bare.json").read_text(encoding="utf-8"))
    assert report["errors"]["examples"] == len(ROWS) and report["hallucinated"] > 0
    assert report["errors"]["categories"]["spurious"] >= report["hallucinated"]
    check_categories_against_the_scores(report)
