"""A Node.js client (grpc-js over the repository's protos, tests/client/node/) against a real nerve server on a loopback
port: entity offsets in UTF-16 code units are what ``text.slice`` needs in JavaScript, on texts with characters
beyond U+FFFF and combining characters, where code-point offsets differ; and server reflection
(``grpc.reflection.v1``) is enough for a Node client to find the service and call it.

The server is the real one (transport, servicer, offset conversion); its extractor answers fixed mentions per
text, grounded by the task contract's :func:`nerve.ner.parsing.ground` (a random tiny model finds nothing
predictable), so that no model is needed.

Node's packages come from ``npm ci`` on the committed package-lock.json, installed once per lock file under
``$NERVE_HOME/node/`` (``--prefer-offline``: npm's cache is used when it has them). Without ``node`` and ``npm``
the tests are skipped (``make node`` installs them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nerve.extraction import ExtractionResult, ExtractorBase, InputError
from nerve.ner.card import TaskCard
from nerve.ner.parsing import Mention, ground
from nerve.paths import nerve_home
from nerve.service.config import ServeConfig
from nerve.service.server import NerveServer
from tests.conftest import Running
from tests.helpers import StubEngine

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "client" / "node"
PROTO_ROOT = ROOT / "proto"

CASES = {
    # astral characters (2 UTF-16 units each) before the entities, a combining accent inside one
    "🙂🙂 Angela Merkel visited Paris with Ame\u0301lie .": [("name", "Angela Merkel"), ("address", "Paris"),
                                                              ("name", "Ame\u0301lie")],
    # an entity that holds astral characters, a family emoji (a ZWJ sequence of astral characters) before another
    "The 🙂Corp🙂 team met 👩\u200d👩\u200d👧 in Zu\u0308rich": [("company", "🙂Corp🙂"), ("address", "Zu\u0308rich")],
    # a CJK Extension B character (astral) before Chinese entities
    "𠀋彭小军认为，国内银行现在走的是台湾的发卡模式": [("name", "彭小军"), ("address", "台湾")],
    # combining characters only: code points and UTF-16 agree
    "Ame\u0301lie and Zoe\u0308 live in Montre\u0301al": [("name", "Ame\u0301lie"), ("name", "Zoe\u0308"),
                                                          ("address", "Montre\u0301al")],
}


class GroundingExtractor(ExtractorBase):
    """An extractor without a model: for each known text it grounds fixed mentions, as the real extractors ground
    a model's answer (offsets in code points); other texts get no entities."""

    def __init__(self, answers: dict[str, list[tuple[str, str]]]) -> None:
        self.card = TaskCard.preset("cluener")
        self.engine = StubEngine()
        self.answers = answers

    def prepare(self, text: str, labels=None, max_entities: int | None = None) -> None:
        if not text.strip():
            raise InputError("text is empty or whitespace only")

    async def extract(self, text: str, *, labels=None, max_entities: int | None = None,
                      request_id: str | None = None, prepared=None) -> ExtractionResult:
        grounding = ground(text, [Mention(label, surface) for label, surface in self.answers.get(text, [])])
        return ExtractionResult(grounding.entities, "", True, hallucinated=grounding.hallucinated)


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if path is None)
        pytest.skip(f"{missing} not installed: the Node.js client test needs Node.js and npm "
                    "(`make node`, or apt-get install nodejs npm)")
    return node, npm


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The Node packages of tests/client/node/package-lock.json, installed once per lock file (``npm ci``)."""
    _, npm = _tools()
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    home = nerve_home() / "node" / hashlib.sha256((NODE_DIR / "package.json").read_bytes() + lock).hexdigest()[:16]
    if (home / "node_modules" / ".nerve-complete").is_file():
        return home / "node_modules"
    staging = home.with_name(f"{home.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(NODE_DIR / name, staging / name)
    proc = subprocess.run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts"],
                          cwd=staging, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"npm ci failed in {staging}:\n{proc.stdout}\n{proc.stderr}"
    (staging / "node_modules" / ".nerve-complete").touch()
    if home.exists():  # installed meanwhile by another run
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.rename(home)
    return home / "node_modules"


@pytest.fixture
def server(loop_thread):
    """A real nerve server on 127.0.0.1:<free port> whose extractor answers :data:`CASES`."""
    srv = NerveServer(ServeConfig(port=0, metrics_port=0, host="127.0.0.1"))
    loop_thread.run(srv.start(load=False))
    r = Running(loop_thread, srv)
    r.make_ready(GroundingExtractor(CASES))
    yield r
    r.stop()


def run_node(node_modules: Path, script: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    node, _ = _tools()
    env = {**os.environ, "NODE_PATH": str(node_modules)}
    return subprocess.run([node, str(NODE_DIR / script), *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=120)


def utf16_offsets(text: str, start: int, end: int) -> tuple[int, int]:
    """Code-point offsets as UTF-16 code units, computed from Python's own UTF-16 encoder."""
    return len(text[:start].encode("utf-16-le")) // 2, len(text[:end].encode("utf-16-le")) // 2


