"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The shared NER datasets folder: ``$NERVE_DATASETS``, else ``../shared/datasets`` beside the repo.

    Skips the test when the folder is absent (the data is never copied into the repo).
    """
    env = os.environ.get("NERVE_DATASETS")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "datasets"
    if not path.is_dir():
        source = "$NERVE_DATASETS" if env else "../shared/datasets beside the repo"
        pytest.skip(f"shared NER datasets not found at {path} ({source}); set NERVE_DATASETS to run data tests")
    return path


def pulled_model(name: str) -> Path:
    """A registry model's folder; skips when it has not been pulled (``make test`` pulls them first)."""
    from nerve.models import is_pulled, model_path

    if not is_pulled(name):
        pytest.skip(f"model {name} is not pulled; run `nerve models pull {name}`")
    return model_path(name)


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    return pulled_model("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    return pulled_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory, qwen_dir: Path) -> Path:
    """A random 2-layer Qwen2 (hidden 64) with the real Qwen tokenizer and chat template, and a CLUENER card."""
    from tests.helpers import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-qwen"), qwen_dir, task="cluener")


@pytest.fixture(scope="session")
def loop_thread():
    from tests.helpers import LoopThread

    lt = LoopThread()
    yield lt
    lt.close()


def start_engine(loop_thread, model_dir: Path, **overrides):
    from nerve.engines.vllm import EngineConfig, VllmEngine

    cfg = EngineConfig(model=str(model_dir), max_model_len=overrides.pop("max_model_len", 8192),
                       kv_cache_gb=overrides.pop("kv_cache_gb", 1.0), **overrides)
    return loop_thread.run(VllmEngine.start(cfg))


@pytest.fixture(scope="session")
def tiny_engine(loop_thread, tiny_qwen_dir):
    """vLLM running the tiny random Qwen2 (xgrammar), shared by the engine and service tests."""
    engine = start_engine(loop_thread, tiny_qwen_dir)
    yield engine
    engine.close()


class Running:
    """A nerve server in the test loop thread (over a shared engine) plus a client channel to it."""

    def __init__(self, loop_thread, server):
        import grpc
        from grpc_health.v1 import health_pb2_grpc
        from nerve_client.pb import service_pb2_grpc

        self.loop_thread = loop_thread
        self.server = server
        self.target = f"127.0.0.1:{server.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = service_pb2_grpc.NerveServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def status(self, service: str = "") -> int:
        from grpc_health.v1 import health_pb2

        return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

    def make_ready(self, extractor) -> None:
        from grpc_health.v1 import health_pb2

        async def ready() -> None:
            self.server.state.extractor = extractor
            await self.server._set_health(health_pb2.HealthCheckResponse.SERVING)

        self.loop_thread.run(ready())

    def stop(self) -> None:
        self.channel.close()
        self.loop_thread.run(self.server.drain(0))


@pytest.fixture
def start_server(loop_thread, tiny_engine):
    """Factory: a server with the given settings over the shared tiny engine (no model load)."""
    from dataclasses import replace

    from nerve.extraction import Extractor, Limits
    from nerve.ner.card import TaskCard
    from nerve.service.config import ServeConfig
    from nerve.service.server import NerveServer

    running: list[Running] = []

    def start(ready: bool = True, constrained: bool = True, **settings) -> Running:
        cfg = ServeConfig(model=tiny_engine.config.model, port=0, metrics_port=0, engine=replace(tiny_engine.config),
                          **settings)
        server = NerveServer(cfg)
        loop_thread.run(server.start(load=False))
        r = Running(loop_thread, server)
        if ready:
            card = TaskCard.load(tiny_engine.config.model)
            r.make_ready(Extractor(tiny_engine, card, constrained=constrained,
                                   limits=Limits(max_text_chars=cfg.max_text_chars)))
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()
