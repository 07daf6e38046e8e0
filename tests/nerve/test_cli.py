"""The `nerve` command: extract and eval end to end on a tiny model, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def nerve(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nerve.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands() -> None:
    out = nerve("--help").stdout
    for cmd in ("extract", "eval", "serve", "models", "demo"):
        assert cmd in out


def test_eval_reports_file_and_line_of_bad_data(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ab", "entities": []}\n{"text": "ab", "entities": [{"label": "X", "text": "zz",'
                   ' "start": 0, "end": 2}]}\n')
    proc = nerve("eval", "--data", str(bad), "--model", str(tmp_path))
    assert proc.returncode == 2
    assert f"{bad}:2" in proc.stderr


def test_extract_file_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text('{"text": "ok"}\nnot json\n')
    proc = nerve("extract", "--file", str(f), "--model", str(tmp_path))
    assert proc.returncode == 2 and f"{f}:2" in proc.stderr
    proc = nerve("extract", "--model", "no-such-model", "hello")
    assert proc.returncode == 2 and "unknown model" in proc.stderr


def said(proc: subprocess.CompletedProcess, text: str) -> bool:
    """Whether stderr holds ``text``, however the console wrapped it."""
    return "".join(text.split()) in "".join(proc.stderr.split())


def test_gold_data_without_entities_needs_the_flag(tmp_path: Path, qwen_dir: Path) -> None:
    data = tmp_path / "unlabelled.jsonl"
    data.write_text('{"text": "Alice met Bob in Paris"}\n{"text": "nothing here"}\n')
    refusal = f"{data}: 2 example(s), none with an entity (read as cluener); unlabelled data must be allowed " \
              "explicitly (--allow-no-entities)"
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    proc = nerve("eval", "--data", str(data), "--model", str(not_a_model))
    assert proc.returncode == 2 and said(proc, refusal), proc.stderr
    proc = nerve("eval", "--data", str(data), "--model", str(not_a_model), "--allow-no-entities")
    assert proc.returncode == 2 and said(proc, "not a Hugging Face checkpoint folder"), proc.stderr  # data was read

    report = ("data", "report", str(data), "--model", str(qwen_dir), "--task", "conll2003", "--json")
    proc = nerve(*report)
    assert proc.returncode == 2 and said(proc, refusal), proc.stderr
    proc = nerve(*report, "--allow-no-entities")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)
    assert rep["examples"] == 2 and rep["without_entities"] == 2 and rep["entities"] == 0


@pytest.mark.engine
def test_extract_and_eval_end_to_end(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "gold.jsonl"
    rows = [{"text": "彭小军认为，国内银行现在走的是台湾的发卡模式", "label": {"name": {"彭小军": [[0, 2]]}}},
            {"text": "温格的球队终于又踢了一场经典的比赛", "label": {"name": {"温格": [[0, 1]]}}}]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    out = tmp_path / "reports"
    proc = nerve("eval", "--model", str(tiny_qwen_dir), "--data", str(data), "--out", str(out), "--name", "tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "tiny.json").read_text())
    assert report["examples"] == 2 and report["parse_rate"] == 1.0
    assert report["meta"]["model"] == str(tiny_qwen_dir)
    assert (out / "tiny.png").stat().st_size > 1000 and "| **micro** |" in (out / "tiny.md").read_text()

    proc = nerve("extract", "--model", str(tiny_qwen_dir), "--raw", "--grounded", rows[0]["text"], "Peter Blackburn")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x["text"] for x in lines] == [rows[0]["text"], "Peter Blackburn"]
    for x in lines:
        json.loads(x["raw"])
        assert "hallucinated" not in x  # grounded decoding only produces substrings
        for e in x["entities"]:
            assert x["text"][e["start"]:e["end"]] == e["text"]
