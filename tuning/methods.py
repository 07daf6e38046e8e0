"""Tuning methods as a registry of small classes (no ``if method == ...`` launcher).

A method knows which model class it trains, how to load and prepare it, what it saves as the run's final
model, and whether it can run here at all. Add one by subclassing :class:`Method` and decorating it with
:func:`register`.

Prefix tuning and p-tuning are deliberately absent: see docs/tuning.md ("Why no prefix tuning").
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from nerve.hardware import DtypeChoice, choose_dtype

from .config import ConfigError, TuneConfig

logger = logging.getLogger("nerve.tuning")

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class MethodUnavailableError(RuntimeError):
    """The method cannot run in this environment (missing hardware or package)."""


def compute_dtype(cfg: TuneConfig) -> DtypeChoice:
    """The dtype this run computes in: ``model.dtype``, or for ``auto`` what the hardware does natively
    (bf16 on GPUs with bf16 and on CPUs with AVX-512 BF16/AMX; float32 elsewhere, where bf16 is emulated)."""
    return choose_dtype(cfg.model.dtype, purpose="train")


def mixed_precision_bf16(cfg: TuneConfig) -> bool:
    """Whether the Trainer runs bf16 autocast: ``train.bf16`` if set, else when the compute dtype is bf16."""
    if cfg.train.bf16 is not None:
        return cfg.train.bf16
    return compute_dtype(cfg).dtype == "bfloat16"


def trainable_summary(model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{train:,} trainable of {total:,} parameters ({100 * train / max(total, 1):.2f}%)"


class Method:
    """Base class: a tuning method."""

    name: ClassVar[str]
    kind: ClassVar[str] = "causal-lm"
    """``causal-lm`` (served by the engine) or ``token-cls`` (encoder tagger): the key of its recipe in
    ``nerve.tuning.recipes.RECIPES`` (card, features, evaluation)."""
    summary: ClassVar[str] = ""
    adapter: ClassVar[bool] = False
    """Whether the run's final model is an adapter to merge at export."""
    continues_adapters: ClassVar[bool] = False
    """Whether ``method.adapter_init`` (continue a saved LoRA adapter) applies to this method."""

    def check_available(self, cfg: TuneConfig) -> None:
        """Raise :class:`MethodUnavailableError` when the method cannot run here."""

    def check_config(self, cfg: TuneConfig) -> None:
        """Raise :class:`ConfigError` for settings this method cannot honour, before any data or model is loaded."""
        if cfg.method.adapter_init and not self.continues_adapters:
            able = ", ".join(n for n, m in METHODS.items() if m.continues_adapters)
            raise ConfigError(f"method.adapter_init applies to method {able} only, not {self.name}: "
                              f"unset it or set method.name to {able}")

    def train_dtype(self, cfg: TuneConfig) -> torch.dtype:
        """Dtype of the loaded weights. Trainable weights stay float32 master weights under ``auto`` (bf16
        mixed precision, where native, speeds up their matmuls); an explicit ``model.dtype`` wins."""
        if cfg.model.dtype != "auto":
            return TORCH_DTYPES[cfg.model.dtype]
        return torch.float32

    def load(self, model_path: Path, cfg: TuneConfig, **kw) -> nn.Module:
        raise NotImplementedError

    def _load_causal(self, model_path: Path, cfg: TuneConfig, **extra) -> nn.Module:
        from transformers import AutoModelForCausalLM

        kwargs = {"dtype": self.train_dtype(cfg), "attn_implementation": cfg.model.attn_implementation, **extra}
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
        model.config.use_cache = False
        return model

    def save_final(self, trainer, out_dir: Path, **kw) -> Path:
        """Save the trained model (an adapter or full weights) with its tokenizer; called on every process.

        ``Trainer.save_model`` is collective: it gathers DeepSpeed ZeRO-3 / FSDP shards and writes on the main
        process (an adapter for PEFT models, the full weights otherwise).
        """
        trainer.save_model(str(out_dir))
        return out_dir


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    try:
        return METHODS[name]()
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


# --- causal-LM methods ---------------------------------------------------------------------------------


@register
class Full(Method):
    name = "full"
    summary = "all weights trainable (float32 master weights; lr ~1e-5 to 5e-5)"

    def load(self, model_path: Path, cfg: TuneConfig, **kw) -> nn.Module:
        model = self._load_causal(model_path, cfg)
        for p in model.parameters():
            p.requires_grad_(True)
        return model


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of transformer blocks: the longest ``ModuleList`` named ``layers``/``h``/``layer``."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in {"layers", "h", "layer", "blocks"}:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise ValueError("cannot find the transformer layers of this model for the freeze method")
    return best


@register
class Freeze(Method):
    name = "freeze"
    summary = "only the last N transformer layers trainable (method.freeze_trainable_layers)"

    def load(self, model_path: Path, cfg: TuneConfig, **kw) -> nn.Module:
        model = self._load_causal(model_path, cfg)
        n = cfg.method.freeze_trainable_layers
        name, layers = decoder_layers(model)
        if n == 0 or abs(n) > len(layers):
            raise ConfigError(f"method.freeze_trainable_layers must be in [-{len(layers)}, {len(layers)}] and not 0")
        chosen = range(len(layers) - n, len(layers)) if n > 0 else range(0, -n)
        prefixes = tuple(f"{name}.{i}." for i in chosen)
        extra = tuple(cfg.method.freeze_extra_modules)
        for pname, p in model.named_parameters():
            p.requires_grad_(pname.startswith(prefixes) or any(x in pname for x in extra))
        if cfg.train.gradient_checkpointing:
            model.enable_input_require_grads()
        return model


def _lora_targets(targets: list[str]) -> str | list[str]:
    return "all-linear" if targets == ["all-linear"] else list(targets)


