#!/usr/bin/env python3
"""Render every kustomize overlay of deploy/k8s and validate what it produces, offline.

    python deploy/validate.py                       # all overlays, Kubernetes 1.32 schemas
    python deploy/validate.py --overlay deploy/k8s/overlays/cpu --write out/rendered

Three layers of checks, for every object of every overlay:

1. Schema. Built-in kinds are validated strictly (unknown fields are errors) against the Kubernetes JSON
   schemas that the `kubernetes-validate` package ships, for ``--kubernetes-version`` (default 1.32.0).
2. CRDs. kubernetes-validate has no schemas for custom resources; the kinds listed in :data:`CRD_SCHEMAS`
   (the Prometheus Operator's ServiceMonitor and PrometheusRule) are checked against a hand-written
   structural schema of the fields we use. Any other custom kind fails, so nothing passes unchecked.
3. Policy. Cross-object invariants a schema cannot see: the server config in the ConfigMap parses (with
   nerve's own ``load_config`` when importable) and agrees with the container ports and probes;
   terminationGracePeriodSeconds exceeds drain_seconds; every container has startup, readiness and liveness
   probes, runs as non-root with a read-only root filesystem; images carry a version tag (never ``latest``);
   Services, the PodDisruptionBudget, the NetworkPolicy and the ServiceMonitor select the pods and name
   ports that exist; the HPA targets the Deployment; referenced ConfigMaps and PVCs are in the overlay.

Rendering needs ``kubectl`` (``kubectl kustomize`` works offline) or a standalone ``kustomize``.
Exit codes: 0 all valid, 1 validation failures, 2 a tool is missing or an overlay does not render.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEPLOY_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEPLOY_DIR.parent
OVERLAYS_DIR = DEPLOY_DIR / "k8s" / "overlays"
DEFAULT_K8S_VERSION = "1.32.0"
CONFIG_KEY = "config.yaml"
CONFIG_MOUNT = "/etc/nerve"

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

def _operator_schema(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The structural schema of a Prometheus Operator resource (monitoring.coreos.com/v1) with ``spec``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{kind} (monitoring.coreos.com/v1), the subset of fields nerve uses",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1}, "namespace": {"type": "string"},
                               "labels": _LABELS, "annotations": _LABELS},
            },
            "spec": spec,
        },
    }


SERVICE_MONITOR_SCHEMA: dict[str, Any] = _operator_schema("ServiceMonitor", {
    "type": "object",
    "required": ["selector", "endpoints"],
    "additionalProperties": False,
    "properties": {
        "selector": _LABEL_SELECTOR,
        "namespaceSelector": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
        },
        "jobLabel": {"type": "string"},
        "targetLabels": {"type": "array", "items": {"type": "string"}},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        "sampleLimit": {"type": "integer", "minimum": 0},
        "endpoints": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                "properties": {
                    "port": {"type": "string", "minLength": 1},
                    "targetPort": {"type": ["string", "integer"]},
                    "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": {"type": "string", "pattern": _DURATION},
                    "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                    "honorLabels": {"type": "boolean"},
                    "honorTimestamps": {"type": "boolean"},
                    "params": {"type": "object"},
                    "relabelings": {"type": "array", "items": {"type": "object"}},
                    "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                    "tlsConfig": {"type": "object"},
                    "bearerTokenSecret": {"type": "object"},
                    "authorization": {"type": "object"},
                },
            },
        },
    },
})

PROMETHEUS_RULE_SCHEMA: dict[str, Any] = _operator_schema("PrometheusRule", {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": _DURATION},
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["expr"],
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
                                "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": {"type": "string", "pattern": _DURATION},
                                "labels": _LABELS,
                                "annotations": _LABELS,
                            },
                        },
                    },
                },
            },
        },
    },
})

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_SCHEMA,
}
"""Custom resources checked structurally (kubernetes-validate only knows built-in kinds)."""


class ToolMissing(RuntimeError):
    """kubectl/kustomize or kubernetes-validate is not installed."""


class RenderError(RuntimeError):
    """An overlay does not render."""


@dataclass
class Report:
    """Outcome of one overlay."""

    name: str
    objects: int = 0
    schema_valid: int = 0
    crd_checked: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


# --------------------------------------------------------------------------------------------- rendering


def find_renderer() -> list[str]:
    """The command that renders a kustomization: ``kubectl kustomize`` or a standalone ``kustomize build``."""
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    raise ToolMissing("neither kubectl nor kustomize is on PATH (Debian: apt-get install -y kubectl)")


def render(kustomization_dir: str | os.PathLike[str], renderer: list[str] | None = None) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIR`` produces, in order."""
    cmd = [*(renderer or find_renderer()), str(kustomization_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RenderError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def overlays(root: Path = OVERLAYS_DIR) -> list[Path]:
    """Every overlay directory (one holding a kustomization file) under ``root``."""
    return sorted(p.parent for p in root.glob("*/kustomization.yaml"))


def ref(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


# ------------------------------------------------------------------------------------------------ schemas


def schema_errors(obj: dict[str, Any], k8s_version: str) -> tuple[str, list[str]]:
    """(``"schema"`` | ``"crd"``, errors) for one object."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key in CRD_SCHEMAS:
        import jsonschema

        validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
        errs = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        return "crd", [f"{ref(obj)}: {_path(e.absolute_path)}: {e.message}" for e in errs]
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
    except ImportError:  # pragma: no cover - depends on the environment
        raise ToolMissing("kubernetes-validate is not installed (pip install kubernetes-validate)") from None
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except ValidationError as e:
        return "schema", [f"{ref(obj)}: {_path(e.absolute_path)}: {e.message}"]
    except SchemaNotFoundError as e:
        return "schema", [f"{ref(obj)}: {e.message} (a custom resource? add a structural schema to CRD_SCHEMAS)"]
    return "schema", []


def _path(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "<root>"


# ------------------------------------------------------------------------------------------------ policy


def _select(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (or a Service's plain selector map) selects ``labels``."""
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def image_errors(image: str) -> list[str]:
    """A pinned image has a tag other than ``latest`` or a digest."""
    if "@sha256:" in image:
        return []
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return [f"image {image!r} has no tag (pin a version)"]
    if tag == "latest":
        return [f"image {image!r} uses the 'latest' tag (pin a version)"]
    return []


def server_config(deployment: dict[str, Any], objs: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[str]]:
    """The effective ``nerve serve`` settings of a Deployment's server container, as a dict.

    Reads config.yaml from the ConfigMap mounted on /etc/nerve and applies the container's literal ``NERVE_*``
    environment, through nerve's own ``nerve.service.config.load_config`` when importable (so unknown keys and bad
    values fail here exactly as in the pod), else as plain YAML.
    """
    container = _server_container(deployment)
    spec = deployment["spec"]["template"]["spec"]
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == CONFIG_MOUNT), None)
    if mount is None:
        return None, [f"{ref(deployment)}: container {container['name']} mounts nothing on {CONFIG_MOUNT}"]
    volume = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), None)
    cm_name = ((volume or {}).get("configMap") or {}).get("name")
    cm = next((o for o in _select(objs, "ConfigMap") if o["metadata"]["name"] == cm_name), None)
    if cm is None or CONFIG_KEY not in (cm.get("data") or {}):
        return None, [f"{ref(deployment)}: no ConfigMap {cm_name!r} with key {CONFIG_KEY} for {CONFIG_MOUNT}"]
    text = cm["data"][CONFIG_KEY]
    environ = {e["name"]: str(e["value"]) for e in container.get("env", [])
               if e["name"].startswith("NERVE_") and "value" in e}
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        return None, [f"ConfigMap/{cm_name}: {CONFIG_KEY} is not YAML: {e}"]
    load_config = config_loader()
    if load_config is None:
        merged = dict(raw)
        for k, v in environ.items():
            if not k.startswith("NERVE_ENGINE_") and k != "NERVE_HOME":
                merged[k[len("NERVE_"):].lower()] = v
        return merged, []
    import dataclasses

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        cfg = load_config(f.name, environ=environ)
    except ValueError as e:
        return None, [f"ConfigMap/{cm_name}: " + str(e).replace(f.name, CONFIG_KEY)]
    finally:
        os.unlink(f.name)
    return dataclasses.asdict(cfg), []


