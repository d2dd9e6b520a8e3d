"""The runtime after login (firmware/lib/dynreg/device.py) under both interpreters, against the real broker
through host_tests/mqttproxy.py: hostile packets, keepalive, QoS 1 resend, Tencent's data template,
registration deadlines, escaped server text and failures that name their step.

Every case waits on events (the board's log lines, packets the proxy forwarded), never on a sleep.
"""

import json
import re
import socket
import struct
import threading
import time

import pytest

from host_tests.conftest import WIFI, mqtt_settings, run_on_device
from host_tests.mqttproxy import DOWN, UP, MqttProxy, packet
from host_tests.runtimeboard import Board, tencent_plain
from host_tests.test_cloud_tencent import Mqtt
from tools.cloud import certs
from tools.cloud.state import read_console_password

PSK = "SIMPSK0001"
UCLOUD = "simucloudkey0001"
ONLINE = r"app: online (\d+) mem (\d+)"


def _s(text):
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def console(cloud):
    c = Mqtt(cloud.ports)
    assert c.connect("console-runtime", cloud.registry["console"]["username"],
                     read_console_password(cloud.state)) == 0
    return c


def settled(proxy, board):
    """The newest connection is logged in and subscribed, and the board says it is online."""
    proxy.wait(lambda: proxy.live() and proxy.live().sent(DOWN, 0x90), what="SUBACK")
    return proxy.live()


def recovers(proxy, board, after, why):
    """One 'connection lost' line naming `why` since `after`, then online again on a new connection."""
    line = board.wait_line(r"dynreg: mqtt: connection lost \((.*)\); reconnecting", after)
    assert re.search(why, line.group(1)), line.group(0)
    board.wait_line(r"dynreg: mqtt: online again", after)
    m = board.mark()
    board.wait_line(r"app: report \d+ acked", m)  # and the runtime works on the new connection
    assert board.count(r"connection lost", after) == 1, board.out
    assert board.count("Traceback", 0) == 0, board.out


HOSTILE = [  # (case, bytes for the board, what the lost-connection line names; None: stays online)
    ("suback-200-bytes", packet(0x90, b"\x00\x01" + bytes(198)), "malformed SUBACK"),
    ("pingresp-length-1", packet(0xD0, b"\x00"), "malformed PINGRESP"),
    ("qos2-publish", packet(0x34, _s("t") + b"\x00\x07" + b"x"), r"QoS 2 PUBLISH"),
    ("unknown-type", packet(0xF0, b""), "unexpected packet 0xf0"),
    ("publish-announcing-100MB", b"\x30\x80\xc2\xd7\x2f" + bytes(64), "deadline|timed out"),
]


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_hostile_packets_after_login(cloud, tmp_path, interp):
    """Each hostile packet -> one log line, online again in place; a 1 MB PUBLISH at a 256 KB heap is
    skipped in pieces and the board stays online; the process never exits or reboots."""
    proxy = MqttProxy(cloud.ports["mqtt"])
    name = "rt-hostile-" + interp[:2]
    board = Board(tmp_path, interp, tencent_plain(cloud.ports, cloud.registry, proxy.port, PSK, name), cloud.state,
                  heapsize="256K")
    try:
        board.wait_line(ONLINE)
        for case, data, why in HOSTILE:
            conn = settled(proxy, board)
            mark = board.mark()
            proxy.inject(data, conn)
            recovers(proxy, board, mark, why)
        # a real 1 MB PUBLISH on the board's own downlink: skipped in small pieces, never allocated whole
        conn = settled(proxy, board)
        mark = board.mark()
        body = _s("$thing/down/property/%s/%s" % (PSK, name)) + b"z" * (1 << 20)
        proxy.inject(packet(0x30, body), conn)
        board.wait_line(r"dynreg: mqtt: skipped a %d-byte packet \(type 0x30\) over the 4096-byte limit"
                        % len(body), mark)
        board.wait_line(r"app: report \d+ acked", board.mark())
        assert board.count("connection lost", mark) == 0 and not proxy.newest().closed, board.out
        # trickled at 0.2 s a byte: the poll ends within its time plus one socket timeout (10 s)
        conn = settled(proxy, board)
        mark = board.mark()
        slow = packet(0x30, _s("$thing/down/property/%s/%s" % (PSK, name)) + b"s" * 200)
        t0 = time.monotonic()
        threading.Thread(target=_trickle, args=(proxy, conn, slow), daemon=True).start()
        board.wait_line(r"dynreg: mqtt: connection lost", mark)
        assert time.monotonic() - t0 < 0.3 + 10 + 3, "a trickled packet held poll() too long"
        recovers(proxy, board, mark, "deadline|timed out")
        assert board.boots() == 2 and board.count("registering") == 1, board.out  # no reboot after login
    finally:
        assert board.stop(), "the board's process ended:\n" + board.out
        proxy.close()


