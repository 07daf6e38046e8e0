"""The observability pack: the Grafana dashboard (deploy/grafana/nerve.json) and the alert rules
(deploy/k8s/base/prometheusrule.yaml) name only metrics the server and its engine export, and are well formed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "nerve.json"
RULES = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
METRIC = re.compile(r"\b(nerve_[a-z_]+|vllm:[a-z_:]+)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def nerve_series() -> set[str]:
    """Every series name the server's registry exposes (counters with _total, histograms with their parts)."""
    from nerve.service.metrics import ENGINE_PREFIX, Metrics

    names = set()
    for family in Metrics().registry.collect():
        if not family.name.startswith(ENGINE_PREFIX):
            names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def vllm_families() -> set[str]:
    """The metric family names vLLM's Prometheus stat logger defines (read from its source)."""
    vllm = pytest.importorskip("vllm")
    source = (Path(vllm.__file__).parent / "v1" / "metrics" / "loggers.py").read_text(encoding="utf-8")
    return set(re.findall(r'"(vllm:[a-z_:]+)"', source))


def unknown_metrics(expr: str) -> list[str]:
    known, engine = nerve_series(), vllm_families()
    out = []
    for name in METRIC.findall(expr):
        if name.startswith("vllm:"):
            base = re.sub(r"(_total|_bucket|_count|_sum)$", "", name)
            if base not in engine and name not in engine:
                out.append(name)
        elif name not in known:
            out.append(name)
    return out


def balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for c in re.sub(r'"[^"]*"', '""', expr):
        if c in "([{":
            stack.append(c)
        elif c in pairs and (not stack or stack.pop() != pairs[c]):
            return False
    return not stack


def test_the_checks_catch_a_wrong_metric_and_a_broken_expression() -> None:
    assert unknown_metrics("sum(rate(nerve_requests_total[5m])) + vllm:num_requests_waiting") == []
    assert unknown_metrics("rate(nerve_request_total[5m])") == ["nerve_request_total"]
    assert unknown_metrics("vllm:num_requests_sleeping") == ["vllm:num_requests_sleeping"]
    assert balanced('sum(rate(x{a="(("}[5m]))') and not balanced("sum(rate(x[5m])")


def test_the_dashboard_is_a_well_formed_grafana_model() -> None:
    d = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    variables = {v["name"] for v in d["templating"]["list"]}
    ids, cells = set(), set()
    for p in d["panels"]:
        assert p["id"] not in ids and p["type"] in {"timeseries", "stat"} and p["title"]
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        here = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not here & cells, f"panel {p['title']!r} overlaps another"
        cells |= here
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(set(refs)) == len(refs)
        for t in p["targets"]:
            expr = t["expr"]
            assert balanced(expr), expr
            assert unknown_metrics(expr) == [], expr
            assert set(re.findall(r"\$(\w+)", expr)) <= variables, expr
        assert p["datasource"]["uid"] == "${datasource}"


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert doc["kind"] == "PrometheusRule"
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


def test_every_alert_names_known_metrics_and_says_what_to_do() -> None:
    alerts = rules()
    assert {r["alert"] for r in alerts} >= {"NerveParseFailures", "NerveInternalErrors", "NerveRequestsRefused",
                                           "NerveEngineFailed", "NerveNotReady", "NerveSlowRequests"}
    for r in alerts:
        assert balanced(r["expr"]) and unknown_metrics(r["expr"]) == [], r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    proc = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
