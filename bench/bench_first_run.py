"""What a new user meets: a fresh clone, an empty model home, `make serve` until SERVING, then `make test`.

Steps, each timed, in a temporary folder (nothing of this checkout's .venv or model cache is reused):

1. ``git clone`` of this repository's HEAD;
2. ``make venv`` (a new virtualenv; pip's cache is bypassed unless ``--pip-cache``);
3. ``make serve`` with an empty ``NERVE_HOME``: pulls the default model (download, checksums, conversion, and
   for a tuned default the adapter merge with its logits check), loads it, and is timed until gRPC health
   says SERVING; then SIGTERM, which must end it with exit code 0;
4. ``bash .ci/run`` (optional, ``--ci``): CI's own entry point, with its own empty model home.

Writes bench/results/first-run.json (the README quotes it). Run: ``python bench/bench_first_run.py --ci``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "first-run.json"


def _run(cmd: list[str], cwd: Path, env: dict, log: Path, timeout: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode, time.perf_counter() - t0


def _serving(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_ready(clone: Path, env: dict, log: Path, timeout: float) -> dict:
    """Run ``make serve`` in ``clone`` until gRPC health says SERVING, then SIGTERM it; times and exit code."""
    port, mport, hport = _free_port(), _free_port(), _free_port()
    env = {**env, "NERVE_PORT": str(port), "NERVE_METRICS_PORT": str(mport), "NERVE_HTTP_PORT": str(hport)}
    http_health = None
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "serve"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        serving = None
        while time.perf_counter() - t0 < timeout and proc.poll() is None:
            if _serving(port):
                serving = time.perf_counter() - t0
                http_health = _http_health(hport)
                break
            time.sleep(2)
        if proc.poll() is None:
            # SIGTERM to the server only (make's child), as an orchestrator signals the serving process; make
            # then exits with the server's code. Without a child (make already gone) the whole group.
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            for pid in children:
                os.kill(int(pid), signal.SIGTERM)
            if not children:
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    return {"serving_seconds": serving, "http_health": http_health, "exit_code_after_sigterm": code}


def _http_health(port: int) -> int | None:
    """The HTTP status of the gateway's GET /v1/health (None when it does not answer)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ci", action="store_true", help="Also run `bash .ci/run` in the clone (CI's full suite).")
    ap.add_argument("--pip-cache", action="store_true", help="Let pip use its cache (faster, less like a new machine).")
    ap.add_argument("--keep", action="store_true", help="Keep the temporary folder (clone, logs, model home).")
    args = ap.parse_args()
    from nerve.hardware import describe_machine

    work = Path(tempfile.mkdtemp(prefix="nerve-first-run-"))
    clone, home = work / "nerve", work / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NERVE_", "VIRTUAL_ENV"))}
    env.update({"NERVE_HOME": str(home), "CI": "true"})
    if not args.pip_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result: dict = {"commit": head, "machine": describe_machine(), "pip_cache": args.pip_cache}
    code, result["clone_seconds"] = _run(["git", "clone", "--quiet", str(ROOT), str(clone)], work, env,
                                         work / "clone.log", 600)
    assert code == 0, "git clone failed"
    if (ROOT.parent / "shared").is_dir() and not (work / "shared").exists():
        (work / "shared").symlink_to(ROOT.parent / "shared")  # the datasets, as beside a CI clone
    code, result["venv_seconds"] = _run(["make", "venv"], clone, env, work / "venv.log", 3600)
    result["venv_exit_code"] = code
    print(f"make venv: exit {code} in {result['venv_seconds']:.0f} s", flush=True)
    if code == 0:
        result["serve"] = serve_until_ready(clone, env, work / "serve.log", 3600)
        print(f"make serve: {result['serve']}", flush=True)
        if args.ci:
            ci_env = {k: v for k, v in env.items() if k != "NERVE_HOME"}
            code, result["ci_seconds"] = _run(["bash", ".ci/run"], clone, ci_env, work / "ci.log", 5400)
            result["ci_exit_code"] = code
            result["ci_tail"] = (work / "ci.log").read_text(errors="replace").splitlines()[-3:]
            print(f".ci/run: exit {code} in {result['ci_seconds']:.0f} s", flush=True)
    result["work"] = str(work) if args.keep else None
    write_results(RESULTS, result)
    print(json.dumps(result, indent=2))
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