def _trickle(proxy, conn, data):
    try:
        for i in range(len(data)):
            proxy.inject(data[i:i + 1], conn)
            time.sleep(0.2)  # the hostile peer's pace, not a wait for an outcome
    except OSError:
        pass  # the board gave up and the connection is gone: what the test waits for


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_keepalive_pings_and_missing_pingresp(cloud, tmp_path, interp):
    """keepalive_s=2: PINGREQ goes out when due and is answered; a broker that stops answering is noticed
    (no PINGRESP) and the connection is made again in place."""
    proxy = MqttProxy(cloud.ports["mqtt"])
    s = tencent_plain(cloud.ports, cloud.registry, proxy.port, PSK, "rt-ka-" + interp[:2], keepalive_s=2)
    board = Board(tmp_path, interp, s, cloud.state, period_ms=5000)
    try:
        conn = settled(proxy, board)
        proxy.wait(lambda: conn.sent(UP, 0xC0) and conn.sent(DOWN, 0xD0), what="PINGREQ answered")
        connect = [b for d, f, b in conn.packets if d == UP and f == 0x10][0]
        assert connect[8:10] == b"\x00\x02"  # keepalive in CONNECT
        mark = board.mark()
        proxy.rule = (UP, lambda c, f, b: c is conn and f == 0xC0, "stall")
        recovers(proxy, board, mark, "no PINGRESP")
    finally:
        assert board.stop()
        proxy.close()


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
@pytest.mark.parametrize("where", ["publish-lost", "puback-lost"])
def test_qos1_resent_once_after_reconnect(cloud, tmp_path, interp, where):
    """The connection dies with a QoS 1 report unacknowledged (its PUBLISH or its PUBACK lost): after the
    reconnect the board sends it again with DUP set and the same packet id, and reports it acknowledged."""
    proxy = MqttProxy(cloud.ports["mqtt"])
    board = Board(tmp_path, interp, tencent_plain(cloud.ports, cloud.registry, proxy.port, PSK,
                                                  "rt-q1%s-%s" % (where.split("-")[0][-3:], interp[:2])), cloud.state)
    try:
        conn = settled(proxy, board)
        direction, kind = (UP, 0x30) if where == "publish-lost" else (DOWN, 0x40)
        hit = []

        def pred(c, first, body):
            if c is conn and first & 0xF0 == kind and (kind == 0x40 or b"$thing/up/property" in body[:60]):
                hit.append(body)
                return True
            return False

        mark = board.mark()
        proxy.rule = (direction, pred, "cut")
        board.wait_line(r"dynreg: mqtt: online again", mark)
        proxy.wait(lambda: proxy.live() is not conn and proxy.live() and proxy.live().sent(UP, 0x30),
                   what="a PUBLISH after the reconnect")
        new = proxy.live()
        dup = [b for f, b in new.sent(UP, 0x30) if f == 0x3A]
        assert dup, new.packets
        pid = hit[0][:2] if kind == 0x40 else hit[0][2 + struct.unpack("!H", hit[0][:2])[0]:][:2]
        assert dup[0][2 + struct.unpack("!H", dup[0][:2])[0]:][:2] == pid
        proxy.wait(lambda: [b for f, b in new.sent(DOWN, 0x40) if b == pid], what="the PUBACK of the resend")
        lost = int(board.wait_line(r"app: report (\d+) (acked|unacked)", mark).group(1))
        assert board.count(r"app: report %d acked" % lost, mark) == 1, board.out
    finally:
        assert board.stop()
        proxy.close()


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_tencent_control_and_report_reply(cloud, tmp_path, interp):
    """The console sends `control`: the board answers control_reply (clientToken echoed, code 0) and hands the
    params over; a report_reply with a non-zero code is logged, its text escaped."""
    proxy = MqttProxy(cloud.ports["mqtt"])
    name = "rt-ctl-" + interp[:2]
    board = Board(tmp_path, interp, tencent_plain(cloud.ports, cloud.registry, proxy.port, PSK, name), cloud.state)
    con = console(cloud)
    try:
        settled(proxy, board)
        assert con.subscribe("$thing/up/property/%s/%s" % (PSK, name)) == 0
        mark = board.mark()
        control = {"method": "control", "clientToken": "ct-7", "params": {"power_switch": 1}}
        con.publish("$thing/down/property/%s/%s" % (PSK, name), json.dumps(control).encode(), qos=1)
        board.wait_line(r"app: message on \$thing/down/property/%s/%s" % (PSK, name), mark)
        assert "dynreg: tencent: control ct-7 -> code 0" in board.out
        replies = []
        deadline = time.monotonic() + 30
        while not replies and time.monotonic() < deadline:
            replies = [json.loads(p) for _, p in con.messages(0.5)
                       if json.loads(p).get("method") == "control_reply"]
        assert replies and replies[0]["clientToken"] == "ct-7" and replies[0]["code"] == 0, replies
        bad = {"method": "report_reply", "clientToken": "dr-1", "code": 406, "status": "bad\ndynreg: forged\x1b[2J"}
        con.publish("$thing/down/property/%s/%s" % (PSK, name), json.dumps(bad).encode(), qos=1)
        line = board.wait_line(r"dynreg: tencent: report dr-1 refused: code 406 \((.*)\)", mark)
        assert line.group(1) == r"bad\x0adynreg: forged\x1b[2J", line.group(0)
        assert not [ln for ln in board.lines if ln and ln.startswith("dynreg: forged")]
    finally:
        con.sock.close()
        assert board.stop()
        proxy.close()


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_retained_oversized_downlink(cloud, tmp_path, interp):
    """A 300 KB retained message on a UCloud board's downlink arrives at every (re)subscribe: skipped in
    pieces each time, the board stays online; gone when the retained message is cleared."""
    proxy = MqttProxy(cloud.ports["mqtt"])
    name = "rt-retain-" + interp[:2]
    topic = "/%s/%s/set" % (UCLOUD, name)
    con = console(cloud)
    con._send(0x33, _s(topic) + b"\x00\x01" + b"r" * 300_000)  # QoS 1, retained
    assert con.read()[0] == 0x40
    s = dict(WIFI, platform="ucloud", prod_id=UCLOUD, prod_secret=cloud.secret("ucloud", UCLOUD), dev_name=name,
             mqtt_host="localhost", mqtt_port=proxy.port, tls=0, retry_ms=100, retry_max_ms=800)
    board = Board(tmp_path, interp, s, cloud.state)
    try:
        skipped = r"dynreg: mqtt: skipped a 300\d\d\d-byte packet \(type 0x31\)"
        board.wait_line(skipped)
        board.wait_line(r"app: report \d+ acked", board.mark())
        mark = board.mark()
        proxy.cut()
        board.wait_line(r"dynreg: mqtt: online again", mark)
        board.wait_line(skipped, mark)
        board.wait_line(r"app: report \d+ acked", board.mark())
        assert board.count("connection lost", mark) == 1 and board.boots() == 2, board.out
    finally:
        con._send(0x31, _s(topic))  # an empty retained message clears it
        con.sock.close()
        assert board.stop()
        proxy.close()


