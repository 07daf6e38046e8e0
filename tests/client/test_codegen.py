"""The committed generated code matches the protos; the protos are buf-lint clean."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

GENERATE = REPO_ROOT / "proto" / "generate.py"
GENERATED = REPO_ROOT / "clients" / "python" / "nerve_client" / "_proto"
TOOLS_UNAVAILABLE = 3

pytestmark = pytest.mark.timeout(300)


def _generate(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(GENERATE), *args], capture_output=True, text=True, cwd=REPO_ROOT)
    if proc.returncode == TOOLS_UNAVAILABLE:
        pytest.skip(f"pinned grpcio-tools not installable here: {proc.stderr.strip()[-300:]}")
    return proc


def test_committed_code_is_up_to_date():
    proc = _generate("--check")
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


@pytest.fixture
def tree_copy(tmp_path: Path) -> tuple[Path, Path]:
    protos, out = tmp_path / "proto", tmp_path / "_proto"
    shutil.copytree(REPO_ROOT / "proto", protos, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.copytree(GENERATED, out, ignore=shutil.ignore_patterns("__pycache__"))
    return protos, out


def _check(protos: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return _generate("--check", "--proto-root", str(protos), "--out", str(out))


def test_check_passes_on_an_untouched_copy(tree_copy):
    assert _check(*tree_copy).returncode == 0


def test_check_fails_after_tampering_with_generated_code(tree_copy):
    protos, out = tree_copy
    target = out / "nerve" / "v1" / "types_pb2.pyi"
    target.write_text(target.read_text(encoding="utf-8") + "# hand edit\n", encoding="utf-8")
    proc = _check(protos, out)
    assert proc.returncode == 1
    assert "differs: nerve/v1/types_pb2.pyi" in proc.stderr and "+# hand edit" not in proc.stderr
    assert "-# hand edit" in proc.stderr


def test_check_fails_after_changing_a_proto(tree_copy):
    protos, out = tree_copy
    proto = protos / "nerve" / "v1" / "types.proto"
    text = proto.read_text(encoding="utf-8")
    proto.write_text(text.replace("  optional float score = 5;\n}", "  optional float score = 5;\n  bool extra = 6;\n}", 1),
                     encoding="utf-8")
    proc = _check(protos, out)
    assert proc.returncode == 1 and "differs: nerve/v1/types_pb2.py" in proc.stderr


def test_check_fails_on_missing_and_stale_files(tree_copy):
    protos, out = tree_copy
    (out / "nerve" / "v1" / "service_pb2_grpc.py").unlink()
    (out / "nerve" / "v1" / "old_pb2.py").write_text("", encoding="utf-8")
    proc = _check(protos, out)
    assert proc.returncode == 1
    assert "missing: nerve/v1/service_pb2_grpc.py" in proc.stderr
    assert "unexpected (stale?): nerve/v1/old_pb2.py" in proc.stderr


def test_generation_is_deterministic(tmp_path):
    for name in ("a", "b"):
        proc = _generate("--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_generated_imports_are_relative_and_do_not_touch_the_repo_nerve_package():
    for path in GENERATED.rglob("*.py*"):
        if path.suffix in (".py", ".pyi"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"^\s*(from|import) nerve\b", text, re.M), path
    import nerve  # the repository's own package

    types_pb2 = importlib.import_module("nerve_client._proto.nerve.v1.types_pb2")
    assert types_pb2.DESCRIPTOR.name == "nerve/v1/types.proto"
    assert not hasattr(nerve, "v1")


def test_generated_code_targets_the_pinned_minimum_runtimes():
    """The gencode's runtime checks ask for protobuf 5.27.2 and grpcio 1.66.2, as the SDK's pins say."""
    pb2 = (GENERATED / "nerve" / "v1" / "types_pb2.py").read_text(encoding="utf-8")
    assert "# Protobuf Python Version: 5.27.2" in pb2
    grpc_py = (GENERATED / "nerve" / "v1" / "service_pb2_grpc.py").read_text(encoding="utf-8")
    assert "GRPC_GENERATED_VERSION = '1.66.2'" in grpc_py
    pyproject = (REPO_ROOT / "clients" / "python" / "pyproject.toml").read_text(encoding="utf-8")
    assert '"grpcio>=1.66.2"' in pyproject and '"protobuf>=5.27.2,<8"' in pyproject


def test_health_client_coexists_with_grpcio_health_checking():
    # Both define grpc.health.v1 messages; ours live in a private pool, so importing both is fine.
    from grpc_health.v1 import health_pb2
    from nerve_client import _health

    wire = _health.HealthCheckRequest(service="nerve.v1.NerveService").SerializeToString()
    assert health_pb2.HealthCheckRequest.FromString(wire).service == "nerve.v1.NerveService"
    for status in ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"):
        reply = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.ServingStatus.Value(status))
        assert _health.status_name(_health.HealthCheckResponse.FromString(reply.SerializeToString())) == status


def _buf() -> str | None:
    found = shutil.which("buf")
    if found:
        return found
    candidate = Path(sys.executable).with_name("buf")
    return str(candidate) if candidate.exists() and os.access(candidate, os.X_OK) else None


def test_buf_lint_and_format():
    buf = _buf()
    if buf is None:
        pytest.skip("buf is not installed (pip install buf-bin)")
    lint = subprocess.run([buf, "lint", "proto"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run([buf, "format", "--diff", "--exit-code", "proto"], capture_output=True, text=True,
                         cwd=REPO_ROOT)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_reflection_serves_the_api(fake_server):
    """What grpcurl does: list services and resolve message types through server reflection."""
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(fake_server.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert "nerve.v1.NerveService" in db.get_services()
        file = db.FindFileContainingSymbol("nerve.v1.ExtractRequest")
        assert file.name == "nerve/v1/service.proto" and "nerve/v1/types.proto" in file.dependency
        assert [m.name for m in file.service[0].method] == ["Extract", "ExtractBatch", "Evaluate", "GetModelInfo"]
