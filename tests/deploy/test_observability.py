"""The observability pack: the Grafana dashboard (deploy/grafana/nerve.json) and the alert rules
(deploy/k8s/base/prometheusrule.yaml) name only metrics the server and its engine export, and are well formed;
the HPA scales on a metric that prometheus-adapter serves (by the rules in docs/deploy.md) from a gauge the server
exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import DEPLOY_DIR, one

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "nerve.json"
RULES = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
HPA = ROOT / "deploy" / "k8s" / "base" / "hpa.yaml"
DOCS = ROOT / "docs" / "deploy.md"
HPA_COMPONENTS = ("hpa-nerve-queue",)
"""Components that change the HPA's metric (each is checked on top of the gpu-4090 overlay)."""
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


def nerve_gauges() -> set[str]:
    """The gauge families of the server's own registry."""
    from nerve.service.metrics import ENGINE_PREFIX, Metrics

    return {f.name for f in Metrics().registry.collect() if f.type == "gauge" and not f.name.startswith(ENGINE_PREFIX)}


def vllm_gauges() -> set[str]:
    """The gauge families vLLM's Prometheus stat logger defines (read from its source)."""
    vllm = pytest.importorskip("vllm")
    source = (Path(vllm.__file__).parent / "v1" / "metrics" / "loggers.py").read_text(encoding="utf-8")
    return set(re.findall(r'_gauge_cls\(\s*name="(vllm:[a-z_:]+)"', source))


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


# -- the HPA's custom metric ---------------------------------------------------------------------------------------


def adapter_rules(markdown: str) -> list[dict]:
    """The prometheus-adapter rules of the YAML blocks in ``markdown`` that hold a ``rules: custom:`` list."""
    out = []
    for block in re.findall(r"```yaml\n(.*?)```", markdown, flags=re.S):
        doc = yaml.safe_load(block)
        if isinstance(doc, dict) and isinstance(doc.get("rules"), dict):
            out += doc["rules"].get("custom", [])
    return out


def served_metrics(rules: list[dict]) -> dict[str, str]:
    """{custom metric name the adapter serves to the HPA: the Prometheus series it reads}, as prometheus-adapter
    names them: ``name.matches`` (a regular expression) applied to the series name of ``seriesQuery``, replaced
    by ``name.as`` (``$1`` for a group; default: the first group, or the whole name)."""
    out = {}
    for rule in rules:
        series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"]).group(1)
        naming = rule.get("name", {})
        matches = re.compile(naming.get("matches", "(.*)"))
        found = matches.search(series)
        assert found, f"name.matches {matches.pattern!r} does not match the series {series!r}"
        replacement = naming.get("as") or ("$1" if matches.groups else "$0")
        served = matches.sub(re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", replacement), series)
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"], rule
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"]), rule
        out[served] = series
    return out


def pods_metrics(objs: list[dict]) -> list[str]:
    """The names of the Pods metrics of every HorizontalPodAutoscaler in ``objs``."""
    return [m["pods"]["metric"]["name"] for o in objs if o["kind"] == "HorizontalPodAutoscaler"
            for m in o["spec"]["metrics"] if m["type"] == "Pods"]


def unserved(metric: str) -> str | None:
    """Why the HPA could not get ``metric``, or None: no adapter rule in docs/deploy.md serves it, or the series
    the rule reads is not a gauge the server (or its vLLM engine) exports."""
    served = served_metrics(adapter_rules(DOCS.read_text(encoding="utf-8")))
    if metric not in served:
        return f"no adapter rule in docs/deploy.md serves {metric!r} (served: {sorted(served)})"
    if served[metric] not in nerve_gauges() | vllm_gauges():
        return f"{metric!r} is read from {served[metric]!r}, which the server does not export as a gauge"
    return None


def test_the_adapter_checks_follow_prometheus_adapters_naming() -> None:
    rule = {"seriesQuery": 'vllm:num_requests_waiting{pod!=""}', "metricsQuery": "<<.Series>>{<<.LabelMatchers>>}",
            "resources": {"overrides": {"namespace": {}, "pod": {}}}}
    assert served_metrics([{**rule, "name": {"matches": "^vllm:(.*)$", "as": "vllm_${1}"}}]) == {
        "vllm_num_requests_waiting": "vllm:num_requests_waiting"}
    assert served_metrics([{**rule, "name": {"matches": "^vllm:(.*)$"}}]) == {
        "num_requests_waiting": "vllm:num_requests_waiting"}
    assert served_metrics([rule]) == {"vllm:num_requests_waiting": "vllm:num_requests_waiting"}
    assert "vllm:num_requests_waiting" in vllm_gauges() and "nerve_queued_requests" in nerve_gauges()
    assert "vllm:num_requests_running" in vllm_gauges() and "vllm:time_to_first_token_seconds" not in vllm_gauges()
    assert "nerve_requests_total" not in nerve_gauges()
    assert unserved("nerve_inflight_requests").startswith("no adapter rule")


def test_the_base_hpa_scales_on_the_engines_waiting_count_served_by_the_documented_rule() -> None:
    hpa = yaml.safe_load(HPA.read_text(encoding="utf-8"))
    assert pods_metrics([hpa]) == ["vllm_num_requests_waiting"]
    assert unserved("vllm_num_requests_waiting") is None
    served = served_metrics(adapter_rules(DOCS.read_text(encoding="utf-8")))
    assert served["vllm_num_requests_waiting"] == "vllm:num_requests_waiting"
    assert served["nerve_queued_requests"] == "nerve_queued_requests"  # for encoder checkpoints (no vLLM)


def test_every_hpa_metric_of_the_overlays_and_components_is_served_and_exported(rendered, validate,
                                                                               tmp_path: Path) -> None:
    metrics = {name: pods_metrics(objs) for name, objs in rendered.items()}
    assert metrics["gpu-4090"] == ["vllm_num_requests_waiting"] and metrics["cpu"] == []  # cpu: CPU utilisation
    k8s = DEPLOY_DIR / "k8s"
    for component in HPA_COMPONENTS:
        (tmp_path / "kustomization.yaml").write_text(  # on top of the overlay; kustomize takes relative paths only
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {os.path.relpath(k8s / 'overlays' / 'gpu-4090', tmp_path)}\n"
            f"components:\n  - {os.path.relpath(k8s / 'components' / component, tmp_path)}\n", encoding="utf-8")
        objs = validate.render(tmp_path)
        metrics[component] = pods_metrics(objs)
        target = one(objs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["target"]
        assert target == {"type": "AverageValue", "averageValue": "32"}, "the overlay's target is kept"
    assert metrics["hpa-nerve-queue"] == ["nerve_queued_requests"]
    for where, names in metrics.items():
        for name in names:
            assert unserved(name) is None, f"{where}: {unserved(name)}"