@register
class Lora(Method):
    name = "lora"
    summary = "low-rank adapters on the linear layers (lr ~1e-4 to 3e-4); merged at export"
    adapter = True
    continues_adapters = True

    def check_config(self, cfg: TuneConfig) -> None:
        super().check_config(cfg)
        if cfg.method.adapter_init:
            initial_adapter(cfg)

    def train_dtype(self, cfg: TuneConfig) -> torch.dtype:
        if cfg.model.dtype != "auto":
            return TORCH_DTYPES[cfg.model.dtype]
        # The base is frozen: in bf16 where the hardware computes bf16 natively (half the memory, 2-3x the matmul
        # speed); the adapters stay float32 (PEFT's default). Where bf16 is emulated, float32.
        return TORCH_DTYPES[compute_dtype(cfg).dtype]

    def lora_config(self, cfg: TuneConfig):
        from peft import LoraConfig, TaskType

        m = cfg.method
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=m.lora_r, lora_alpha=m.lora_alpha,
                          lora_dropout=m.lora_dropout, target_modules=_lora_targets(m.target_modules))

    def prepare_base(self, model: nn.Module, cfg: TuneConfig) -> nn.Module:
        if cfg.train.gradient_checkpointing:
            model.enable_input_require_grads()
        return model

    def load(self, model_path: Path, cfg: TuneConfig, **kw) -> nn.Module:
        from peft import PeftModel, get_peft_model

        model = self.prepare_base(self._load_causal(model_path, cfg), cfg)
        if cfg.method.adapter_init:
            folder = initial_adapter(cfg)
            logger.info("continuing the LoRA adapter in %s", folder)
            return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
        return get_peft_model(model, self.lora_config(cfg))


def initial_adapter(cfg: TuneConfig) -> Path:
    """The adapter folder ``method.adapter_init`` names, after checking that it is a LoRA adapter whose rank,
    alpha and targets are the ones the config states (so that the run record tells the truth about the run)."""
    import json

    from nerve.models import ModelError, get_spec, verify_adapter

    from .config import expand_path

    name = cfg.method.adapter_init or ""
    folder = Path(expand_path(name) or name)
    if not folder.is_dir():
        try:
            folder = verify_adapter(get_spec(name))
        except ModelError as exc:
            raise ConfigError(f"method.adapter_init: {name!r} is neither an adapter folder nor a tuned nerve "
                              f"model ({exc})") from None
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"method.adapter_init: {folder} has no adapter_config.json")
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    if saved.get("peft_type") != "LORA":
        raise ConfigError(f"method.adapter_init: {config_file} is a {saved.get('peft_type')} adapter, not LoRA")
    m = cfg.method
    wanted = {"r": m.lora_r, "lora_alpha": m.lora_alpha}
    if m.target_modules != ["all-linear"]:
        wanted["target_modules"] = sorted(m.target_modules)
    found = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"),
             "target_modules": sorted(saved.get("target_modules") or [])}
    differ = [f"{k} {found[k]!r} (config: {v!r})" for k, v in wanted.items() if found[k] != v]
    if differ:
        raise ConfigError(f"method.adapter_init: the adapter in {folder} has " + ", ".join(differ) +
                          "; set the method's fields to the adapter's")
    return folder


@register
class QLora(Lora):
    name = "qlora"
    summary = "LoRA on a 4- or 8-bit quantized frozen base (CUDA + bitsandbytes only)"
    continues_adapters = False

    def check_available(self, cfg: TuneConfig) -> None:
        missing = []
        if not torch.cuda.is_available():
            missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
        if importlib.util.find_spec("bitsandbytes") is None:
            missing.append("the bitsandbytes package (pip install 'nerve[qlora]')")
        if missing:
            raise MethodUnavailableError(
                "method qlora needs " + " and ".join(missing) + ". bitsandbytes quantization runs on NVIDIA GPUs "
                "only; on this machine use method lora (same adapters on an unquantized base)."
            )

    def train_dtype(self, cfg: TuneConfig) -> torch.dtype:
        return torch.bfloat16 if compute_dtype(cfg).dtype == "bfloat16" else torch.float16

    def load(self, model_path: Path, cfg: TuneConfig, **kw) -> nn.Module:
        from peft import get_peft_model, prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        self.check_available(cfg)
        if cfg.method.qlora_bits == 4:
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=self.train_dtype(cfg))
        else:
            quant = BitsAndBytesConfig(load_in_8bit=True)
        model = self._load_causal(model_path, cfg, quantization_config=quant)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
        return get_peft_model(model, self.lora_config(cfg))


# --- token classification ------------------------------------------------------------------------------


@register
class TokenCls(Method):
    name = "token-cls"
    kind = "token-cls"
    summary = "encoder + BIO token classification (softmax or CRF head; optional LoRA)"

    def load(self, model_path: Path, cfg: TuneConfig, *, tags: list[str] | None = None, **kw) -> nn.Module:
        from .encoder import build_tagger

        if not tags:
            raise ValueError("token-cls needs the tag list")
        m = cfg.method
        lora = None
        if m.token_cls_lora:
            targets = m.target_modules if m.target_modules != ["all-linear"] else ["query", "key", "value", "dense"]
            lora = {"r": m.lora_r, "alpha": m.lora_alpha, "dropout": m.lora_dropout, "target_modules": targets}
        return build_tagger(model_path, tags, crf=m.crf, lora=lora, dtype=self.train_dtype(cfg))

    def save_final(self, trainer, out_dir: Path, *, max_length: int = 512, **kw) -> Path:
        from nerve.engines.token_tagger import save_tagger

        if trainer.is_world_process_zero():  # token-cls models are small: no sharded saving
            save_tagger(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, out_dir,
                        max_length=max_length)
        return out_dir
