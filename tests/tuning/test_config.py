"""Typed config: YAML + ``--section.field value`` overrides, validation, help, shipped example configs."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import yaml

from nerve.tuning.config import SECTIONS, ConfigError, TuneConfig, config_help, expand_path, load_config
from tests.tuning.conftest import EXAMPLES


def test_yaml_and_overrides_round_trip(tmp_path) -> None:
    cfg = load_config(EXAMPLES / "tiny_test.yaml", [
        "--train.max_steps", "11", "--method.lora_r=2", "--method.target_modules", "q_proj,v_proj",
        "--train.learning_rate", "1e-4", "--train.bf16", "auto", "--data.max_length", "null",
        "--train.packing", "true", "--data.labels", "[PER, LOC]", "--model.name_or_path", "1e-4",
    ])
    assert cfg.train.max_steps == 11 and cfg.method.lora_r == 2
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.train.bf16 is None and cfg.data.max_length is None and cfg.train.packing is True
    assert cfg.data.labels == ["PER", "LOC"]
    assert cfg.model.name_or_path == "1e-4"  # a string field keeps the raw text
    assert cfg.data.task == "conll2003"  # from the file
    saved = cfg.save(tmp_path / "config.yaml")
    again = load_config(saved)
    assert again == cfg
    assert TuneConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize("override, message", [
    (["--train.max_step", "3"], "did you mean 'max_steps'"),
    (["--trian.max_steps", "3"], "did you mean 'train'"),
    (["--train.max_steps", "three"], "expected an integer"),
    (["--train.packing", "maybe"], "expected true or false"),
    (["--method.qlora_bits", "3"], "not one of 4, 8"),
    (["--train.max_steps"], "missing value"),
    (["train.max_steps=3"], "expected --section.field"),
    (["--max_steps", "3"], "expected --section.field"),
])
def test_bad_overrides_are_clear_errors(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(EXAMPLES / "tiny_test.yaml", override)


def test_bad_yaml_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: [1, 2]\n")
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
        load_config(bad)
    bad.write_text("tarin: {}\n")
    with pytest.raises(ConfigError, match="unknown section 'tarin'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_has_help() -> None:
    for klass in SECTIONS.values():
        for f in fields(klass):
            assert f.metadata.get("help"), f"{klass.__name__}.{f.name} has no help"
    flags = {h.flag for h in config_help()}
    assert "--train.max_steps" in flags and "--method.lora_r" in flags and "--eval.with_engine" in flags


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path) -> None:
    data = yaml.safe_load(path.read_text())
    if "compute_environment" in data:  # the accelerate config
        assert data["distributed_type"] == "MULTI_GPU" and data["num_processes"] >= 1
        return
    cfg = load_config(path)
    if cfg.data.sources:  # a mixture: each source names its files
        assert all(s.train_file for s in cfg.data.sources) and cfg.data.label_sampling
    else:
        assert cfg.data.train_file and cfg.data.task in ("conll2003", "cluener")
    assert cfg.method.name in ("lora", "token-cls")


@pytest.mark.parametrize("name, stage", [("ds_zero2.json", 2), ("ds_zero3.json", 3)])
def test_deepspeed_configs(name, stage) -> None:
    ds = json.loads((EXAMPLES / name).read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled in by the Trainer from the tuning config


def test_expand_path(monkeypatch) -> None:
    monkeypatch.setenv("NERVE_DATASETS", "/data/ner")
    assert expand_path("${NERVE_DATASETS}/conll2003/eng.train") == "/data/ner/conll2003/eng.train"
    monkeypatch.delenv("NOPE_VAR", raising=False)
    with pytest.raises(ConfigError, match="NOPE_VAR"):
        expand_path("${NOPE_VAR}/x")


def test_module_entry_point_lists_the_config_fields(capsys) -> None:
    from nerve.tuning.__main__ import main

    assert main(["--help-config"]) == 0
    out = capsys.readouterr().out
    assert "| `--train.packing` | bool | `False` |" in out


def test_report_to_names_are_checked(tmp_path) -> None:
    import importlib.util

    from nerve.tuning.config import ConfigError, load_config
    from nerve.tuning.run import trainer_reporters

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  report_to: [wandbb]\n")
    with pytest.raises(ConfigError, match="unknown logger 'wandbb' \\(did you mean 'wandb'\\?\\)"):
        load_config(bad)
    bad.write_text("train:\n  report_to: [none, tensorboard]\n")
    with pytest.raises(ConfigError, match="'none' cannot be combined"):
        load_config(bad)
    assert trainer_reporters(["tensorboard"]) == "none"  # nerve's own callback, not the Trainer's
    assert trainer_reporters(["none"]) == "none"
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="'wandb' needs its package installed"):
            trainer_reporters(["tensorboard", "wandb"])
    else:
        assert trainer_reporters(["tensorboard", "wandb"]) == ["wandb"]
