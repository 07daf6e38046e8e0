"""The kustomize overlays: rendered with kubectl, validated against Kubernetes 1.32 schemas, plus the
invariants the server relies on (probes, drain vs grace period, ports, non-root, GPU scheduling)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DEPLOY_DIR, OVERLAYS, REPO_ROOT, one, require_kubectl

SERVER_UID = 10001
STARTUP_BUDGET_SECONDS = 15 * 60  # model load + warm-up on a cold node


def server(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objs, "Deployment", "nerve")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "nerve")


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment", "nerve")["spec"]["template"]["spec"]


def config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one(objs, "ConfigMap")
    assert re.fullmatch(r"nerve-config-[a-z0-9]{10}", cm["metadata"]["name"]), "generated name with content hash"
    return yaml.safe_load(cm["data"]["config.yaml"])


def port(container: dict[str, Any], name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


# ------------------------------------------------------------------------------------------- the script


def test_validate_script_passes_on_every_overlay() -> None:
    require_kubectl()
    proc = subprocess.run([sys.executable, str(DEPLOY_DIR / "validate.py")], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in OVERLAYS:
        assert re.search(rf"^{re.escape(name)}\s+\d+\s+\d+\s+2\s+OK$", proc.stdout, re.M), proc.stdout
    assert "ServiceMonitor" in proc.stdout  # the summary names the structurally checked CRD kinds


def test_overlays_are_all_covered(validate) -> None:
    assert [p.name for p in validate.overlays()] == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_pass_schemas_and_policy(rendered, validate, overlay: str) -> None:
    report = validate.validate_objects(overlay, rendered[overlay])
    assert report.ok, "\n".join(report.errors)
    kinds = sorted(o["kind"] for o in rendered[overlay])
    assert kinds == sorted([
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PersistentVolumeClaim",
        "PodDisruptionBudget", "PrometheusRule", "Service", "Service", "ServiceAccount", "ServiceMonitor",
    ])
    assert report.crd_checked == 2 and report.schema_valid == len(kinds) - 2


# ------------------------------------------------------------------------------------ server invariants


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_is_a_valid_server_config(rendered, overlay: str, tmp_path: Path) -> None:
    from nerve.service.config import load_config

    text = one(rendered[overlay], "ConfigMap")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    cfg = load_config(path, environ={})
    assert cfg.host == "0.0.0.0"
    assert not cfg.log_texts and cfg.auth_token is None, "no user data in logs, no secret in a ConfigMap"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_grpc_health_checks_sized_for_model_load(rendered, overlay: str) -> None:
    c = server(rendered[overlay])
    grpc_port = config(rendered[overlay])["port"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[kind]["grpc"] == {"port": grpc_port, "service": ""}, kind
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_BUDGET_SECONDS
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 15, "a draining pod leaves the endpoints fast"
    # a draining pod reports NOT_SERVING: liveness must not kill it before the drain is over
    assert live["periodSeconds"] * live["failureThreshold"] >= config(rendered[overlay])["drain_seconds"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_exceeds_drain_seconds(rendered, overlay: str) -> None:
    drain = float(config(rendered[overlay])["drain_seconds"])
    grace = pod_spec(rendered[overlay])["terminationGracePeriodSeconds"]
    assert grace > drain
    assert grace - drain >= 10, "leave the engine time to shut down after the drain"
    c = server(rendered[overlay])
    assert "lifecycle" not in c, "the server drains on SIGTERM itself; no preStop (see deployment.yaml)"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_match_the_config(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    cfg, c = config(objs), server(objs)
    assert port(c, "grpc") == cfg["port"] == 50051
    assert port(c, "metrics") == cfg["metrics_port"] == 9400
    assert port(c, "http") == cfg["http_port"] == 8000
    svc = one(objs, "Service", "nerve")
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    assert by_name["grpc"]["port"] == cfg["port"] and by_name["grpc"]["appProtocol"] == "grpc"
    assert by_name["metrics"]["port"] == cfg["metrics_port"]
    assert by_name["http"]["port"] == cfg["http_port"] and by_name["http"]["targetPort"] == "http"
    headless = one(objs, "Service", "nerve-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]
    netpol = one(objs, "NetworkPolicy")
    allowed = sorted(p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"])
    assert allowed == sorted([cfg["port"], cfg["http_port"], cfg["metrics_port"]])
    metrics_rule = next(r for r in netpol["spec"]["ingress"] if r["ports"][0]["port"] == cfg["metrics_port"])
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    sm = one(objs, "ServiceMonitor")
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runs_non_root_with_read_only_root(rendered, overlay: str) -> None:
    spec = pod_spec(rendered[overlay])
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == SERVER_UID and sc["runAsGroup"] == SERVER_UID
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec.get("initContainers", []):
        csc = c["securityContext"]
        assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m for m in server(rendered[overlay])["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in ("/tmp", "/var/cache/nerve", "/dev/shm"):
        assert "emptyDir" in volumes[mounts[path]["name"]], f"{path} must be a writable emptyDir"
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert mounts["/etc/nerve"]["readOnly"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_volume_and_auth_secret(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    c = server(objs)
    env = {e["name"]: e for e in c["env"]}
    assert env["NERVE_HOME"]["value"] == "/var/lib/nerve"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    models = mounts["/var/lib/nerve/models"]
    assert models.get("readOnly") is True, "the server only reads weights"
    volume = next(v for v in pod_spec(objs)["volumes"] if v["name"] == models["name"])
    pvc = one(objs, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "replicas on several nodes share it"
    token = env["NERVE_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "nerve-auth", "key": "token", "optional": True}
    assert not any(o["kind"] == "Secret" for o in objs), "no secret values in the repository"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_args_match_the_image_cmd(rendered, overlay: str) -> None:
    c = server(rendered[overlay])
    assert "command" not in c, "keep the image's ENTRYPOINT (tini) as PID 1"
    assert c["args"] == ["serve", "--config", "/etc/nerve/config.yaml"]
    image = c["image"]
    flavour = "gpu" if overlay.startswith("gpu") else "cpu"
    assert re.fullmatch(rf"[\w.-]+(/[\w.-]+)*/nerve-{flavour}:\d+\.\d+\.\d+", image), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_availability_objects(rendered, overlay: str) -> None:
    objs = rendered[overlay]
    dep = one(objs, "Deployment")
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nerve"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert all(o["metadata"].get("namespace") == "nerve" for o in objs)


# ------------------------------------------------------------------------------------- overlay specifics


def test_gpu_overlay_requests_one_4090(rendered) -> None:
    objs = rendered["gpu-4090"]
    c, spec = server(objs), pod_spec(objs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-4090"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    engine = config(objs)["engine"]
    assert 0.5 < engine["gpu_memory_utilization"] <= 0.95
    assert engine["max_num_seqs"] > config(rendered["cpu"])["engine"]["max_num_seqs"]
    assert "initContainers" not in spec, "GPU pods read a pre-populated PVC"


def test_gpu_overlay_scales_on_the_engines_waiting_requests(rendered) -> None:
    hpa = one(rendered["gpu-4090"], "HorizontalPodAutoscaler")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    # vllm:num_requests_waiting as prometheus-adapter serves it (tests/deploy/test_observability.py checks the
    # rule in docs/deploy.md and that the server exports the series)
    assert metric["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "32"}


def test_cpu_overlay_scales_on_cpu_and_pulls_the_model(rendered) -> None:
    objs = rendered["cpu"]
    hpa = one(objs, "HorizontalPodAutoscaler")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    c, spec = server(objs), pod_spec(objs)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["resources"]["requests"] == c["resources"]["limits"], "Guaranteed QoS for the OpenMP threads"
    assert config(objs)["engine"]["enforce_eager"] is True
    [init] = spec["initContainers"]
    assert init["name"] == "pull-model" and init["image"] == c["image"]
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert not mounts["/var/lib/nerve/models"].get("readOnly"), "the pull writes to the PVC"
    assert mounts["/etc/nerve"]["readOnly"] is True
    assert init["resources"]["requests"] == init["resources"]["limits"]


def test_pull_init_container_reads_the_model_from_the_config(rendered, tmp_path: Path) -> None:
    """Run the init container's Python one-liner against the rendered config: it must print the model name."""
    init = pod_spec(rendered["cpu"])["initContainers"][0]
    script = init["args"][0]
    assert "nerve models pull" in script and "flock" in script
    one_liner = re.search(r"python3 -c '([^']+)'", script)
    assert one_liner, script
    cfg = tmp_path / "config.yaml"
    cfg.write_text(one(rendered["cpu"], "ConfigMap")["data"]["config.yaml"], encoding="utf-8")
    code = one_liner[1].replace("/etc/nerve/config.yaml", str(cfg))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == config(rendered["cpu"])["model"]


