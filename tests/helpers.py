"""Builders of tiny random models for fast tests (PEFT's test-matrix style)."""

from __future__ import annotations

from pathlib import Path


def build_tiny_causal_lm(out: Path, tokenizer_src: Path, *, task: str = "cluener", hidden: int = 64,
                         layers: int = 2, seed: int = 0) -> Path:
    """Save a random Qwen2 with ``tokenizer_src``'s tokenizer (and chat template) plus a task card."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from nerve.ner.card import TaskCard

    tok = AutoTokenizer.from_pretrained(tokenizer_src)
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    eos = sorted({tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")})
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    TaskCard.preset(task, base_model="tiny-random-qwen2").with_chat_template(tok.chat_template).save(out)
    return out


class LoopThread:
    """An asyncio loop on a background thread, so one engine can serve many synchronous tests."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 600):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class StubEngine:
    """An :class:`nerve.engines.base.Engine` that loads nothing, for extractors that compute their own answers."""

    version = "stub 0"
    tokenizer = None
    max_model_len = 4096
    structured_backend = "none"
    dead = False
    death = ""

    def __init__(self, capacity: int = 64) -> None:
        from nerve.hardware import DtypeChoice

        self.dtype = DtypeChoice("float32", "a stub engine")
        self.capacity = capacity
        self.closed = False

    def stalled(self, seconds: float) -> bool:
        return False

    async def check_health(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True