def test_utf16_offsets_slice_the_entities_in_javascript(server, node_modules) -> None:
    cases = [{"text": text, "mentions": [surface for _, surface in mentions]} for text, mentions in CASES.items()]
    proc = run_node(node_modules, "offsets.js", server.target, str(PROTO_ROOT), stdin=json.dumps(cases))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answers = {(a["text"], a["unit"]): a["entities"] for a in map(json.loads, proc.stdout.splitlines())}
    assert len(answers) == 4 * len(CASES)  # every text, in every unit
    differ = 0
    for text, mentions in CASES.items():
        expected = ground(text, [Mention(label, surface) for label, surface in mentions]).entities
        code_points = [(e["start"], e["end"]) for e in answers[text, "OFFSET_UNIT_CODE_POINT"]]
        utf16 = [(e["start"], e["end"]) for e in answers[text, "OFFSET_UNIT_UTF16"]]
        assert code_points == [(e.start, e.end) for e in expected]
        assert utf16 == [utf16_offsets(text, e.start, e.end) for e in expected]
        assert [e["label"] for e in answers[text, "OFFSET_UNIT_UTF16"]] == [e.label for e in expected]
        differ += code_points != utf16
    assert differ == 3  # the texts with astral characters; combining characters alone change nothing


def test_the_node_client_finds_and_calls_the_service_by_reflection_v1(server, node_modules, tmp_path) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    descriptors = descriptor_pb2.FileDescriptorSet()
    reflection_pb2.DESCRIPTOR.CopyToProto(descriptors.file.add())
    path = tmp_path / "reflection.desc"
    path.write_bytes(descriptors.SerializeToString())
    text = next(iter(CASES))
    proc = run_node(node_modules, "reflection.js", server.target, str(path), text)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert {"nerve.v1.NerveService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= set(
        out["services"])
    assert "nerve.v1.NerveService" in out["reflected"]  # defined by what reflection returned
    assert [(e["slice"], e["start"], e["end"]) for e in out["entities"]] == [
        ("Angela Merkel", 5, 18), ("Paris", 27, 32), ("Ame\u0301lie", 38, 45)]


def test_the_lock_file_pins_what_package_json_asks_for() -> None:
    package = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((NODE_DIR / "package-lock.json").read_text(encoding="utf-8"))
    assert lock["lockfileVersion"] >= 2 and lock["packages"][""]["dependencies"] == package["dependencies"]
    for name, version in package["dependencies"].items():
        assert version[0].isdigit(), f"{name} is not pinned to one version: {version}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert all(p.get("integrity") for key, p in lock["packages"].items() if key)  # every package checksummed
    git = shutil.which("git")
    if git is None or subprocess.run([git, "rev-parse", "--git-dir"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout: cannot check that node_modules is ignored")
    ignored = subprocess.run([git, "check-ignore", "-q", str(NODE_DIR / "node_modules" / "x")], cwd=ROOT)
    assert ignored.returncode == 0, "tests/client/node/node_modules must be git-ignored"
