"""locust over gRPC for nerve: a User whose channel reports every call as a locust request event.

Run it through the runner, which adds the safety rails (loopback only, fixed duration, reports):

    python loadtests/run.py --host 127.0.0.1:50051 --scenario steady --users 8 --duration 60s --out reports/load/

or directly (headless, same options):

    locust -f loadtests/locustfile.py --headless --host 127.0.0.1:50051 --users 8 --run-time 60s \\
        --scenario ramp --csv reports/load/ramp --html reports/load/ramp.html

Each user holds its own channel (one HTTP/2 connection, like an independent client) and calls back to back
(closed loop): ``users`` is the number of concurrent calls. The mix: Extract (weight 10), ExtractBatch
(weight 2, ``--nerve-batch-size`` texts), Evaluate (weight 1, ``--nerve-eval-examples`` examples streamed).
Texts come from the datasets matching the served task card's language (CLUENER dev for zh, CoNLL-2003 testb
for en; see loadtests/data.py). The load follows the ``--scenario`` shape (steady, ramp, burst; see
loadtests/scenarios.py) for ``--run-time`` (default 60 s) and then stops.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from gevent.lock import Semaphore
from locust import LoadTestShape, User, constant, events, task
from locust.exception import LocustError

# grpc's blocking calls must yield to gevent's loop, or one user would block every other; before any channel.
grpc_gevent.init_gevent()

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # locust puts only this file's folder on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from loadtests import data, hosts, scenarios  # noqa: E402
from loadtests.interceptor import LocustInterceptor  # noqa: E402

try:
    from nerve_client.pb import service_pb2 as pb
    from nerve_client.pb import service_pb2_grpc
    from nerve_client.pb import types_pb2 as tpb
except ImportError:  # the SDK is not installed: use the source tree
    sys.path.insert(0, str(REPO_ROOT / "clients" / "python"))
    from nerve_client.pb import service_pb2 as pb
    from nerve_client.pb import service_pb2_grpc
    from nerve_client.pb import types_pb2 as tpb

log = logging.getLogger("nerve.loadtest")
DEFAULT_RUN_SECONDS = 60
MAX_MESSAGE_BYTES = 8 << 20


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--scenario", choices=sorted(scenarios.SCENARIOS), default="steady",
                        help="load shape: steady, ramp or burst (loadtests/scenarios.py)")
    parser.add_argument("--nerve-spawn-rate", type=float, default=None,
                        help="users started per second (default: the scenario's)")
    parser.add_argument("--nerve-token", default=os.environ.get("NERVE_AUTH_TOKEN", ""), is_secret=True,
                        help="bearer token for servers that require one (default: $NERVE_AUTH_TOKEN)")
    parser.add_argument("--nerve-deadline", type=float, default=60.0, help="per-call deadline, seconds")
    parser.add_argument("--nerve-batch-size", type=int, default=8, help="texts per ExtractBatch call")
    parser.add_argument("--nerve-eval-examples", type=int, default=4, help="examples per Evaluate call")
    parser.add_argument("--nerve-mix", default="extract=10,batch=2,evaluate=1",
                        help="task weights, e.g. extract=1 for Extract only")
    parser.add_argument("--nerve-datasets", default=None,
                        help="datasets folder (default: $NERVE_DATASETS or ../shared/datasets)")
    parser.add_argument("--nerve-allow-host", action="append", default=[],
                        help="non-loopback host this test may target (repeatable; also $NERVE_LOADTEST_ALLOWED_HOSTS)")
    parser.add_argument("--nerve-seed", type=int, default=0, help="seed of the text sample")


_STATE: dict[str, Any] = {}
_MODEL_INFO_LOCK = Semaphore()


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None:  # used as a library (tests build their own Environment)
        return
    target = environment.host or opts.host
    if not target:
        raise SystemExit("nerve load test: --host HOST:PORT is required")
    try:
        hosts.check_target(target, opts.nerve_allow_host)
    except ValueError as e:  # HostNotAllowed or a malformed target
        log.error("%s", e)
        raise SystemExit(2) from None
    weights = _parse_mix(opts.nerve_mix)
    NerveUser.tasks = [fn for name, fn in _TASKS.items() for _ in range(weights.get(name, 0))]
    _STATE["corpus"] = data.load_corpus(opts.nerve_datasets, seed=opts.nerve_seed)
    log.info("texts from %s", _STATE["corpus"].source)


def _parse_mix(text: str) -> dict[str, int]:
    weights: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in _TASKS or not weight.isdigit():
            raise SystemExit(f"--nerve-mix: expected NAME=WEIGHT with NAME in {', '.join(_TASKS)}, got {part!r}")
        weights[name] = int(weight)
    if not any(weights.values()):
        raise SystemExit("--nerve-mix: every weight is 0")
    return weights


class GrpcUser(User):
    """A User calling a gRPC service through ``self.stub``; every call fires a locust request event.

    Subclasses set ``stub_class`` (a generated ``*Stub``). Failed calls are already reported by the
    interceptor; :meth:`call` swallows their ``grpc.RpcError`` so that locust does not count them twice.
    """

    abstract = True
    stub_class: Any = None
    channel_options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("no target: pass --host HOST:PORT")
        if self.stub_class is None:
            raise LocustError(f"{type(self).__name__}.stub_class is not set")
        opts = environment.parsed_options
        hosts.check_target(self.host, getattr(opts, "nerve_allow_host", []) or [])
        host, port = hosts.split_target(self.host)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._channel = grpc.insecure_channel(target, options=self.channel_options)
        intercepted = grpc.intercept_channel(self._channel, LocustInterceptor(environment.events.request.fire))
        self.stub = self.stub_class(intercepted)
        token = getattr(opts, "nerve_token", "") or ""
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.deadline = float(getattr(opts, "nerve_deadline", 60.0) or 60.0)

    def call(self, rpc: Any, request: Any) -> Any | None:
        """A unary call with the deadline and metadata; ``None`` when it failed (already reported)."""
        try:
            return rpc(request, timeout=self.deadline, metadata=self.metadata)
        except grpc.RpcError:
            return None

    def on_stop(self) -> None:
        self._channel.close()


class NerveUser(GrpcUser):
    stub_class = service_pb2_grpc.NerveServiceStub
    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random()
        with _MODEL_INFO_LOCK:  # the first user asks (one GetModelInfo event); the others reuse its answer
            info = _STATE.get("model_info")
            if info is None:
                response = self.call(self.stub.GetModelInfo, pb.GetModelInfoRequest())
                info = response.model_info if response is not None else None
                if info is not None:
                    _STATE["model_info"] = info
        corpus: data.Corpus = _STATE.get("corpus") or data.load_corpus()
        card = info.task_card if info is not None else None
        limits = info.limits if info is not None else None
        self.labels = {label.name for label in card.labels} if card is not None else set()
        max_chars = (limits.max_text_chars if limits is not None and limits.max_text_chars else 4000)
        samples = [s for s in corpus.pick(card.language if card is not None else None) if len(s.text) <= max_chars]
        self.samples = samples or corpus.pick(None)
        opts = self.environment.parsed_options
        batch = getattr(opts, "nerve_batch_size", 8)
        if limits is not None and limits.max_batch_texts:
            batch = min(batch, limits.max_batch_texts)
        self.batch_size = max(1, min(batch, len(self.samples)))
        self.eval_examples = max(1, min(getattr(opts, "nerve_eval_examples", 4), len(self.samples)))

    @task(10)
    def extract(self) -> None:
        self.call(self.stub.Extract, pb.ExtractRequest(text=self.rng.choice(self.samples).text))

    @task(2)
    def extract_batch(self) -> None:
        texts = [s.text for s in self.rng.sample(self.samples, self.batch_size)]
        self.call(self.stub.ExtractBatch, pb.ExtractBatchRequest(texts=texts))

    @task(1)
    def evaluate(self) -> None:
        examples = self.rng.sample(self.samples, self.eval_examples)

        def requests():
            yield pb.EvaluateRequest(config=pb.EvaluateConfig(
                inline_examples=pb.InlineSource(expected_examples=len(examples))))
            for s in examples:
                entities = [tpb.Entity(label=label, text=s.text[start:end], start=start, end=end)
                            for label, start, end in s.entities if not self.labels or label in self.labels]
                yield pb.EvaluateRequest(example=tpb.Example(text=s.text, entities=entities, id=s.id))

        try:
            for _ in self.stub.Evaluate(requests(), timeout=self.deadline, metadata=self.metadata):
                pass  # progress messages, then the report; the interceptor times the whole stream
        except grpc.RpcError:
            pass


# --nerve-mix names; the decorators' weights are the default mix (the init hook rebuilds NerveUser.tasks).
_TASKS = {"extract": NerveUser.extract, "batch": NerveUser.extract_batch, "evaluate": NerveUser.evaluate}


class NerveShape(LoadTestShape):
    """The ``--scenario`` shape over ``--users`` and ``--run-time``; returns None (stop) when the time is up."""

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self._shape: scenarios.Shape | None = None

    def tick(self) -> tuple[int, float] | None:
        if self._shape is None:
            opts = self.runner.environment.parsed_options
            self._shape = scenarios.make(
                getattr(opts, "scenario", "steady"),
                users=int(getattr(opts, "num_users", None) or 1),
                duration=float(getattr(opts, "run_time", None) or DEFAULT_RUN_SECONDS),
                spawn_rate=getattr(opts, "nerve_spawn_rate", None),
            )
        return self._shape.tick(self.get_run_time())
