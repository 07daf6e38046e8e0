"""The README's examples run (against the fake server instead of 127.0.0.1:50051)."""

from __future__ import annotations

import re

import pytest
from nerve_client.pb import types_pb2 as tpb

from .conftest import REPO_ROOT

README = REPO_ROOT / "clients" / "python" / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)

pytestmark = pytest.mark.timeout(60)


def test_readme_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(fake_server, index, capsys):
    fake_server.servicer.datasets["conll2003/eng.testb"] = [tpb.Example(text="Ada", entities=[])]
    code = BLOCKS[index].replace("127.0.0.1:50051", fake_server.target)
    exec(compile(code, f"{README}:block{index}", "exec"), {"__name__": f"readme_block_{index}"})
    assert capsys.readouterr().out  # every example prints something
