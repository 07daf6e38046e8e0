"""Fixtures of the tuning tests: tiny random models with real tokenizers, and small synthetic datasets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nerve.ner.types import Entity, Example

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples" / "tune"


def _model_dir(*names: str) -> Path | None:
    from nerve.paths import models_dir

    for name in names:
        if (models_dir() / name / "tokenizer_config.json").is_file():
            return models_dir() / name
    return None


@pytest.fixture(scope="session")
def chat_tokenizer_dir() -> Path:
    """The real Qwen2.5 tokenizer (else SmolLM2's); skips when neither model has been pulled."""
    found = _model_dir("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
    if found is None:
        pytest.skip("neither qwen2.5-coder-0.5b-instruct nor smollm2-135m-instruct is pulled (nerve models pull ...)")
    return found


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    found = _model_dir("minilm-l6")
    if found is None:
        pytest.skip("minilm-l6 is not pulled (nerve models pull minilm-l6)")
    return found


def build_tiny_qwen(out: Path, tokenizer_dir: Path, *, tie: bool = True, seed: int = 0) -> Path:
    """A random Qwen2 (hidden 64, 2 layers, 2 heads, 1 KV head) with a real tokenizer, saved in bf16."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from nerve.ner.card import TaskCard

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=8192, tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    eos = sorted({tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} - {None, tok.unk_token_id})
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    TaskCard.preset("conll2003", base_model="tiny-random-qwen2").with_chat_template(tok.chat_template).save(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory, chat_tokenizer_dir) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen"), chat_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A random 2-layer BERT (hidden 32) with the real MiniLM (uncased WordPiece) tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --- data ----------------------------------------------------------------------------------------------

PEOPLE = ["John Smith", "Mary Jones", "Peter Blackburn", "Anna Lee", "Werner Zwingmann", "Nikolaus van der Pas"]
PLACES = ["Paris", "New York", "Berlin", "Tokyo", "Brussels", "Britain"]
ORGS = ["Acme Corp", "Reuters", "the European Commission", "Ajax", "Deutsche Bank"]
TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .",
    "{PER} visited {LOC} on Monday .",
    "{ORG} said on Friday it would open an office in {LOC} .",
    "Shares of {ORG} rose 3 percent .",
    "Nothing happened today .",
]


def synth_examples(n: int, seed: int = 0) -> list[Example]:
    """English sentences with PER / LOC / ORG entities (offsets computed, not typed)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tpl = TEMPLATES[i % len(TEMPLATES)]
        values = {"PER": rng.choice(PEOPLE), "LOC": rng.choice(PLACES), "ORG": rng.choice(ORGS)}
        text, ents = "", []
        for part in tpl.replace("}", "{").split("{"):
            if part in values:
                ents.append((len(text), len(text) + len(values[part]), part))
                text += values[part]
            else:
                text += part
        out.append(Example(text, [Entity.at(text, s, e, lab) for s, e, lab in ents], id=f"synth:{i}"))
    return out


def write_jsonl(path: Path, examples: list[Example]) -> Path:
    path.write_text("".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in examples), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def synth_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    return {"train": write_jsonl(d / "train.jsonl", synth_examples(24, seed=1)),
            "dev": write_jsonl(d / "dev.jsonl", synth_examples(6, seed=2))}


def tiny_overrides(model_dir: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """Overrides that point examples/tune/tiny_test.yaml at the tiny model and the synthetic data."""
    return ["--model.name_or_path", str(model_dir), "--data.train_file", str(files["train"]),
            "--data.dev_file", str(files["dev"]), "--train.output_dir", str(out), *extra]


def overfit_tagger(model_dir: Path, examples: list[Example], tmp: Path, steps: int = 30) -> Path:
    """Train a tiny CRF tagger on ``examples`` (also its dev set) until it reproduces them; returns the run dir."""
    from nerve.tuning.run import tune

    files = {"train": write_jsonl(tmp / "t.jsonl", examples), "dev": write_jsonl(tmp / "d.jsonl", examples)}
    return tune(EXAMPLES / "tiny_test.yaml", tiny_overrides(
        model_dir, files, tmp / "run", "--method.name", "token-cls", "--method.crf", "true", "--train.max_steps",
        str(steps), "--train.eval_steps", "0", "--train.save_steps", str(steps), "--train.learning_rate", "5e-3",
        "--train.per_device_train_batch_size", str(len(examples)), "--train.logging_steps", "20"))
