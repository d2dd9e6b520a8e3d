"""Soak: a simulated Tencent board with keepalive_s=2 stays online while the test, in turn, cuts its
connection at different protocol points, restarts the emulator, stalls the broker past the keepalive,
and sends oversized, malformed and retained packets.

Pass: after each fault the board is online again within the back-off bound; every QoS 1 report the
board calls acknowledged was seen by the proxy reaching the broker and acknowledged by it on that
connection; no reboot and no re-registration; under MicroPython gc.mem_alloc() after the last
reconnect is within 2 KB of after the first. DYNREG_SOAK_S sets the length (default 30 s, and at least
20 drops: `make test`; `make soak` runs 300 s per interpreter). Counts go to build/robustness/soak-<interp>.json.
"""

import json
import os
import re
import struct
import time

import pytest

from host_tests.conftest import REPO, start_cloud
from host_tests.mqttproxy import DOWN, UP, MqttProxy, packet
from host_tests.runtimeboard import Board, tencent_plain
from tools.cloud.state import read_console_password

PSK = "SIMPSK0001"
SOAK_S = float(os.environ.get("DYNREG_SOAK_S", "30"))
RETRY_MAX_MS = 800
# Online again after a fault within: the capped back-off, one reconnect's work, and slack for a loaded host.
BOUND_S = RETRY_MAX_MS / 1000 + 6


def _s(text):
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _is(kind, topic=None):
    def pred(conn, first, body):
        return first & 0xF0 == kind and (topic is None or topic.encode() in body[:80])
    return pred


