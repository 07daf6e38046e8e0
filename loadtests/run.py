#!/usr/bin/env python3
"""Run a nerve load test: headless locust for a fixed time, CSV + HTML reports, a printed summary.

    # against a running server (loopback only, unless --allow-host)
    python loadtests/run.py --host 127.0.0.1:50051 --scenario steady --users 8 --duration 60s --out reports/load/

    # start `nerve serve --model MODEL` on a free loopback port, wait for health SERVING, test, SIGTERM it
    python loadtests/run.py --start-server qwen2.5-coder-0.5b-instruct --scenario burst --users 16 --duration 2m

Reports land in OUT: <scenario>_stats.csv, <scenario>_failures.csv, <scenario>_stats_history.csv,
<scenario>.html, summary.json (and server.log, metrics.txt with --start-server). The summary lists, per RPC and
in total, requests, failures, requests/s and the p50/p95/p99 latencies (ms) from locust's stats CSV.

Exit status: 0 the test ran (failed calls are reported, not fatal unless --max-failure-ratio is exceeded);
1 failure ratio above --max-failure-ratio; 2 bad usage or refused host; 3 the server or locust failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `loadtests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests import hosts, scenarios  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STOP_GRACE_SECONDS = 60
"""How long past --duration locust may take to stop before it is terminated."""


class RunError(RuntimeError):
    """The server or locust failed (exit status 3)."""


# ------------------------------------------------------------------------------------------- arguments

_SPAN = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``2m``, ``1h30m`` -> whole seconds (at least 1)."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    else:
        parts = _SPAN.findall(t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 30s, 2m, 1h30m)")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"duration {text!r} is shorter than 1 s")
    return round(seconds)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loadtests/run.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--host", help="server HOST:PORT (loopback only unless --allow-host)")
    target.add_argument("--start-server", metavar="MODEL",
                        help="launch `nerve serve --model MODEL` on a free loopback port for the test")
    p.add_argument("--scenario", choices=sorted(scenarios.SCENARIOS), default="steady", help="load shape (default steady)")
    p.add_argument("--users", type=int, default=8, help="peak concurrent users, i.e. calls in flight (default 8)")
    p.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default: the scenario's)")
    p.add_argument("--duration", type=parse_duration, default=60, help="run time, e.g. 60s, 5m (default 60s)")
    p.add_argument("--out", type=Path, default=Path("reports/load"), help="report folder (default reports/load/)")
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help=f"allow this non-loopback host (repeatable; also ${hosts.ALLOWED_ENV})")
    p.add_argument("--mix", default="extract=10,batch=2,evaluate=1", help="task weights (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="texts per ExtractBatch call (default 8)")
    p.add_argument("--eval-examples", type=int, default=4, help="examples per Evaluate call (default 4)")
    p.add_argument("--deadline", type=float, default=60.0, help="per-call deadline in seconds (default 60)")
    p.add_argument("--datasets", default=None, help="datasets folder (default $NERVE_DATASETS or ../shared/datasets)")
    p.add_argument("--token-env", default="NERVE_AUTH_TOKEN",
                   help="environment variable holding the bearer token, if the server needs one (default %(default)s)")
    p.add_argument("--max-failure-ratio", type=float, default=None,
                   help="exit 1 when failed/total calls exceeds this (default: never)")
    srv = p.add_argument_group("--start-server")
    srv.add_argument("--server-cmd", default="nerve serve",
                     help="server command; --model/--host/--port/--metrics-port are appended (default %(default)r)")
    srv.add_argument("--server-config", type=Path, default=None, help="pass --config FILE to the server")
    srv.add_argument("--server-timeout", type=parse_duration, default=900,
                     help="longest wait for health SERVING, e.g. 15m (default 900 s: model load and warm-up)")
    srv.add_argument("--server-stop-timeout", type=parse_duration, default=90,
                     help="longest wait for the server to drain and exit after SIGTERM (default 90 s)")
    return p


# ---------------------------------------------------------------------------------------------- server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def health_status(target: str, timeout: float = 2.0) -> str | None:
    """The server's overall gRPC health status name (``SERVING``, ``NOT_SERVING``...), or ``None`` if unreachable."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Server:
    process: subprocess.Popen
    target: str
    metrics_port: int
    log_path: Path
    exit_code: int | None = None