# ------------------------------------------------------------------------------------------ registration


class SlowServer:
    """A plain HTTP server that answers each connection with `reply`, `pace` seconds a byte; records how
    long each connection stayed open (until the board closed it)."""

    def __init__(self, reply, pace):
        self.reply, self.pace, self.held = reply, pace, []
        self.cond = threading.Condition()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        t0 = time.monotonic()
        try:
            got = b""
            while b"\r\n\r\n" not in got:
                got += conn.recv(4096)
            for i in range(len(self.reply)):
                conn.sendall(self.reply[i:i + 1])
                if self.pace:
                    time.sleep(self.pace)  # the hostile server's pace
            conn.recv(1)
        except OSError:
            pass
        conn.close()
        with self.cond:
            self.held.append(time.monotonic() - t0)
            self.cond.notify_all()

    def wait_held(self, n, timeout=30):
        """Block until n connections have ended."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.held) >= n, timeout), self.held

    def close(self):
        self.sock.close()


def _http(body):
    return b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_trickling_registration_server_meets_the_deadline(cloud, board, interp):
    """A registration server sending a byte every 0.2 s: each attempt ends within reg_timeout_ms + 1 s,
    then the board backs off."""
    srv = SlowServer(_http(b"{}" + b" " * 4000), 0.2)
    s = dict(WIFI, platform="tencent", prod_id=PSK, prod_secret=cloud.secret("tencent", PSK), dev_name="rt-slow",
             reg_host="127.0.0.1", reg_port=srv.port, tls=0, reg_timeout_ms=3000, retry_ms=100, max_tries=2)
    try:
        run = board(s, timeout=60)
        srv.wait_held(2)
    finally:
        srv.close()
    assert run.rc == 1 and "giving up after 2 attempts" in run.out, run
    assert run.out.count("http: no complete answer before the deadline") == 2, run
    assert "attempt 1 failed" in run.out and "retrying in" in run.out
    assert len(srv.held) == 2 and max(srv.held) < 3.0 + 1.0, srv.held


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_tencent_error_text_is_escaped(cloud, board, interp):
    """An error Message with a newline, a carriage return and a terminal escape: one escaped, bounded line."""
    msg = "no\ndynreg: registered\r\x1b[2J" + "x" * 100
    body = json.dumps({"Response": {"Error": {"Code": "InvalidParameter", "Message": msg}}}).encode()
    srv = SlowServer(_http(body), 0)
    s = dict(WIFI, platform="tencent", prod_id=PSK, prod_secret=cloud.secret("tencent", PSK), dev_name="rt-esc",
             reg_host="127.0.0.1", reg_port=srv.port, tls=0, retry_ms=100, max_tries=1)
    try:
        run = board(s, timeout=60)
    finally:
        srv.close()
    assert run.rc == 1, run
    lines = [ln for ln in run.out.splitlines() if "registration refused" in ln]
    assert len(lines) == 1 and r"no\x0adynreg: registered\x0d\x1b[2Jxxx" in lines[0], lines
    assert "x" * 65 not in lines[0] and "..." in lines[0], lines
    assert not [ln for ln in run.out.splitlines() if ln.startswith("dynreg: registered")], run
    assert all(ch.isprintable() for ln in run.out.splitlines() for ch in ln), run


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_failures_name_their_step_and_host(cloud, tmp_path, interp):
    """TLS verification, DNS and a timeout: one line each, naming the step and host:port."""
    other = certs.Pki(str(tmp_path / "other"))  # a CA that did not sign the emulator's certificate
    (tmp_path / "other").mkdir()
    other.ensure()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) and never speaks
    quiet = silent.getsockname()[1]
    out = run_on_device(interp, tmp_path, """