class Soak:
    def __init__(self, tmp_path, interp):
        self.state = tmp_path / "cloud"
        self.registry = json.loads((REPO / "tools" / "cloud" / "registry.json").read_text())
        self.emu = start_cloud(self.state)
        self.ports = self.emu.ports
        self.proxy = MqttProxy(self.ports["mqtt"])
        self.name = "soak-" + interp[:2]
        s = tencent_plain(self.ports, self.registry, self.proxy.port, PSK, self.name, keepalive_s=2,
                          retry_max_ms=RETRY_MAX_MS)
        # reports 1.7 s apart leave the link idle past 3/4 of the keepalive: a PINGREQ every cycle
        self.board = Board(tmp_path, interp, s, self.state, period_ms=1700)
        self.counts = {"drops": 0, "emulator_restarts": 0, "stalls": 0, "oversized": 0, "malformed": 0,
                       "retained": 0}
        self.recoveries = []  # seconds from "connection lost" to "online again"

    def topic(self, kind):
        return "$thing/%s/property/%s/%s" % (kind, PSK, self.name)

    def settled(self):
        self.proxy.wait(lambda: self.proxy.live() and self.proxy.live().sent(DOWN, 0x90), what="SUBACK")
        self.board.wait_line(r"app: report \d+ acked", self.board.mark())  # the runtime works
        return self.proxy.live()

    def recovered(self, mark, bound=BOUND_S):
        lost = self.board.wait_line(r"dynreg: mqtt: connection lost", mark)
        back = self.board.wait_line(r"app: online \d+ mem", lost.index)
        self.recoveries.append(back.time - lost.time)
        assert back.time - lost.time < bound, "online again after %.1f s" % (back.time - lost.time)

    # ------------------------------------------------------------------ faults

    def cut_at(self, direction, pred, action="cut"):
        mark = self.board.mark()
        conn = self.settled()
        self.proxy.rule = (direction, lambda c, f, b: c is conn and pred(c, f, b), action)
        self.recovered(mark)
        self.counts["drops"] += 1

    def cut_now(self):
        mark = self.board.mark()
        self.proxy.cut(self.settled())
        self.recovered(mark)
        self.counts["drops"] += 1

    def cut_subscribe(self):
        """Cut the connection, then the next one right after its SUBSCRIBE went through."""
        self.proxy.rule = (UP, _is(0x80), "cut_after")
        mark = self.board.mark()
        self.proxy.cut(self.settled())
        # the second loss may show while the login is still on its way (its follow-up publish fails)
        # or after it: either way two "connection lost" lines, then online
        first = self.board.wait_line(r"dynreg: mqtt: connection lost", mark)
        second = self.board.wait_line(r"dynreg: mqtt: connection lost", first.index + 1)
        back = self.board.wait_line(r"app: online \d+ mem", second.index)
        self.recoveries.append(back.time - first.time)
        assert back.time - first.time < 2 * BOUND_S, "online again after %.1f s" % (back.time - first.time)
        self.counts["drops"] += 2

    def stall(self):
        self.cut_at(UP, _is(0xC0), "stall")
        self.counts["drops"] -= 1
        self.counts["stalls"] += 1

    def restart(self):
        mark = self.board.mark()
        self.settled()
        self.emu.stop()
        t0 = time.monotonic()
        self.board.wait_line(r"dynreg: mqtt: connection lost", mark)
        self.board.wait_line(r"dynreg: mqtt: reconnect \d+ failed", mark)  # the emulator is down
        self.emu = start_cloud(self.state)
        self.ports = self.emu.ports
        self.proxy.upstream = ("127.0.0.1", self.ports["mqtt"])
        down = time.monotonic() - t0
        self.recovered(mark, bound=down + BOUND_S)
        self.counts["emulator_restarts"] += 1

    def oversized(self):
        mark = self.board.mark()
        conn = self.settled()
        self.proxy.inject(packet(0x30, _s(self.topic("down")) + b"o" * 20000), conn)
        self.board.wait_line(r"dynreg: mqtt: skipped a 200\d\d-byte packet", mark)
        self.board.wait_line(r"app: report \d+ acked", self.board.mark())
        assert self.board.count("connection lost", mark) == 0
        self.counts["oversized"] += 1

    def malformed(self):
        mark = self.board.mark()
        self.proxy.inject(packet(0xD0, b"\x00"), self.settled())
        self.recovered(mark)
        self.counts["malformed"] += 1
        self.counts["drops"] += 1

    def retained(self):
        """A retained oversized downlink while the board is subscribed, then a cut: skipped (the live copy;
        amqtt replays retained messages of "$" topics to no one, so the replay at every subscribe is
        test_runtime's UCloud case), online again."""
        from host_tests.test_cloud_tencent import Mqtt

        con = Mqtt(self.ports)
        assert con.connect("soak-console", self.registry["console"]["username"],
                           read_console_password(self.state)) == 0
        try:
            mark = self.board.mark()
            self.settled()
            con._send(0x33, _s(self.topic("down")) + b"\x00\x01" + b"r" * 50_000)
            assert con.read()[0] == 0x40
            self.board.wait_line(r"dynreg: mqtt: skipped a 500\d\d-byte packet \(type 0x3[01]\)", mark)
            self.cut_now()
        finally:
            con._send(0x31, _s(self.topic("down")))
            con.sock.close()
        self.counts["retained"] += 1

    # ------------------------------------------------------------------ verdict

    def acked_at_broker(self):
        """Report numbers whose PUBLISH the proxy forwarded to the broker and whose PUBACK came back."""
        seen = set()
        for conn in self.proxy.conns:
            acks = {b for d, f, b in conn.packets if d == DOWN and f == 0x40}
            for d, f, b in conn.packets:
                if d == UP and f & 0xF6 == 0x32:
                    n = struct.unpack("!H", b[:2])[0]
                    pid, payload = b[2 + n:4 + n], b[4 + n:]
                    m = re.search(rb'"n": ?(\d+)', payload)
                    if m and pid in acks:
                        seen.add(int(m.group(1)))
        return seen


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_soak(tmp_path, interp):
    soak = Soak(tmp_path, interp)
    board = soak.board
    faults = [
        lambda: soak.cut_at(UP, _is(0x30, soak.topic("up"))),      # a report on its way to the broker
        lambda: soak.cut_at(DOWN, _is(0x40)),                      # the broker's PUBACK
        lambda: soak.cut_at(UP, _is(0xC0)),                        # a PINGREQ
        lambda: soak.cut_at(DOWN, _is(0xD0)),                      # a PINGRESP
        soak.cut_now,                                              # between packets
        soak.malformed,
        soak.oversized,
        soak.cut_subscribe,                                        # right after a reconnect's SUBSCRIBE
        soak.stall,
        soak.retained,
        soak.restart,
    ]
    try:
        board.wait_line(r"app: online 0 mem")
        first_reconnect_mem = None
        t_end = time.monotonic() + SOAK_S
        i = 0
        while time.monotonic() < t_end or soak.counts["drops"] < 20 or i < len(faults):
            faults[i % len(faults)]()
            if first_reconnect_mem is None:
                first_reconnect_mem = int(board.wait_line(r"app: online 1 mem (\d+)").group(1))
            i += 1
        soak.settled()
        last = [ln for ln in board.lines if ln and ln.startswith("app: online")][-1]
        last_mem = int(last.split()[-1])
    finally:
        running = board.stop()
        soak.proxy.close()
        soak.emu.stop()
    assert running, "the board's process ended:\n" + board.out
    acked = {int(n) for n in re.findall(r"app: report (\d+) acked", board.out)}
    missing = acked - soak.acked_at_broker()
    reconnects = board.count(r"dynreg: mqtt: online again")
    result = dict(soak.counts, interp=interp, seconds=SOAK_S, reconnects=reconnects, reports_acked=len(acked),
                  acked_missing_at_broker=len(missing), reboots=board.boots() - 2,
                  registrations=board.count("registering"), mem_first_reconnect=first_reconnect_mem,
                  mem_last_reconnect=last_mem, max_recovery_s=round(max(soak.recoveries), 2))
    out = REPO / "build" / "robustness"
    out.mkdir(parents=True, exist_ok=True)
    (out / ("soak-%s.json" % interp)).write_text(json.dumps(result, indent=1))
    print("\nsoak:", json.dumps(result, sort_keys=True))
    assert not missing, sorted(missing)
    assert result["reboots"] == 0 and result["registrations"] == 1, board.out
    assert soak.counts["drops"] >= 20 and reconnects >= soak.counts["drops"], result
    assert board.count("Traceback") == 0, board.out
    if interp == "micropython":
        assert last_mem - first_reconnect_mem <= 2048, result
