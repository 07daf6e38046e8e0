"""The runner: short headless locust runs (a few seconds) against fake servers on 127.0.0.1, with the CSV/HTML
reports and the printed summary; and the summary parser on a known CSV."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from loadtests.data import load_corpus
from loadtests.run import format_summary, main, read_summary

from .conftest import locust_available

FAKE_SERVER_CMD = f"{sys.executable} -m tests.loadtests.fake_server"


def test_headless_run_writes_reports_and_summary(fake_server, tmp_path: Path, capsys) -> None:
    locust_available()
    out = tmp_path / "load"
    rc = main(["--host", fake_server.target, "--scenario", "steady", "--users", "4", "--duration", "3s",
               "--out", str(out), "--mix", "extract=6,batch=2,evaluate=2", "--batch-size", "3"])
    printed = capsys.readouterr().out
    assert rc == 0, printed + (out / "steady.log").read_text()
    for name in ("steady_stats.csv", "steady_failures.csv", "steady_stats_history.csv", "steady.html", "summary.json"):
        assert (out / name).is_file(), name
    assert "<html" in (out / "steady.html").read_text(encoding="utf-8").lower()

    summary = read_summary(out / "steady")
    by_name = {r.name: r for r in summary.rows}
    assert {"Extract", "ExtractBatch", "Evaluate", "GetModelInfo"} <= set(by_name)
    assert by_name["Extract"].requests > by_name["Evaluate"].requests > 0
    assert by_name["GetModelInfo"].requests == 1, "asked once per process, shared by the users"
    assert summary.total.requests == sum(r.requests for r in summary.rows)
    assert summary.total.failures == 0 and summary.total.rps > 0
    assert summary.total.p50_ms is not None and summary.total.p99_ms >= summary.total.p50_ms
    # the servicer saw what locust counted: each Evaluate stream once (not once per streamed message). Calls
    # still in flight at the stop, and the last events locust records after its final CSV write, are missing.
    for rpc in ("Extract", "ExtractBatch", "Evaluate"):
        served, counted = fake_server.servicer.calls[rpc], by_name[rpc].requests
        assert 0.95 * served <= counted <= served, (rpc, served, counted)

    assert "total" in printed and "p95 ms" in printed and "req/s" in printed
    report = json.loads((out / "summary.json").read_text())
    assert report["total"]["requests"] == summary.total.requests and report["scenario"] == "steady"


def test_failures_are_counted_by_status(fake_server, tmp_path: Path, capsys) -> None:
    """Texts the fake rejects (a dataset folder with only 'FAIL') show up as failures with their status."""
    locust_available()
    data = tmp_path / "datasets" / "conll2003"
    data.mkdir(parents=True)
    (data / "eng.testb").write_text("FAIL NNP B-NP O\n\n", encoding="utf-8")
    out = tmp_path / "load"
    rc = main(["--host", fake_server.target, "--users", "2", "--duration", "3s", "--out", str(out),
               "--mix", "extract=1", "--datasets", str(tmp_path / "datasets"), "--max-failure-ratio", "0.5"])
    printed = capsys.readouterr().out
    log = (out / "steady.log").read_text()
    assert rc == 1, printed + log  # above --max-failure-ratio
    summary = read_summary(out / "steady")
    extract = next(r for r in summary.rows if r.name == "Extract")
    assert extract.requests > 0 and extract.failures >= 0.95 * extract.requests, (extract, log)
    assert any(name == "Extract" and "INVALID_ARGUMENT: text is invalid" in err for name, err, _ in summary.errors)
    assert "INVALID_ARGUMENT" in printed


def test_start_server_mode(tmp_path: Path, capsys) -> None:
    """--start-server: launch the (fake) server, wait for SERVING, run, SIGTERM it; it drains and exits 0."""
    locust_available()
    out = tmp_path / "load"
    rc = main(["--start-server", "fake-model", "--server-cmd", FAKE_SERVER_CMD, "--server-timeout", "30s",
               "--scenario", "burst", "--users", "4", "--duration", "3s", "--out", str(out), "--mix", "extract=1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed + (out / "server.log").read_text()
    assert "server SERVING on 127.0.0.1:" in printed and "server stopped (exit status 0)" in printed
    log = (out / "server.log").read_text()
    assert "fake nerve (fake-model)" in log and "SERVING" in log and "drained" in log
    assert json.loads((out / "summary.json").read_text())["server_exit_code"] == 0
    assert read_summary(out / "burst").total.requests > 0


def test_start_server_that_dies(tmp_path: Path, capsys) -> None:
    rc = main(["--start-server", "m", "--server-cmd", f"{sys.executable} -c 'import sys; print(\"boom\"); sys.exit(3)'",
               "--duration", "1s", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 3 and "exited with status 3 before serving" in err and "boom" in err


def test_read_summary_of_a_known_csv(tmp_path: Path) -> None:
    header = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
              "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
              "99.9%,99.99%,100%")
    (tmp_path / "x_stats.csv").write_text(textwrap.dedent(f"""\
        {header}
        grpc,Extract,100,2,120,130.5,80,900,210.0,9.5,0.2,120,130,140,150,200,300,500,700,900,900,900
        grpc,Evaluate,0,0,0,0,0,0,0,0.0,0.0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
        ,Aggregated,100,2,120,130.5,80,900,210.0,9.5,0.2,120,130,140,150,200,300,500,700,900,900,900
        """))
    (tmp_path / "x_failures.csv").write_text(
        'Method,Name,Error,Occurrences\ngrpc,Extract,"GrpcCallError(\'RESOURCE_EXHAUSTED: queue full\')",2\n')
    s = read_summary(tmp_path / "x")
    assert [r.name for r in s.rows] == ["Extract", "Evaluate"]
    assert (s.total.requests, s.total.failures, s.total.rps) == (100, 2, 9.5)
    assert (s.total.p50_ms, s.total.p95_ms, s.total.p99_ms) == (120, 300, 700)
    assert s.rows[1].p50_ms is None and s.failure_ratio == 0.02
    assert s.errors == [("Extract", "GrpcCallError('RESOURCE_EXHAUSTED: queue full')", 2)]
    text = format_summary(s)
    assert "total" in text and "RESOURCE_EXHAUSTED" in text
    assert text.splitlines()[2].split()[:2] == ["Evaluate", "0"]


def test_corpus_from_the_shared_datasets(datasets_dir: Path) -> None:
    corpus = load_corpus(datasets_dir, per_language=50)
    assert "cluener/dev.jsonl" in corpus.source and "conll2003/eng.testb" in corpus.source
    assert len(corpus.pick("zh")) == 50 and len(corpus.pick("en")) == 50
    assert len(corpus.pick("multi")) == 100
    for s in corpus.pick(None):
        for _label, start, end in s.entities:
            assert 0 <= start < end <= len(s.text)
    assert load_corpus(datasets_dir, per_language=50).pick("en") == corpus.pick("en"), "seeded sample"


def test_corpus_falls_back_to_builtin(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NERVE_DATASETS", str(tmp_path / "nothing"))
    import loadtests.data as data

    monkeypatch.setattr(data, "REPO_ROOT", tmp_path)  # hide ../shared/datasets
    corpus = data.load_corpus()
    assert corpus.source.startswith("built-in")
    assert corpus.pick("en") and corpus.pick("zh")
    for s in corpus.pick(None):
        for label, start, end in s.entities:
            assert s.text[start:end] and label