def config_loader() -> Any | None:
    """nerve's ``nerve.service.config.load_config``, or ``None`` when the server package cannot be imported here."""
    try:
        sys.path.insert(0, str(REPO_ROOT))
        try:
            from nerve.service.config import load_config
        finally:
            sys.path.remove(str(REPO_ROOT))
    except Exception:  # noqa: BLE001 - the server package is optional here; callers fall back to plain YAML
        return None
    return load_config


def _server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next((c for c in containers if c["name"] == "nerve"), containers[0])


def _port(container: dict[str, Any], name: str) -> int | None:
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == name), None)


def policy_errors(objs: list[dict[str, Any]]) -> list[str]:
    """Cross-object invariants of a rendered overlay (see the module docstring)."""
    errors: list[str] = []
    deployments = _select(objs, "Deployment")
    if len(deployments) != 1:
        return [f"expected exactly one Deployment, found {len(deployments)}"]
    dep = deployments[0]
    tmpl = dep["spec"]["template"]
    pod_labels = tmpl["metadata"].get("labels", {})
    spec = tmpl["spec"]
    server = _server_container(dep)

    if not _matches(dep["spec"].get("selector"), pod_labels):
        errors.append(f"{ref(dep)}: spec.selector does not select its own pod template")

    # Security: non-root everywhere, read-only root filesystem, no privilege escalation, pinned images.
    pod_sc = spec.get("securityContext", {})
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        where = f"{ref(dep)}: container {c['name']}"
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0):
            errors.append(f"{where}: must run as a non-root user (runAsNonRoot and a non-zero runAsUser)")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: readOnlyRootFilesystem must be true")
        errors += [f"{where}: {e}" for e in image_errors(c.get("image", ""))]

    # Probes: startup, readiness and liveness on the gRPC port.
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = server.get(kind)
        if not probe:
            errors.append(f"{ref(dep)}: container {server['name']} has no {kind}")
        elif "grpc" not in probe:
            errors.append(f"{ref(dep)}: {kind} should be a native gRPC probe (grpc.health.v1)")

    # The server config agrees with the container and the grace period.
    cfg, cfg_errors = server_config(dep, objs)
    errors += cfg_errors
    if cfg is not None:
        grpc_port, metrics_port = _port(server, "grpc"), _port(server, "metrics")
        if int(cfg.get("port", 50051)) != grpc_port:
            errors.append(f"config port {cfg.get('port')} != containerPort grpc {grpc_port}")
        if int(cfg.get("metrics_port", 9400)) != metrics_port:
            errors.append(f"config metrics_port {cfg.get('metrics_port')} != containerPort metrics {metrics_port}")
        host = str(cfg.get("host", "127.0.0.1")).strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            errors.append(f"config host {host!r} is loopback: the kubelet's probes and the Service cannot reach it")
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = ((server.get(kind) or {}).get("grpc") or {}).get("port")
            if port is not None and port != grpc_port:
                errors.append(f"{kind} probes port {port}, the server listens on {grpc_port}")
        drain = float(cfg.get("drain_seconds", 30))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if not grace > drain:
            errors.append(f"terminationGracePeriodSeconds {grace} must exceed drain_seconds {drain:g}")
        live = server.get("livenessProbe") or {}
        if live and live.get("periodSeconds", 10) * live.get("failureThreshold", 3) < drain:
            errors.append("livenessProbe period x failureThreshold is shorter than drain_seconds")

    # Volumes: referenced ConfigMaps and PVCs are part of the overlay; mounts name existing volumes.
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for v in volumes.values():
        if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in names and not v["configMap"].get("optional"):
            errors.append(f"{ref(dep)}: volume {v['name']} uses ConfigMap {v['configMap']['name']}, not in the overlay")
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and ("PersistentVolumeClaim", claim) not in names:
            errors.append(f"{ref(dep)}: volume {v['name']} uses PVC {claim}, not in the overlay")
    for c in spec.get("initContainers", []) + spec["containers"]:
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                errors.append(f"{ref(dep)}: container {c['name']} mounts unknown volume {m['name']}")
        for e in c.get("env", []):
            sref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if sref and ("Secret", sref["name"]) not in names and not sref.get("optional"):
                errors.append(f"{ref(dep)}: env {e['name']} needs Secret {sref['name']}; mark it optional or add it")
    shm = next((v for v in volumes.values() if any(m["name"] == v["name"] and m["mountPath"] == "/dev/shm"
                                                    for m in server.get("volumeMounts", []))), None)
    if shm is None or (shm.get("emptyDir") or {}).get("medium") != "Memory":
        errors.append(f"{ref(dep)}: /dev/shm must be a memory-backed emptyDir (vLLM's shared memory)")

    # Services select the pods and target named container ports.
    container_ports = {p["name"] for p in server.get("ports", []) if "name" in p}
    services = _select(objs, "Service")
    for svc in services:
        if not _matches(svc["spec"].get("selector"), pod_labels):
            errors.append(f"{ref(svc)}: selector does not match the pods")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str) and tp not in container_ports:
                errors.append(f"{ref(svc)}: targetPort {tp!r} is not a container port of {server['name']}")
    for pdb in _select(objs, "PodDisruptionBudget"):
        if not _matches(pdb["spec"].get("selector"), pod_labels):
            errors.append(f"{ref(pdb)}: selector does not match the pods")
    for np_ in _select(objs, "NetworkPolicy"):
        if not _matches(np_["spec"].get("podSelector"), pod_labels):
            errors.append(f"{ref(np_)}: podSelector does not match the pods")
    for hpa in _select(objs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) != ("Deployment", dep["metadata"]["name"]):
            errors.append(f"{ref(hpa)}: scaleTargetRef {target['kind']}/{target['name']} is not {ref(dep)}")
        if "replicas" in dep["spec"]:
            errors.append(f"{ref(dep)}: spec.replicas is set while {ref(hpa)} owns the replica count")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            errors.append(f"{ref(hpa)}: minReplicas > maxReplicas")
        for m in hpa["spec"].get("metrics", []):
            if m["type"] == "Resource" and m["resource"]["target"]["type"] == "Utilization":
                res = m["resource"]["name"]
                if res not in (server.get("resources", {}).get("requests") or {}):
                    errors.append(f"{ref(hpa)}: {res} utilisation needs a {res} request on the container")
    for sm in _select(objs, "ServiceMonitor"):
        selected = [s for s in services if _matches(sm["spec"].get("selector"), s["metadata"].get("labels", {}))]
        if not selected:
            errors.append(f"{ref(sm)}: selects no Service")
        for ep in sm["spec"].get("endpoints", []):
            if "port" in ep and not any(p.get("name") == ep["port"] for s in selected for p in s["spec"]["ports"]):
                errors.append(f"{ref(sm)}: no selected Service has a port named {ep['port']!r}")
    return errors


