"""The emulator as a child process, for everything that runs one (tests, the bench, the sim runner, make hil).

    proc, ports = start(state, ["--https-port", "0", ...], log=file)   # ports: the state's ports.json
    stop(proc)
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start(state, args=(), log=None, timeout=30):
    """python -m tools.cloud --state STATE ARGS, its output to the file object `log` (None: ours); waits
    until it has written ports.json. Returns (Popen, ports); raises RuntimeError if it exits or times out."""
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True)
    ports_file = state / "ports.json"
    if ports_file.exists():
        ports_file.unlink()  # a stale file must not announce a dead emulator as ready
    command = [sys.executable, "-m", "tools.cloud", "--state", str(state)] + [str(a) for a in args]
    # unbuffered: its "cloud: ..." lines interleave with a board's when they share a terminal
    proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT if log else None,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + timeout
    while not ports_file.exists():  # written by a rename: complete once it exists
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("the cloud emulator did not get ready (exit status %s)" % proc.returncode)
        time.sleep(0.05)
    return proc, json.loads(ports_file.read_text())


def stop(proc, timeout=10):
    """SIGTERM, wait, SIGKILL if it does not stop in time. Returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
