"""A simulated board that stays online for a test: the sim runner (tools/sim) running an application that reports at
QoS 1 forever and prints what the runtime tells it, read line by line so tests wait on events.

The application (APP) is what a user's main.py does with the runtime: on_state and on_message hooks,
report(qos=1) and poll() in a loop. Its lines start with "app:"; under MicroPython the online line
carries gc.mem_alloc() after a collection.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time

from host_tests.conftest import PYTHON, REPO, SIM_RUNNER, WIFI

APP = """
import gc
import dynreg

dev = dynreg.connect()
mem = getattr(gc, "mem_alloc", lambda: 0)


def state(online):
    gc.collect()
    print("app: %s %d mem %d" % ("online" if online else "offline", dev.reconnects, mem()))


dev.on_state = state
dev.on_message = lambda topic, msg: print("app: message on %s (%d bytes)" % (topic.decode(), len(msg)))
state(True)
n = 0
while True:
    n += 1
    print("app: report %d %s" % (n, "acked" if dev.report({"n": n}, 1) else "unacked"))
    dev.poll(PERIOD_MS)
"""


class Match:
    """A regex match on one of the board's lines, with the line's index and arrival time."""

    def __init__(self, m, index, at):
        self.m, self.index, self.time = m, index, at

    def group(self, *args):
        return self.m.group(*args)


class Board:
    """The sim runner with APP as main.py; `lines` grows as the board prints."""

    def __init__(self, tmp_path, interp, settings, cloud_state, period_ms=300, heapsize=None, max_boots=2):
        fw = tmp_path / "fw"
        fw.mkdir(exist_ok=True)
        for name in ("lib", "boot.py"):
            if not (fw / name).exists():
                (fw / name).symlink_to(REPO / "firmware" / name)
        (fw / "main.py").write_text(APP.replace("PERIOD_MS", str(period_ms)))
        path = tmp_path / "settings.json"
        path.write_text(json.dumps(settings))
        args = [PYTHON, str(SIM_RUNNER), "--settings", str(path), "--interp", interp,
                "--firmware", str(fw), "--state", str(tmp_path / "board"), "--cloud-state", str(cloud_state),
                "--max-boots", str(max_boots), "--boot-timeout", "0", "--fresh"]
        if heapsize:
            args += ["--heapsize", heapsize]
        self.lines = []
        self.times = []  # time.monotonic() when each line arrived
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.times.append(time.monotonic())
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)  # the runner ended
            self.times.append(time.monotonic())
            self.cond.notify_all()

    @property
    def out(self):
        return "\n".join(line for line in self.lines if line is not None)

    def mark(self):
        """An index into lines: wait_line(after=mark) sees only what came later."""
        with self.cond:
            return len(self.lines)

    def wait_line(self, pattern, after=0, timeout=60):
        """The first match of regex `pattern` in a line printed at or after index `after`; its index is
        m.index and its arrival time m.time."""
        rx = re.compile(pattern)
        found = []

        def seen():
            for i in range(after, len(self.lines)):
                line = self.lines[i]
                if line is None:
                    raise AssertionError("the board's runner ended:\n" + self.out[-6000:])
                m = rx.search(line)
                if m:
                    found.append((m, i))
                    return True
            return False

        with self.cond:
            if not self.cond.wait_for(seen, timeout):
                raise AssertionError("no line matching %r within %s s:\n%s" % (pattern, timeout, self.out[-6000:]))
        m, i = found[0]
        return Match(m, i, self.times[i])

    def count(self, pattern, after=0):
        rx = re.compile(pattern)
        return sum(1 for line in self.lines[after:] if line is not None and rx.search(line))

    def boots(self):
        return self.count(r"^\[sim\] boot \d+")

    def stop(self):
        """End the run (the whole process group: runner and interpreter); True if it was still running."""
        running = self.proc.poll() is None
        if running:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return running


def tencent_plain(cloud_ports, registry, proxy_port, pid, name, **extra):
    """Settings of a Tencent board over plain TCP: registration direct to the emulator, MQTT via the proxy."""
    s = dict(WIFI, platform="tencent", prod_id=pid, prod_secret=registry["tencent"][pid]["secret"],
             dev_name=name, reg_host="localhost", reg_port=cloud_ports["http"], mqtt_host="localhost",
             mqtt_port=proxy_port, tls=0, retry_ms=100, retry_max_ms=800, keepalive_s=60)
    s.update(extra)
    return s


def deadline(seconds):
    return time.monotonic() + seconds
