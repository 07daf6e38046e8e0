"""What `nerve eval` leaves behind, without a model: the predictions file, the report's error analysis and the
HTML page, rendered in a real headless browser (chromium through chromedriver, `make chromium`)."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from nerve.eval_page import TEMPLATE, Mark, Segment, lanes, render_page, write_page
from nerve.ner.parsing import Mention
from nerve.ner.scoring import Scorer
from nerve.ner.types import Entity, Example
from nerve.predictions import ErrorsFirst, EvalSink, PredictionsWriter, has_errors, read_predictions
from nerve.reports import write_report

ROOT = Path(__file__).resolve().parents[2]
EN = "John Smith visited New York City with Acme Corp staff"
ZH = "北京大学的学生在上海"
XSS = "<script>alert('x')</script> Bob & Alice"
LABELS = ["PER", "LOC", "ORG", "MISC", "organization", "address", "company"]


def ent(text: str, start: int, end: int, label: str) -> Entity:
    return Entity.at(text, start, end, label)


CASES = [  # (gold example, predictions, hallucinated, parsed)
    (Example(EN, [ent(EN, 0, 10, "PER"), ent(EN, 19, 32, "LOC"), ent(EN, 38, 47, "ORG")], "en-1"),
     [ent(EN, 0, 4, "PER"), ent(EN, 19, 32, "ORG"), ent(EN, 38, 47, "ORG"), ent(EN, 11, 18, "MISC")],
     [Mention("ORG", "Globex")], True),
    (Example(ZH, [ent(ZH, 0, 4, "organization"), ent(ZH, 0, 2, "address"), ent(ZH, 8, 10, "address")], "zh-1"),
     [ent(ZH, 0, 4, "organization"), ent(ZH, 1, 4, "company"), ent(ZH, 8, 10, "address")], [], True),
    (Example(XSS, [ent(XSS, 28, 31, "PER")], "<b>id</b>"), [ent(XSS, 28, 31, "PER")], [], True),
    (Example(XSS, [ent(XSS, 34, 39, "PER")]), [], [], False),
    (Example("nothing to see", []), [], [], True),
]


def run_cases(tmp_path: Path, order: list[int], *, page_examples: int = 10) -> tuple[EvalSink, Scorer, Path]:
    """Feed CASES to a sink in ``order`` (as results arrive out of order) and to the strict scorer."""
    path = tmp_path / "run.predictions.jsonl"
    scorer = Scorer(LABELS)
    with EvalSink(LABELS, predictions=path, page_examples=page_examples) as sink:
        for i in order:
            ex, pred, hallucinated, parsed = CASES[i]
            sink.add(i, ex, pred, parsed=parsed, hallucinated=hallucinated)
            scorer.add(ex.entities, pred, parsed=parsed, hallucinated=[m.label for m in hallucinated])
    return sink, scorer, path


# -- layout of overlapping spans --------------------------------------------------------------------------------


def mark(label: str) -> Mark:
    return Mark(label, "", "correct", "")


def test_lanes_keep_every_span_once_and_the_text_whole() -> None:
    text = "北京大学的学生在上海"
    spans = [(0, 4, mark("organization")), (0, 2, mark("address")), (1, 4, mark("company")), (8, 10, mark("address"))]
    lines = lanes(text, spans)
    assert len(lines) == 3  # the university above the nested city, the overlapping company on a third line
    for line in lines:
        assert "".join(s.text for s in line) == text
    placed = [(s.text, s.mark.label) for line in lines for s in line if s.mark is not None]
    assert Counter(placed) == Counter([("北京大学", "organization"), ("北京", "address"), ("京大学", "company"),
                                       ("上海", "address")])
    assert lines[0] == [Segment("北京大学", spans[0][2]), Segment("的学生在"), Segment("上海", spans[3][2])]


def test_lanes_without_spans_and_with_bad_ones() -> None:
    assert lanes("abc", []) == [[Segment("abc")]]
    assert lanes("", []) == [[Segment("")]]
    assert lanes("abc", [(0, 3, mark("X"))]) == [[Segment("abc", mark("X"))]]
    with pytest.raises(ValueError, match="outside a text of 3 characters"):
        lanes("abc", [(2, 5, mark("X"))])


# -- the predictions file ---------------------------------------------------------------------------------------


def test_writer_puts_records_in_run_order_and_finishes_the_file_on_close(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    w = PredictionsWriter(path)
    for i in (2, 0, 3, 1, 4):
        w.write({"index": i})
        assert not path.exists()  # lines go to the partial file until the run is complete
    assert w.written == 5 and w.partial.exists()  # nothing waits once the gap is filled
    w.close()
    assert [r["index"] for r in read_predictions(path)] == [0, 1, 2, 3, 4]
    assert not w.partial.exists() and w.out_of_order == 0
    with pytest.raises(ValueError, match="closed"):
        w.write({"index": 5})


def test_writer_buffer_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionsWriter(path, max_pending=2) as w:
        for i in (5, 4, 3, 2, 1, 0):  # index 0 comes last: the buffer overflows
            w.write({"index": i})
            assert len(w._pending) <= 2
    got = [r["index"] for r in read_predictions(path)]
    assert sorted(got) == [0, 1, 2, 3, 4, 5] and got != sorted(got) and w.out_of_order == 1


def test_writer_deletes_the_partial_file_when_the_run_fails(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("an earlier run\n")
    with pytest.raises(RuntimeError), PredictionsWriter(path) as w:
        w.write({"index": 0})
        raise RuntimeError("engine died")
    assert path.read_text() == "an earlier run\n" and not w.partial.exists()


def test_read_predictions_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"index": 0}\n\n[1]\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:3: expected a JSON object"):
        list(read_predictions(path))


def test_records_agree_with_the_scorer_and_the_analysis(tmp_path: Path) -> None:
    sink, scorer, path = run_cases(tmp_path, [4, 2, 0, 3, 1])
    records = list(read_predictions(path))
    assert [r["index"] for r in records] == list(range(len(CASES)))
    first = records[0]
    assert first["id"] == "en-1" and first["text"] == EN and first["parsed"] is True
    assert [(e["text"], e["category"]) for e in first["gold"]] == [
        ("John Smith", "boundary"), ("New York City", "wrong_type"), ("Acme Corp", "correct")]
    assert [(e["text"], e["category"]) for e in first["predicted"]] == [
        ("John", "boundary"), ("visited", "spurious"), ("New York City", "wrong_type"), ("Acme Corp", "correct")]
    assert first["hallucinated"] == [{"label": "ORG", "text": "Globex"}]
    assert Counter(e["category"] for e in first["errors"]) == {"boundary": 1, "wrong_type": 1, "spurious": 2}
    assert {"category": "spurious", "gold": None, "predicted": {"label": "ORG", "text": "Globex"}} in first["errors"]
    assert records[3]["parsed"] is False and [e["category"] for e in records[3]["gold"]] == ["missed"]
    assert [has_errors(r) for r in records] == [True, True, False, True, False]
    # the file holds the analysis: category counts and the strict scores can be recomputed from it (every
    # category but spurious has a gold entity; spurious ones are predictions, grounded or not)
    counts = Counter(e["category"] for r in records for e in r["gold"])
    counts["spurious"] += sum(e["category"] == "spurious" for r in records for e in r["predicted"])
    counts["spurious"] += sum(len(r["hallucinated"]) for r in records)
    assert {k: counts[k] for k in sink.analysis.categories} == sink.analysis.categories
    report = scorer.report()
    tp = sum(e["category"] == "correct" for r in records for e in r["gold"])
    fp = sum(len(r["predicted"]) + len(r["hallucinated"]) for r in records) - tp
    fn = sum(len(r["gold"]) for r in records) - tp
    assert (tp, fp, fn) == (report.micro.tp, report.micro.fp, report.micro.fn)


def test_errors_first_sample_is_bounded_and_in_run_order() -> None:
    sample = ErrorsFirst(3)
    records = [{"index": i, "errors": [{}] if i % 3 == 0 else [], "parsed": True} for i in range(10)]
    for r in reversed(records):
        sample.add(r)
        assert sum(map(len, sample._heaps)) <= 6
    assert [r["index"] for r in sample.records()] == [0, 3, 6]
    assert (sample.seen, sample.seen_with_errors) == (10, 4)
    sample = ErrorsFirst(6)
    for r in records:
        sample.add(r)
    assert [r["index"] for r in sample.records()] == [0, 3, 6, 9, 1, 2]
    assert ErrorsFirst(0).records() == []


# -- the report -------------------------------------------------------------------------------------------------


def test_report_carries_the_error_analysis(tmp_path: Path) -> None:
    sink, scorer, _ = run_cases(tmp_path, list(range(len(CASES))))
    paths = write_report(scorer.report(), tmp_path / "out", name="run", meta={"model": "m"}, errors=sink.analysis)
    assert set(paths) == {"json", "md", "png", "confusion"}
    data = json.loads(paths["json"].read_text())
    assert data["errors"] == sink.analysis.to_dict()
    assert data["errors"]["confusion"]["labels"][-1] == "(none)"
    md = paths["md"].read_text()
    assert "## Errors" in md and "| gold \\ predicted |" in md and "| **micro** |" in md
    assert paths["confusion"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["confusion"].stat().st_size > 5000
    assert set(write_report(scorer.report(), tmp_path / "plain", name="run", meta={})) == {"json", "md", "png"}


# -- the page ---------------------------------------------------------------------------------------------------


def page(tmp_path: Path, **kwargs) -> tuple[str, list[dict]]:
    sink, scorer, _ = run_cases(tmp_path, list(range(len(CASES))), **kwargs)
    records = sink.sample.records()
    html = render_page(records, report=scorer.report(), analysis=sink.analysis, title="Evaluation: <run>",
                       meta={"data": "<data>.jsonl"}, total=sink.sample.seen,
                       total_with_errors=sink.sample.seen_with_errors)
    return html, records


def marks_of(records: list[dict]) -> int:
    return sum(len(r["gold"]) + len(r["predicted"]) + len(r["hallucinated"]) for r in records)


def test_page_escapes_every_text(tmp_path: Path) -> None:
    html, _ = page(tmp_path)
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "<b>id</b>" not in html and "&lt;b&gt;id&lt;/b&gt;" in html
    assert "Bob &amp; Alice" in html and "Evaluation: &lt;run&gt;" in html and "&lt;data&gt;.jsonl" in html
    assert html.count("<script>") == 1  # the page's own filter


def test_page_shows_every_entity_once_with_its_label(tmp_path: Path) -> None:
    html, records = page(tmp_path)
    assert html.count('<mark class="ent') == marks_of(records) == 17
    assert "北京大学" in html and ">organization</span>" in html and ">company</span>" in html
    assert 'data-category="wrong_type_and_boundary"' in html  # the company overlapping the nested city
    assert 'title="boundary; prediction: PER \u201cJohn\u201d [0, 4)"' in html
    assert "showing <span id=\"shown\">5</span> of 5 examples (3 of 3 with errors)" in html
    for label in LABELS:
        assert f"<td>{label}</td>" in html  # the per-type scores and the error table


def test_page_caps_the_examples_errors_first(tmp_path: Path) -> None:
    html, records = page(tmp_path, page_examples=2)
    assert [r["index"] for r in records] == [0, 1]
    assert html.count('<section class="example') == 2 and "of 5 examples" in html
    assert "the rest left out" in html


def test_the_template_is_package_data() -> None:
    from importlib import resources

    assert resources.files("nerve").joinpath(TEMPLATE).is_file()
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["nerve"]
    shipped = {p.relative_to(ROOT / "nerve").as_posix() for pattern in patterns for p in (ROOT / "nerve").glob(pattern)}
    assert TEMPLATE in shipped


# -- in a browser -----------------------------------------------------------------------------------------------


def _browser() -> tuple[str, str]:
    """Chromium and chromedriver: ``$NERVE_CHROMIUM`` / ``$NERVE_CHROMEDRIVER``, else found on PATH."""
    binary = os.environ.get("NERVE_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = os.environ.get("NERVE_CHROMEDRIVER") or shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip(f"no headless browser (chromium: {binary or 'not found'}, chromedriver: {driver or 'not found'}); "
                    "`make chromium` installs Debian's chromium and chromium-driver")
    return binary, driver


def test_page_renders_in_a_headless_browser(tmp_path: Path) -> None:
    binary, driver_path = _browser()
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    sink, scorer, _ = run_cases(tmp_path, list(range(len(CASES))))
    records = sink.sample.records()
    html = write_page(tmp_path / "run.html", records, report=scorer.report(), analysis=sink.analysis,
                      title="Evaluation: run", total=sink.sample.seen, total_with_errors=sink.sample.seen_with_errors)
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>nosuchfunction();</script></body></html>")

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        browser.get(broken.as_uri())  # the console check sees a page's errors
        assert any(e["level"] == "SEVERE" and "nosuchfunction" in e["message"] for e in browser.get_log("browser"))

        browser.get(html.as_uri())
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
        marks = browser.find_elements(By.CSS_SELECTOR, "mark.ent")
        assert len(marks) == marks_of(records) == 17
        labels = [m.find_element(By.CSS_SELECTOR, ".label") for m in marks]
        assert all(x.is_displayed() for x in labels)
        want = Counter(e["label"].lower() for r in records for side in ("gold", "predicted", "hallucinated")
                       for e in r[side])
        assert Counter(x.text.lower() for x in labels) == want  # shown uppercase by the style sheet
        assert any(m.text.startswith("北京大学") for m in marks)
        assert browser.execute_script("return document.querySelectorAll('script').length") == 1  # the text's stays text
        correct = browser.find_element(By.CSS_SELECTOR, "mark.c-correct")
        assert correct.value_of_css_property("background-color") in ("rgba(167, 227, 181, 1)", "rgb(167, 227, 181)")
        browser.save_screenshot(str(tmp_path / "page.png"))

        examples = browser.find_elements(By.CSS_SELECTOR, "section.example")
        browser.find_element(By.ID, "errors-only").click()
        shown = [x for x in examples if x.is_displayed()]
        assert len(shown) == sum(has_errors(r) for r in records) == 3 < len(examples)
        assert browser.find_element(By.ID, "shown").text == "3"
    finally:
        browser.quit()

    shot = tmp_path / "page.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert im.size[0] > 0 and colours is not None and len(colours) > 10  # not a blank page
        assert (0xA7, 0xE3, 0xB5) in {c for _, c in colours}  # the colour of correct marks is painted
