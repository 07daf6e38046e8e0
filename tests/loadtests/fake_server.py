"""A tiny fake nerve server for the load-test tests: the generated servicer with canned answers.

In-process (``start()``) for the interceptor tests and the short locust run, or as a process that mimics
``nerve serve`` (``python -m tests.loadtests.fake_server --model M --host H --port P --metrics-port M``) for
the runner's --start-server mode: health NOT_SERVING for a moment, then SERVING; on SIGTERM NOT_SERVING, a
short drain and exit 0.

Special texts: ``FAIL`` -> INVALID_ARGUMENT, ``SLOW`` -> answers after 1 s (for deadline tests).
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nerve_client.pb import service_pb2 as pb
from nerve_client.pb import service_pb2_grpc
from nerve_client.pb import types_pb2 as tpb

LABELS = ("PER", "LOC", "ORG", "MISC")
_WORD = re.compile(r"[A-Z]\w+")


def _extract(text: str) -> tpb.ExtractResult:
    ents = [tpb.Entity(label="PER", text=m.group(), start=m.start(), end=m.end()) for m in _WORD.finditer(text)]
    return tpb.ExtractResult(entities=ents, usage=tpb.Usage(prompt_tokens=len(text) // 4 + 20,
                                                            completion_tokens=4 * len(ents) + 2))


class FakeNerve(service_pb2_grpc.NerveServiceServicer):
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def _check(self, text: str, context: grpc.ServicerContext) -> None:
        if not text or text == "FAIL":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text is invalid")
        if text == "SLOW":
            time.sleep(1.0)

    def Extract(self, request, context):
        self._count("Extract")
        self._check(request.text, context)
        r = _extract(request.text)
        return pb.ExtractResponse(entities=r.entities, usage=r.usage)

    def ExtractBatch(self, request, context):
        self._count("ExtractBatch")
        for i, text in enumerate(request.texts):
            if not text or text == "FAIL":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"texts[{i}] is invalid")
        return pb.ExtractBatchResponse(results=[_extract(t) for t in request.texts])

    def Evaluate(self, request_iterator, context):
        self._count("Evaluate")
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "config":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a config")
        n = 0
        for message in request_iterator:
            if message.WhichOneof("kind") != "example":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected an example")
            n += 1
            yield pb.EvaluateResponse(progress=pb.EvaluateProgress(done=n, elapsed_seconds=0.001 * n))
        yield pb.EvaluateResponse(report=tpb.ScoreReport(examples=n, parse_rate=1.0))

    def GetModelInfo(self, request, context):
        self._count("GetModelInfo")
        card = tpb.TaskCard(name="conll2003", language="en", labels=[tpb.Label(name=n) for n in LABELS])
        limits = tpb.Limits(max_text_chars=4000, max_batch_texts=64, max_batch_bytes=1 << 20,
                            max_message_bytes=8 << 20)
        return pb.GetModelInfoResponse(model_info=tpb.ModelInfo(
            model_name="fake", engine="fake", task_card=card, limits=limits, server_version="0.0.0"))


@dataclass
class Running:
    server: grpc.Server
    servicer: FakeNerve
    health: health.HealthServicer
    target: str

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set("", status)
        self.health.set("nerve.v1.NerveService", status)


def start(host: str = "127.0.0.1", port: int = 0, serving: bool = True) -> Running:
    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    servicer = FakeNerve()
    service_pb2_grpc.add_NerveServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    assert bound, f"could not bind {host}:{port}"
    server.start()
    running = Running(server, servicer, health_servicer, f"{host}:{bound}")
    running.set_serving(serving)
    return running


def main() -> None:
    p = argparse.ArgumentParser(description="fake `nerve serve` for tests")
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, default=0)
    p.add_argument("--config", default=None)
    p.add_argument("--ready-after", type=float, default=0.5, help="seconds of NOT_SERVING (model loading)")
    args = p.parse_args()
    running = start(args.host, args.port, serving=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"fake nerve ({args.model}) on {running.target}", flush=True)
    if not stop.wait(args.ready_after):
        running.set_serving(True)
        print("SERVING", flush=True)
    stop.wait()
    running.set_serving(False)
    running.server.stop(grace=1.0).wait()
    print("drained", flush=True)


if __name__ == "__main__":
    main()
