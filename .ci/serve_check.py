"""`make serve` as a new user runs it: the default model from the (empty) model home to SERVING, then SIGTERM.

Fails unless health turns SERVING within the time limit, the HTTP/JSON gateway's health answers 200 and the
server then exits 0. Run by .ci/run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_first_run import serve_until_ready  # noqa: E402

log = Path(os.environ.get("NERVE_HOME", "/tmp")) / "serve-check.log"
result = serve_until_ready(ROOT, dict(os.environ), log, timeout=float(os.environ.get("NERVE_SERVE_TIMEOUT", 1800)))
print(f"make serve: {result}")
if result["serving_seconds"] is None or result["http_health"] != 200 or result["exit_code_after_sigterm"] != 0:
    print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
    sys.exit(1)