@contextlib.contextmanager
def running_server(model: str, out: Path, server_cmd: str = "nerve serve", config: Path | None = None,
                   timeout: float = 900, stop_timeout: float = 90, poll: float = 0.5,
                   say=print) -> Iterator[Server]:
    """Launch the server on free loopback ports, wait until health is SERVING, yield it, then SIGTERM it."""
    port, metrics_port = free_port(), free_port()
    argv = [*shlex.split(server_cmd), "--model", model, "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port)]
    if config is not None:
        argv += ["--config", str(config)]
    log_path = out / "server.log"
    say(f"starting {' '.join(shlex.quote(a) for a in argv)} (log: {log_path})")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=REPO_ROOT, start_new_session=True)
    server = Server(process, f"127.0.0.1:{port}", metrics_port, log_path)
    try:
        deadline = time.monotonic() + timeout
        status = None
        while status != "SERVING":
            if process.poll() is not None:
                raise RunError(f"the server exited with status {process.returncode} before serving:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RunError(f"the server was not SERVING after {timeout:g} s (last status {status}):\n{_tail(log_path)}")
            time.sleep(poll)
            status = health_status(server.target)
        say(f"server SERVING on {server.target} after {timeout - (deadline - time.monotonic()):.1f} s")
        yield server
    finally:
        server.exit_code = stop_server(process, stop_timeout)
        say(f"server stopped (exit status {server.exit_code})")


def stop_server(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM (the server drains, then exits), SIGKILL after ``timeout``; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def save_metrics(metrics_port: int, path: Path) -> bool:
    """Scrape the server's /metrics once (the nerve_* counters after the run)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            path.write_bytes(r.read())
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- locust


def locust_command(target: str, args: argparse.Namespace, prefix: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
        "--headless", "--host", target,
        "--users", str(args.users), "--run-time", f"{args.duration}s",
        "--scenario", args.scenario,
        "--csv", str(prefix), "--csv-full-history", "--html", f"{prefix}.html",
        "--only-summary", "--stop-timeout", str(min(10, max(1, int(args.deadline)))),
        "--exit-code-on-error", "0",
        "--nerve-mix", args.mix, "--nerve-batch-size", str(args.batch_size),
        "--nerve-eval-examples", str(args.eval_examples), "--nerve-deadline", str(args.deadline),
    ]
    if args.spawn_rate:
        cmd += ["--nerve-spawn-rate", str(args.spawn_rate)]
    if args.datasets:
        cmd += ["--nerve-datasets", str(args.datasets)]
    for h in args.allow_host:
        cmd += ["--nerve-allow-host", h]
    return cmd


def run_locust(cmd: Sequence[str], timeout: float, log_path: Path, token: str | None = None) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("NERVE_AUTH_TOKEN", None)
    if token:
        env["NERVE_AUTH_TOKEN"] = token  # the locustfile's --nerve-token default; never on the command line
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO_ROOT, env=env)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise RunError(f"locust did not stop within {timeout:g} s; terminated:\n{_tail(log_path)}") from None
        except BaseException:
            proc.terminate()
            proc.wait()
            raise


# --------------------------------------------------------------------------------------------- summary


@dataclass
class Row:
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_ms: float | None
    max_ms: float | None


@dataclass
class Summary:
    rows: list[Row]
    total: Row
    errors: list[tuple[str, str, int]] = field(default_factory=list)
    """(name, error, occurrences) from the failures CSV, most frequent first."""

    @property
    def failure_ratio(self) -> float:
        return self.total.failures / self.total.requests if self.total.requests else 0.0


def _num(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # "N/A" when there were no requests


def read_summary(prefix: str | os.PathLike[str]) -> Summary:
    """Parse locust's ``<prefix>_stats.csv`` (and ``<prefix>_failures.csv`` when present)."""
    stats = Path(f"{prefix}_stats.csv")
    rows: list[Row] = []
    total: Row | None = None
    with open(stats, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            row = Row(
                name=rec["Name"], requests=int(rec["Request Count"]), failures=int(rec["Failure Count"]),
                rps=_num(rec["Requests/s"]) or 0.0, p50_ms=_num(rec["50%"]), p95_ms=_num(rec["95%"]),
                p99_ms=_num(rec["99%"]), avg_ms=_num(rec["Average Response Time"]),
                max_ms=_num(rec["Max Response Time"]),
            )
            if rec["Name"] == "Aggregated":
                total = row
            else:
                rows.append(row)
    if total is None:
        raise RunError(f"{stats}: no Aggregated row (locust wrote no statistics)")
    errors: list[tuple[str, str, int]] = []
    failures = Path(f"{prefix}_failures.csv")
    if failures.is_file():
        with open(failures, newline="", encoding="utf-8") as f:
            errors = sorted(((r["Name"], r["Error"], int(r["Occurrences"])) for r in csv.DictReader(f)),
                            key=lambda e: -e[2])
    return Summary(rows=rows, total=total, errors=errors)


def format_summary(summary: Summary) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    lines = [f"{'rpc':<16} {'requests':>9} {'failures':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for r in [*summary.rows, summary.total]:
        name = "total" if r is summary.total else r.name
        lines.append(f"{name:<16} {r.requests:>9} {r.failures:>9} {r.rps:>8.2f} {ms(r.p50_ms):>8} "
                     f"{ms(r.p95_ms):>8} {ms(r.p99_ms):>8}")
    if summary.errors:
        lines.append("failures:")
        lines += [f"  {n:>6} x {name}: {err}" for name, err, n in summary.errors[:10]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def run(args: argparse.Namespace, say=print) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / args.scenario
    for old in args.out.glob(f"{args.scenario}_*.csv"):
        old.unlink()  # never summarise a previous run's numbers
    token = os.environ.get(args.token_env) or None
    timeout = args.duration + STOP_GRACE_SECONDS

    with contextlib.ExitStack() as stack:
        if args.start_server:
            server = stack.enter_context(running_server(
                args.start_server, args.out, args.server_cmd, args.server_config, args.server_timeout,
                args.server_stop_timeout, say=say))
            target = server.target
        else:
            server = None
            target = args.host
        say(f"{args.scenario}: {args.users} users for {args.duration} s against {target} -> {args.out}/")
        rc = run_locust(locust_command(target, args, prefix), timeout, args.out / f"{args.scenario}.log", token)
        if server is not None:
            save_metrics(server.metrics_port, args.out / "metrics.txt")
    if rc != 0:
        raise RunError(f"locust exited with status {rc}:\n{_tail(args.out / f'{args.scenario}.log')}")
    summary = read_summary(prefix)
    report = {"scenario": args.scenario, "users": args.users, "duration_seconds": args.duration, "target": target,
              "total": asdict(summary.total), "rpcs": [asdict(r) for r in summary.rows],
              "failures": [{"name": n, "error": e, "occurrences": c} for n, e, c in summary.errors],
              "server_exit_code": server.exit_code if server is not None else None}
    (args.out / "summary.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    say(format_summary(summary))
    say(f"reports: {prefix}_stats.csv, {prefix}.html, {args.out / 'summary.json'}")
    if server is not None and server.exit_code != 0:
        raise RunError(f"the server exited with status {server.exit_code} after SIGTERM (expected 0 after draining)")
    if args.max_failure_ratio is not None and summary.failure_ratio > args.max_failure_ratio:
        say(f"failure ratio {summary.failure_ratio:.3f} > --max-failure-ratio {args.max_failure_ratio}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.users < 1:
        parser.error("--users must be at least 1")
    if args.host is not None:
        try:
            hosts.check_target(args.host, args.allow_host)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        return run(args)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