# ----------------------------------------------------------------------------------------------- driver


def validate_objects(name: str, objs: list[dict[str, Any]], k8s_version: str = DEFAULT_K8S_VERSION) -> Report:
    report = Report(name=name, objects=len(objs))
    for obj in objs:
        how, errs = schema_errors(obj, k8s_version)
        report.errors += errs
        if not errs:
            if how == "crd":
                report.crd_checked += 1
            else:
                report.schema_valid += 1
    report.errors += policy_errors(objs)
    return report


def validate_overlay(path: Path, k8s_version: str = DEFAULT_K8S_VERSION, renderer: list[str] | None = None,
                     write: Path | None = None) -> Report:
    objs = render(path, renderer)
    if write is not None:
        write.mkdir(parents=True, exist_ok=True)
        (write / f"{path.name}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False), encoding="utf-8")
    return validate_objects(path.name, objs, k8s_version)


def print_summary(reports: list[Report], k8s_version: str, out=sys.stdout) -> None:
    crd_kinds = ", ".join(kind for _, kind in CRD_SCHEMAS)
    print(f"Kubernetes {k8s_version} schemas (strict); custom resources checked structurally: {crd_kinds}", file=out)
    how = ("nerve.service.config.load_config" if config_loader() is not None
           else "plain YAML only (the service package is not importable: install the project to check it fully)")
    print(f"server config.yaml checked with {how}", file=out)
    print(f"{'overlay':<14} {'objects':>7} {'schema ok':>9} {'crd ok':>6}  result", file=out)
    for r in reports:
        print(f"{r.name:<14} {r.objects:>7} {r.schema_valid:>9} {r.crd_checked:>6}  "
              f"{'OK' if r.ok else f'FAILED ({len(r.errors)})'}", file=out)
        for e in r.errors:
            print(f"  - {e}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overlay", action="append", type=Path,
                        help="kustomization directory to check (repeatable); default: every deploy/k8s/overlays/*")
    parser.add_argument("-k", "--kubernetes-version", default=DEFAULT_K8S_VERSION,
                        help=f"Kubernetes version whose schemas to use (default {DEFAULT_K8S_VERSION})")
    parser.add_argument("--write", type=Path, help="also write each rendered overlay to DIR/<overlay>.yaml")
    args = parser.parse_args(argv)

    paths = args.overlay or overlays()
    if not paths:
        print(f"no overlays found under {OVERLAYS_DIR}", file=sys.stderr)
        return 2
    try:
        renderer = find_renderer()
        reports = [validate_overlay(p, args.kubernetes_version, renderer, args.write) for p in paths]
    except (ToolMissing, RenderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(reports, args.kubernetes_version)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
