"""Run the cloud emulator (python -m tools.cloud) as a subprocess for tests.

    proc, ports = start_emulator(state_dir)
    ... ports["http"], ports["https"], ports["mqtt"], ports["mqtts"], ports["ca"] ...
    stop_emulator(proc)

All ports are ephemeral unless extra_args says otherwise. The emulator's stdout/stderr go to
<state_dir>/cloud.log (appended, so restarts on the same state dir accumulate).
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # so tests can import tools.cloud.* as well

from tools.cloud import process  # noqa: E402

PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def start_emulator(state_dir, registry=None, extra_args=(), timeout=20):
    """Start the emulator on ephemeral ports and wait until it has written ports.json.

    Returns (Popen, ports dict). Raises RuntimeError (with the log's tail) if it exits or
    does not get ready within timeout seconds.
    """
    os.makedirs(state_dir, exist_ok=True)
    args = ["--http-port", "0", "--https-port", "0", "--mqtt-port", "0", "--mqtts-port", "0"]
    args += (["--registry", str(registry)] if registry else []) + list(extra_args)
    log_path = os.path.join(state_dir, "cloud.log")
    try:
        with open(log_path, "ab") as log:
            return process.start(state_dir, args, log, timeout)
    except RuntimeError as e:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{e}; log:\n{tail}") from None


stop_emulator = process.stop  # SIGTERM, wait, SIGKILL if it does not stop in time; returns the exit code