# ------------------------------------------------------------------------------- the checks catch errors


def test_strict_schema_rejects_unknown_fields(rendered, validate) -> None:
    dep = copy.deepcopy(one(rendered["cpu"], "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    _, errors = validate.schema_errors(dep, "1.32.0")
    assert errors and "livenessProbes" in errors[0]
    dep = copy.deepcopy(one(rendered["cpu"], "Deployment"))
    dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    assert validate.schema_errors(dep, "1.32.0")[1]


def test_crd_check_rejects_a_bad_servicemonitor(rendered, validate) -> None:
    sm = copy.deepcopy(one(rendered["cpu"], "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
    how, errors = validate.schema_errors(sm, "1.32.0")
    assert how == "crd" and errors and "interval" in errors[0]
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "custom resource" in validate.schema_errors(unknown, "1.32.0")[1][0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: _cm(o).update({"config.yaml": _cm(o)["config.yaml"].replace("drain_seconds: 30", "drain_seconds: 60")}),
         "must exceed drain_seconds"),
        (lambda o: _cm(o).update({"config.yaml": _cm(o)["config.yaml"].replace("host: 0.0.0.0", "host: 127.0.0.1")}),
         "is loopback"),
        (lambda o: _cm(o).update({"config.yaml": _cm(o)["config.yaml"] + "\nmax_quue: 3\n"}), "unknown setting 'max_quue'"),
        (lambda o: _cm(o).update({"config.yaml": _cm(o)["config.yaml"].replace("port: 50051", "port: 50052")}),
         "!= containerPort grpc"),
        (lambda o: _srv(o).pop("readinessProbe"), "has no readinessProbe"),
        (lambda o: _srv(o).update(image="registry.example.com/nerve/nerve-cpu:latest"), "'latest' tag"),
        (lambda o: _srv(o).update(image="registry.example.com/nerve/nerve-cpu"), "has no tag"),
        (lambda o: _pod(o)["securityContext"].update(runAsUser=0), "non-root"),
        (lambda o: _srv(o)["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
        (lambda o: _one(o, "Deployment")["spec"].update(replicas=3), "owns the replica count"),
        (lambda o: _one(o, "ServiceMonitor")["spec"]["endpoints"][0].update(port="prometheus"), "port named 'prometheus'"),
        (lambda o: _one(o, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update(app="other"), "selector"),
        (lambda o: _env(o, "NERVE_AUTH_TOKEN")["valueFrom"]["secretKeyRef"].pop("optional"), "needs Secret nerve-auth"),
        (lambda o: [v["emptyDir"].pop("medium") for v in _pod(o)["volumes"] if v["name"] == "dshm"], "/dev/shm"),
    ],
    ids=["grace", "loopback", "unknown-key", "port", "probe", "latest", "untagged", "root", "rw-root", "replicas",
         "servicemonitor-port", "pdb-selector", "secret", "shm"],
)
def test_policy_catches(rendered, validate, mutate, message: str) -> None:
    objs = copy.deepcopy(rendered["cpu"])
    assert validate.policy_errors(objs) == []
    mutate(objs)
    errors = validate.policy_errors(objs)
    assert any(message in e for e in errors), errors


def _one(objs, kind):
    return one(objs, kind) if kind != "Service" else one(objs, kind, "nerve")


def _cm(objs):
    return one(objs, "ConfigMap")["data"]


def _pod(objs):
    return pod_spec(objs)


def _srv(objs):
    return server(objs)


def _env(objs, name):
    return next(e for e in server(objs)["env"] if e["name"] == name)


def test_script_fails_on_a_broken_overlay(tmp_path: Path) -> None:
    """End to end: an overlay whose drain outlasts the grace period makes validate.py exit 1."""
    require_kubectl()
    (tmp_path / "config.yaml").write_text(
        (DEPLOY_DIR / "k8s" / "overlays" / "cpu" / "config.yaml").read_text().replace("drain_seconds: 30", "drain_seconds: 90"))
    (tmp_path / "kustomization.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources: [{os.path.relpath(DEPLOY_DIR / 'k8s' / 'base', tmp_path)}]
        images: [{{name: nerve, newName: registry.example.com/nerve/nerve-cpu, newTag: "0.1.0"}}]
        configMapGenerator:
          - {{name: nerve-config, behavior: replace, files: [config.yaml]}}
        """))
    proc = subprocess.run([sys.executable, str(DEPLOY_DIR / "validate.py"), "--overlay", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "terminationGracePeriodSeconds 45 must exceed drain_seconds 90" in proc.stdout
