"""Run the cloud emulator (python -m tools.cloud) as a subprocess for tests.

    proc, ports = start_emulator(state_dir)
    ... ports["http"], ports["https"], ports["mqtt"], ports["mqtts"], ports["ca"] ...
    stop_emulator(proc)

All ports are ephemeral unless extra_args says otherwise. The emulator's stdout/stderr go to
<state_dir>/cloud.log (appended, so restarts on the same state dir accumulate).
"""

import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # so tests can import tools.cloud.* as well

PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def start_emulator(state_dir, registry=None, extra_args=(), timeout=20):
    """Start the emulator on ephemeral ports and wait until it has written ports.json.

    Returns (Popen, ports dict). Raises RuntimeError (with the log's tail) if it exits or
    does not get ready within timeout seconds.
    """
    os.makedirs(state_dir, exist_ok=True)
    ports_file = os.path.join(state_dir, "ports.json")
    if os.path.exists(ports_file):
        os.remove(ports_file)
    args = [PYTHON if os.path.exists(PYTHON) else sys.executable, "-m", "tools.cloud",
            "--state", str(state_dir), "--http-port", "0", "--https-port", "0",
            "--mqtt-port", "0", "--mqtts-port", "0"]
    if registry:
        args += ["--registry", str(registry)]
    args += list(extra_args)
    log_path = os.path.join(state_dir, "cloud.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(ports_file):
            with open(ports_file, encoding="utf-8") as f:
                return proc, json.load(f)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_emulator(proc)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        tail = f.read()[-2000:]
    raise RuntimeError(f"cloud emulator did not get ready; log:\n{tail}")


def stop_emulator(proc, timeout=10):
    """SIGTERM, wait, and SIGKILL if it does not stop in time. Returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
