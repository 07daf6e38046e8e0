"""One settings loader for `nerve serve` and `nerve tune`: defaults < YAML < environment < flags, errors that
name the layer (file and line, environment, flags) and the closest known setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nerve.service.config import load_config as load_serve
from nerve.settings import ConfigError, Text, coerce, merge, parse_flags
from nerve.tuning.config import load_config as load_tune


def test_each_layer_overrides_the_one_before_for_the_server(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("max_queue: 100\nport: 7000\nmax_text_chars: 500\nengine:\n  max_model_len: 1024\n  dtype: float32\n")
    cfg = load_serve(path, {"max_text_chars": 300, "engine": {"dtype": "bfloat16"}},
                     environ={"NERVE_PORT": "7001", "NERVE_MAX_TEXT_CHARS": "400", "NERVE_ENGINE_MAX_MODEL_LEN": "2048"})
    assert cfg.max_queue == 100  # the file
    assert cfg.port == 7001 and cfg.engine.max_model_len == 2048  # the environment over the file
    assert cfg.max_text_chars == 300 and cfg.engine.dtype == "bfloat16"  # flags over both
    assert cfg.max_batch_texts == 64  # a default


def test_each_layer_overrides_the_one_before_for_tuning(tmp_path: Path) -> None:
    path = tmp_path / "tune.yaml"
    path.write_text("train:\n  max_steps: 5\n  learning_rate: 0.001\n  seed: 3\nmethod:\n  name: lora\n")
    cfg = load_tune(path, ["--train.seed", "9"],
                    environ={"NERVE_TUNE_TRAIN_MAX_STEPS": "7", "NERVE_TUNE_TRAIN_SEED": "8",
                             "NERVE_TUNE_METHOD_LORA_R": "4"})
    assert cfg.train.learning_rate == 0.001  # the file
    assert cfg.train.max_steps == 7 and cfg.method.lora_r == 4  # the environment over the file
    assert cfg.train.seed == 9  # flags over both
    assert load_tune(path, environ={}).train.max_steps == 5


@pytest.mark.parametrize("where, kwargs, message", [
    ("environment", {"environ": {"NERVE_MAX_QUEUE": "many"}}, r"environment\.max_queue: expected an integer"),
    ("flags", {"overrides": {"max_quue": 3}}, r"flags: unknown setting 'max_quue' \(did you mean 'max_queue'\?\)"),
    ("flags", {"overrides": {"engine": {"dtyp": "float32"}}}, r"flags: engine: unknown setting 'dtyp'"),
    ("flags", {"overrides": {"engine": 3}}, r"flags: setting 'engine' must be a mapping"),
])
def test_an_error_names_its_layer(where, kwargs, message) -> None:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError, match=message):
        load_serve(**kwargs)


def test_a_file_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("port: 1\nmax_queue: [1\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: invalid YAML"):
        load_serve(path, environ={})
    path.write_text("port: 1\nnope: 2\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown setting 'nope'"):
        load_serve(path, environ={})
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_serve(path, environ={})


def test_text_values_are_read_by_the_fields_type() -> None:
    assert coerce(Text("true"), bool) is True and coerce(Text("off"), bool) is False
    assert coerce(Text("12"), int) == 12 and coerce(12.0, int) == 12
    with pytest.raises(TypeError):
        coerce(12.5, int)
    assert coerce(Text("a, b"), list[str]) == ["a", "b"] and coerce(Text("[a, b]"), list[str]) == ["a", "b"]
    assert coerce(Text(""), int | None) is None and coerce(Text("auto"), bool | None) is None
    assert coerce(Text("auto"), str | None) == "auto"  # text keeps the word


def test_an_empty_secret_is_refused_not_dropped() -> None:
    with pytest.raises(ValueError, match="auth_token is empty"):
        load_serve(environ={"NERVE_AUTH_TOKEN": ""})
    assert load_serve(environ={"NERVE_AUTH_TOKEN": "s3cret"}).auth_token == "s3cret"


def test_flags_and_merge() -> None:
    assert parse_flags(["--max_queue", "3", "--engine.dtype=float32", "--drain-seconds", "5"]) == {
        "max_queue": "3", "engine": {"dtype": "float32"}, "drain_seconds": "5"}
    with pytest.raises(ConfigError, match="expected --section.field"):
        parse_flags(["--max_steps", "3"], sections=True)
    assert merge({"a": 1, "e": {"x": 1, "y": 2}}, {"e": {"y": 3}}, {"b": 2}) == {"a": 1, "b": 2, "e": {"x": 1, "y": 3}}


def test_nerve_serve_takes_every_setting_as_a_flag(monkeypatch) -> None:
    import nerve.service.server
    from nerve.cli import app

    seen = []

    async def fake_serve(cfg, merge=None) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr(nerve.service.server, "serve", fake_serve)
    runner = CliRunner()
    ok = runner.invoke(app, ["serve", "--port", "6001", "--max_queue", "32", "--engine.dtype", "float32",
                             "--max_batch_texts", "16"])
    assert ok.exit_code == 0, ok.output
    assert (seen[0].port, seen[0].max_queue, seen[0].engine.dtype, seen[0].max_batch_texts) == (
        6001, 32, "float32", 16)
    bad = runner.invoke(app, ["serve", "--max_quue", "3"])
    assert bad.exit_code == 2 and "did you mean 'max_queue'" in bad.output
