"""The model registry and `nerve models pull`: checksums, idempotence, resolution."""

from __future__ import annotations

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
    from ner.card import TaskCard

    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "nerve_task.json"):
        assert (qwen_dir / name).is_file(), name
    card = TaskCard.load(qwen_dir)
    assert card.name == "cluener" and card.chat_template_sha256
