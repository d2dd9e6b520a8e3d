"""6. Reconnect in place: the broker drops a logged-in board's connection --drops times; the time until the
board is online again in the same process, against today's recovery (a reboot and a login), and the heap
in use after each reconnect (MicroPython gc.mem_alloc() after a collection).

A TCP proxy between board and emulator (TLS passes through; the board still verifies the emulator)
closes the connection; the time runs to the board's "mqtt: online again" line. The board's program
(programs/reconnect_main.py) then reports at QoS 1 and prints "bench-ready N HEAP" once acknowledged:
the next drop comes only then, so every drop hits a working connection. The reboot + login is the same
registered board booted again from its NVS (the sim runner, the shipped main.py), timed from "[sim] boot 1"
to "mqtt: logged in".
"""
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

from tools.bench.common import REPO, device_settings, fresh_name, run_board, run_timed, say

READY = re.compile(r"bench-ready (\d+) (\d+)")
ONLINE = re.compile(r"dynreg: mqtt: online again \(reconnect (\d+)\)")


class DropProxy:
    """Forwards TCP connections to the emulator's broker; drop() closes the newest one both ways."""

    def __init__(self, port):
        self.upstream = ("127.0.0.1", port)
        self.conns = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream, timeout=10)
            up.settimeout(None)
            self.conns.append((client, up))
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop(self):
        for s in self.conns[-1]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.listener.close()


def reconnects(out, emu, drops, platform="tencent"):
    """Median reconnect time over `drops` drops, the reboot + login it replaces, heap growth."""
    proxy = DropProxy(emu.ports["mqtts"])
    name = fresh_name(platform)
    settings = dict(device_settings(emu, platform, name, wifi=False), mqtt_port=proxy.port, report_count=1)
    first = run_board(out, emu, settings, out / "fw")  # registers, logs in once: the board is in the field
    if not first.ok:
        raise RuntimeError("reconnect bench: the board did not register:\n" + first.out[-3000:])
    state = out / "boards" / name
    # today's recovery: the same board booted again (reboot) and logged in, median of three
    reboot = []
    for _ in range(3):
        run = run_timed([sys.executable, "-m", "tools.sim", "--settings", str(state / "settings.json"),
                         "--firmware", str(out / "fw"), "--state", str(state), "--cloud-state", str(emu.state),
                         "--max-boots", "1", "--boot-timeout", "30"],
                        env=dict(os.environ, DYNREG_BENCH_NVS=str(state / "bench-nvs.json")))
        t0, t1 = run.at(r"^\[sim\] boot 1"), run.at(r"mqtt: logged in")
        if run.rc != 0 or t1 is None:
            raise RuntimeError("reconnect bench: reboot + login failed:\n" + run.out[-3000:])
        reboot.append((t1 - t0) * 1000)
    proc = subprocess.Popen([sys.executable, "-m", "tools.sim", "--settings", str(state / "settings.json"),
                             "--firmware", str(out / "reconnect"), "--state", str(state), "--cloud-state",
                             str(emu.state), "--max-boots", "1", "--boot-timeout", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, DYNREG_BENCH_NVS=str(state / "bench-nvs.json")))
    lines, times, heaps = [], [], {}
    started = time.monotonic()
    try:
        def wait(rx, n, timeout=60):
            """Arrival time of the line `rx` matches with count n (the heap goes to heaps[n] if given)."""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append("%8.3f %s" % (time.monotonic() - started, line))
                m = rx.search(line)
                if m and int(m.group(1)) == n:
                    if m.lastindex == 2:
                        heaps[n] = int(m.group(2))
                    return time.monotonic()
            raise RuntimeError("reconnect bench: no %r %d:\n%s" % (rx.pattern, n, "".join(lines[-40:])))

        wait(READY, 0)
        for n in range(1, drops + 1):
            t0 = time.monotonic()
            lines.append("%8.3f [bench] drop\n" % (t0 - started))
            proxy.drop()
            times.append((wait(ONLINE, n) - t0) * 1000)
            wait(READY, n)  # the new connection works (its QoS 1 report acknowledged): drop it next
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proxy.close()
    (state / "reconnect-output.txt").write_text("".join(lines))
    med, boot = statistics.median(times), statistics.median(reboot)
    say("reconnect: %d drops, median %.0f ms; reboot + login %.0f ms" % (drops, med, boot))
    return {"platform": platform, "drops": drops, "reconnect_median_ms": round(med, 1),
            "reconnect_max_ms": round(max(times), 1), "reboot_login_median_ms": round(boot, 1),
            "ratio": round(med / boot, 3), "heap_after_first": heaps[1], "heap_after_last": heaps[drops],
            "heap_growth": heaps[drops] - heaps[1]}
