"""The layers of docs/architecture.md, checked on every import statement (lazy ones inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"ner": "nerve.ner", "nerve": "nerve", "service": "nerve.service", "tuning": "nerve.tuning"}
"""Each source folder and the import package it is installed as (pyproject.toml's package-dir)."""

LAYERS: dict[str, int] = {
    "nerve.ner": 0,  # the task contract
    "nerve": 1,  # paths, hardware, settings, the model registry, report files
    "nerve.engines": 2,  # loaded models behind one protocol
    "nerve.extraction": 3,  # texts in, grounded entities out; evaluation
    "nerve.service": 4,  # the gRPC server
    "nerve.tuning": 4,  # fine-tuning and export, beside the server
    "nerve.cli": 5,  # the `nerve` command on top
}
"""Layer of each package (a module belongs to the longest prefix listed). A module may import its own layer's
package and lower layers, never a higher one, and never the other package of its layer."""


def _module_name(path: Path) -> str:
    """The name a source file is imported as: ``service/servicer.py`` is ``nerve.service.servicer``."""
    folder, *parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([FOLDERS[folder], *parts])


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def _ours(module: str) -> bool:
    return module == "nerve" or module.startswith("nerve.")


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file; ``from a import b`` counts ``a.b`` when it
    is a module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    return {m for m in found if _ours(m) and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def package_of(module: str) -> str:
    """The longest :data:`LAYERS` key that ``module`` is in."""
    return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_lazy_and_relative_imports(tmp_path) -> None:
    f = tmp_path / "x.py"
    f.write_text("from .y import z\n\ndef f():\n    from nerve.tuning import run\n    import nerve.cli\n")
    got = imports_of("nerve.service.x", f, {"nerve.tuning.run", "nerve.service.y"})
    assert got == {"nerve.service.y", "nerve.tuning", "nerve.tuning.run", "nerve.cli"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules(graph) -> None:
    assert _cycles(graph) == []


def test_no_import_cycle_between_packages(graph) -> None:
    folders: dict[str, set[str]] = {}
    modules = _modules()
    for name, targets in graph.items():
        here = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]
        for t in targets:
            there = t if t in modules and modules[t].name == "__init__.py" else t.rpartition(".")[0] or t
            if there != here:
                folders.setdefault(here, set()).add(there)
        folders.setdefault(here, set())
    assert _cycles(folders) == []


def test_imports_point_down_the_layers(graph) -> None:
    wrong = []
    for name, targets in sorted(graph.items()):
        mine = package_of(name)
        for t in sorted(targets):
            theirs = package_of(t)
            if theirs == mine:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{name} ({mine}) imports {t} ({theirs})")
    assert wrong == []


def test_nothing_imports_the_cli() -> None:
    users = []
    for folder in ("ner", "nerve", "service", "tuning", "bench", "loadtests", "clients"):
        for p in (ROOT / folder).rglob("*.py"):
            if p.is_relative_to(ROOT / "nerve" / "cli"):
                continue
            name = _module_name(p) if folder in FOLDERS else ".".join(p.relative_to(ROOT).with_suffix("").parts)
            if any(m == "nerve.cli" or m.startswith("nerve.cli.") for m in imports_of(name, p, set())):
                users.append(name)
    assert users == []


def test_the_sdk_imports_no_server_code() -> None:
    sdk = ROOT / "clients" / "python" / "nerve_client"
    offenders = [str(p.relative_to(ROOT)) for p in sdk.rglob("*.py")
                 if imports_of("nerve_client.x", p, set()) and "_proto" not in p.parts]
    assert offenders == []


def test_the_server_uses_the_sdks_public_generated_modules() -> None:
    import tomllib

    private = []
    for folder in ("service", "nerve", "tuning"):
        for p in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(p.read_text(encoding="utf-8"))
            private += [f"{p.relative_to(ROOT)}: {n.module}" for n in ast.walk(tree)
                        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("nerve_client._proto")]
    assert private == []
    sdk = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"nerve-client=={sdk['version']}" in root["dependencies"]


def test_the_run_loop_does_not_branch_on_the_kind_of_method() -> None:
    """``run_config`` asks the method's recipe (``nerve.tuning.recipes``), never which kind of method it runs."""
    tree = ast.parse((ROOT / "tuning" / "run.py").read_text(encoding="utf-8"))
    run_config = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "run_config")
    for node in ast.walk(run_config):
        if isinstance(node, ast.If | ast.IfExp):
            names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            attrs = {n.attr for n in ast.walk(node.test) if isinstance(n, ast.Attribute)}
            assert not ({"causal", "kind"} & (names | attrs)), f"run_config branches on {ast.unparse(node.test)}"


def test_tests_mirror_the_packages() -> None:
    """Each test module sits in the folder of what it tests; only this whole-tree check sits at the top."""
    folders = {"ner", "nerve", "service", "tuning", "client", "deploy", "loadtests", "bench"}
    misplaced = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                 if p.parent.name not in folders and p.name != "test_architecture.py"]
    assert not misplaced, f"test modules outside the package folders: {misplaced}"
    for folder in folders:
        assert (ROOT / "tests" / folder / "__init__.py").is_file()


OLD_TOP_LEVEL = ("ner", "service", "tuning")


def test_nothing_imports_the_folders_by_their_own_names() -> None:
    """The installed names are nerve.ner, nerve.service and nerve.tuning; from the repository root the folders
    are importable by their bare names too, and a module imported both ways would exist twice."""
    wrong = []
    files = [p for d in (*FOLDERS, "tests", "bench", "loadtests", "deploy", "examples", "proto", ".ci")
             for p in sorted((ROOT / d).rglob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] in OLD_TOP_LEVEL]
    assert wrong == []


def test_the_wheel_installs_one_top_level_package() -> None:
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert {p.split(".")[0] for p in tool["packages"]} == {"nerve"}
    assert tool["package-dir"] == {name: folder for folder, name in FOLDERS.items()}
    packages = {_module_name(p.parent / "__init__.py") for folder in FOLDERS
                for p in (ROOT / folder).rglob("__init__.py")}
    assert set(tool["packages"]) == packages  # every package folder is installed
