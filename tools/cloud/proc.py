"""The cloud emulator as a child process: start it, wait until it is ready, stop it.

    emu = Emulator.start(state, args=EPHEMERAL, log=state / "cloud.log")
    emu.ports["https"], emu.ports["mqtts"], emu.ports["ca"], ...   (its ports.json)
    emu.stop()

The one way the sim runner (tools/sim), the bench (tools/bench) and the host tests start
`python -m tools.cloud`. Ready means ports.json exists: the emulator removes a stale one at start
and writes the new one atomically once every server listens. log=None passes its output through
(unbuffered, so its "cloud: ..." lines interleave with the caller's); a path appends to that file.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Every port left to the system; the real ports are in ports.json.
EPHEMERAL = ("--http-port", "0", "--https-port", "0", "--mqtt-port", "0", "--mqtts-port", "0")


class EmulatorError(Exception):
    """The emulator exited or did not get ready in time (message is safe to print: ports, paths, log tail)."""


class Emulator:
    """A running emulator: proc (Popen), state (its directory), ports (ports.json)."""

    def __init__(self, proc, state, ports, log=None):
        self.proc = proc
        self.state = state
        self.ports = ports
        self.log = log

    @classmethod
    def start(cls, state, args=EPHEMERAL, log=None, timeout=30, python=None):
        """Start `python -m tools.cloud --state STATE ARGS` and wait for its ports.json."""
        state = Path(state).resolve()
        state.mkdir(parents=True, exist_ok=True)
        ports_file = state / "ports.json"
        if ports_file.exists():
            ports_file.unlink()
        command = [python or sys.executable, "-m", "tools.cloud", "--state", str(state)] + [str(a) for a in args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if log is None:
            proc = subprocess.Popen(command, cwd=REPO, env=env)
        else:
            with open(log, "ab") as out:
                proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        emu = cls(proc, state, None, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ports_file.exists():
                emu.ports = json.loads(ports_file.read_text())
                return emu
            time.sleep(0.05)  # a child's file, no event to wait on; 50 ms is far below its start-up time
        exited = proc.poll()
        emu.stop()
        why = "not ready after %s s" % timeout if exited is None else "exited with code %s" % exited
        tail = ""
        if log is not None:
            tail = "; log %s:\n%s" % (log, Path(log).read_text(errors="replace")[-2000:])
        raise EmulatorError("the cloud emulator (%s) %s (ports in use by another one?)%s"
                            % (" ".join(command[1:]), why, tail))

    def devices(self):
        """Its device records (devices.json), {} before the first registration."""
        path = self.state / "devices.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def stop(self, timeout=10):
        """SIGTERM, and SIGKILL if it has not stopped after `timeout` s; return its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
