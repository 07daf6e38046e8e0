"""Fixtures of the deployment tests: deploy/validate.py as a module and the rendered overlays."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
OVERLAYS = ("cpu", "gpu-4090")


def _load_validate() -> ModuleType:
    name = "nerve_deploy_validate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEPLOY_DIR / "validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def validate() -> ModuleType:
    return _load_validate()


def require_kubectl() -> None:
    """Skip unless the overlays can be rendered (kubectl) and validated (kubernetes-validate)."""
    if not (shutil.which("kubectl") or shutil.which("kustomize")):
        pytest.skip("kubectl is not installed (apt-get install -y kubectl; `make test` installs it in CI): "
                    "cannot render the kustomize overlays")
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency (Kubernetes schemas)")


@pytest.fixture(scope="session")
def rendered(validate: ModuleType) -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered once: {overlay name: objects}."""
    require_kubectl()
    return {name: validate.render(DEPLOY_DIR / "k8s" / "overlays" / name) for name in OVERLAYS}


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind}{'/' + name if name else ''}, found {len(found)}"
    return found[0]