from dynreg import DynregError, mqtt, net
ctx = net.tls_context(open(%r, "rb").read())
for args in ((ctx, "localhost", %d), (None, "nonexistent.invalid", 1883), (ctx, "127.0.0.1", %d)):
    try:
        mqtt.login(args[0], args[1], args[2], "c", "u", "p", 60, 2)
    except DynregError as e:
        print("error:", e)
""" % (other.ca_der, cloud.ports["mqtts"], quiet))
    silent.close()
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert errors == ["error: mqtt: TLS handshake with localhost:%d failed: certificate verify failed: "
                      "The certificate is not correctly signed by the trusted CA" % cloud.ports["mqtts"], errors[1],
                      "error: mqtt: TLS handshake with 127.0.0.1:%d failed: timed out" % quiet], out
    assert errors[1].startswith("error: mqtt: DNS lookup of nonexistent.invalid failed ("), out


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_keepalive_outside_the_platforms_range_is_a_config_error(cloud, board, interp):
    """UCloud's broker allows keepalives of 30..1200 s: keepalive_s=2 is refused at login, by name."""
    run = board(mqtt_settings(cloud, "ucloud", UCLOUD, "rt-ka-range-" + interp[:2], keepalive_s=2))
    assert run.rc == 1 and "ConfigError: NVS keepalive_s is 2; this platform allows 30..1200 s" in run.out, run
