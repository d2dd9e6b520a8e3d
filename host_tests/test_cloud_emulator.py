"""The cloud emulator's own defences and its MQTT fidelity: console password, replays across a
restart, MQTT 3.1, duplicate client ids, UCloud's CONNECT rules, the CONNECT timeout, and the
official Tencent SDK logging in unpatched."""

import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import time

import pytest
from amqtt.session import Session

from host_tests.conftest import REPO, start_cloud
from test_cloud_tencent import SECRET as TENCENT_SECRET, Mqtt, post
from test_cloud_mqttreg import SECRET
from tools.cloud.__main__ import parse_args
from tools.cloud.platform import ConsolePlatform
from tools.cloud.protco import sign
from tools.cloud.registry import Console
from tools.cloud.state import CONSOLE_FILE, read_console_password
from tools.cloud.tencent import register_signature

UC, PR = "simucloudkey0001", "simprotcokey01"
MQTT31 = b"\x00\x06MQIsdp\x03"


def closed_within(sock, seconds):
    """Wait (at most `seconds`) for the peer to close: True when it did."""
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(4096):
                return True
    except (ConnectionError, ssl.SSLError):
        return True
    except (socket.timeout, TimeoutError):
        return False


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    state = tmp_path_factory.mktemp("cloud")
    emu = start_cloud(state, "--connect-timeout", "0.5")
    yield emu.ports
    assert emu.stop() == 0
    log = (state / "cloud.log").read_text()
    assert read_console_password(state) not in log and "Traceback" not in log


# -- console password --------------------------------------------------------------------------

def test_console_password_is_made_per_state_and_kept(tmp_path):
    assert "password" not in json.load(open(os.path.join(REPO, "tools", "cloud", "registry.json"), encoding="utf-8"))["console"]
    emu = start_cloud(tmp_path)
    emu.stop()
    first = read_console_password(tmp_path)
    assert first and len(first) >= 16
    assert stat.S_IMODE(os.stat(tmp_path / CONSOLE_FILE).st_mode) == 0o600
    emu = start_cloud(tmp_path)
    try:
        client = Mqtt(emu.ports)
        assert client.connect("console-1", "console", first) == 0  # the same state keeps its password
        client.close()
    finally:
        emu.stop()
    other = tmp_path / "other"
    emu = start_cloud(other)
    emu.stop()
    assert read_console_password(other) != first
    log = (tmp_path / "cloud.log").read_text()
    assert first not in log and f"its password is in {tmp_path / CONSOLE_FILE}" in log


def test_console_password_given_by_the_user(tmp_path):
    given = "given-by-the-user-7f3a"
    emu = start_cloud(tmp_path, "--console-password", given)
    try:
        client = Mqtt(emu.ports)
        assert client.connect("console-1", "console", given) == 0
        client.close()
    finally:
        emu.stop()
    assert read_console_password(tmp_path) == given and given not in (tmp_path / "cloud.log").read_text()


def console_session(address, tls=False):
    session = Session()
    session.username, session.password, session.client_id = "console", "pw-1", "watcher"
    session.remote_address, session.ssl_object = address, object() if tls else None
    return session


@pytest.mark.parametrize("address, tls, plain_tcp, accepted", [
    ("127.0.0.1", False, False, True),
    ("::1", False, False, True),
    ("::ffff:127.0.0.1", False, False, True),
    ("192.168.1.23", False, False, False),     # plain TCP from the LAN: refused by default
    ("192.168.1.23", True, False, True),       # the TLS port is fine
    ("192.168.1.23", False, True, True),       # --console-over-tcp
])
def test_console_over_plain_tcp_from_another_machine(address, tls, plain_tcp, accepted):
    platform = ConsolePlatform(Console("console", "pw-1"), plain_tcp=plain_tcp)
    assert platform.mqtt_authenticate(console_session(address, tls)) is accepted


# -- replays across a restart -------------------------------------------------------------------

def test_tencent_registration_replayed_after_restart_is_refused(tmp_path):
    pid, body = "SIMPSK0001", b'{"ProductId":"SIMPSK0001","DeviceName":"replay-after-restart"}'
    ts, nonce = int(time.time()), 424242
    headers = {"Content-Type": "application/json", "X-TC-Algorithm": "hmacsha256", "X-TC-Timestamp": str(ts),
               "X-TC-Nonce": str(nonce), "X-TC-Signature": register_signature(
                   TENCENT_SECRET[pid], "127.0.0.1", "/device/register", "hmacsha256", ts, nonce, body)}
    emu = start_cloud(tmp_path)
    try:
        status, reply = post(emu.ports, "/device/register", body, headers)
        assert status == 200 and "Payload" in reply["Response"], reply
    finally:
        emu.stop()
    psk = json.loads((tmp_path / "devices.json").read_text())["tencent"][f"{pid}/replay-after-restart"]["psk"]
    emu = start_cloud(tmp_path)  # new ports, same state
    try:
        status, reply = post(emu.ports, "/device/register", body, headers)
    finally:
        emu.stop()
    assert reply["Response"]["Error"] == {"Code": "AuthFailure.SignatureFailure",
                                          "Message": "nonce already used within the timestamp window "
                                                     "(replayed request)"}, reply
    assert json.loads((tmp_path / "devices.json").read_text())["tencent"][f"{pid}/replay-after-restart"]["psk"] == psk
    assert stat.S_IMODE(os.stat(tmp_path / "seen-tencent.json").st_mode) == 0o600


def protco_registration(ports, unique, ts, request_id="r1"):
    """Registration CONNECT signed for ts, then its request; returns (CONNACK code, reply or None)."""
    client = Mqtt(ports)
    rc = client.connect(f"register_{PR}_{unique}", f"{PR}|signMethod=hmacSha256,ts={ts}", sign(SECRET[PR], PR, ts))
    if rc:
        return rc, None
    base = f"register/v2/{PR}/{unique}/register"
    assert client.subscribe(base + "_response") == 0
    client.publish(base, json.dumps({"id": request_id, "ts": ts, "code": "register", "data": {}}).encode())
    ((_, reply),) = client.messages(3)[:1]
    client.close()
    return rc, json.loads(reply)


def test_protco_signature_belongs_to_its_first_device_across_restart(tmp_path):
    ts = int(time.time())
    emu = start_cloud(tmp_path)
    try:
        rc, reply = protco_registration(emu.ports, "victim01", ts)
        assert rc == 0 and reply["res"] == 0, reply
        assert protco_registration(emu.ports, "thief01", ts) == (5, None)   # the captured CONNECT, another id
    finally:
        emu.stop()
    emu = start_cloud(tmp_path)
    try:
        assert protco_registration(emu.ports, "thief02", ts) == (5, None)   # still after a restart
        rc, reply = protco_registration(emu.ports, "victim01", ts)          # the device's own retry
        assert rc == 0 and reply["res"] == 0, reply
        rc, reply = protco_registration(emu.ports, "other01", ts + 1)       # a new signature is fine
        assert rc == 0 and reply["res"] == 0, reply
    finally:
        emu.stop()
    records = json.loads((tmp_path / "devices.json").read_text())["protco"]
    assert sorted(records) == [f"{PR}/other01", f"{PR}/victim01"]
    assert "registration signature already used for another device id" in (tmp_path / "cloud.log").read_text()


def test_protco_signature_reused_by_a_session_already_logged_in(cloud):
    """Both CONNECTs pass before either registers: the second request is refused (res 1002)."""
    ts = int(time.time()) - 100
    sessions = []
    for unique in ("race-a", "race-b"):
        client = Mqtt(cloud)
        assert client.connect(f"register_{PR}_{unique}", f"{PR}|signMethod=hmacSha256,ts={ts}",
                              sign(SECRET[PR], PR, ts)) == 0
        assert client.subscribe(f"register/v2/{PR}/{unique}/register_response") == 0
        sessions.append((unique, client))
    replies = []
    for unique, client in sessions:
        client.publish(f"register/v2/{PR}/{unique}/register", b'{"id":"1","code":"register","data":{}}')
        ((_, reply),) = client.messages(3)[:1]
        replies.append(json.loads(reply))
        client.close()
    assert replies[0]["res"] == 0 and replies[1]["res"] == 1002, replies
    assert "another device id" in replies[1]["msg"]


# -- MQTT fidelity --------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [MQTT31, b"\x00\x04MQTT\x04"], ids=["3.1", "3.1.1"])
def test_mqtt_31_and_311_accepted(cloud, protocol):
    dsn = f"proto-{protocol[-1]}"
    client = Mqtt(cloud)
    assert client.connect(f"{UC}.{dsn}", f"{UC}|{dsn}|2", SECRET[UC], protocol=protocol) == 0
    assert client.subscribe(f"/$system/{UC}/{dsn}/password_reply") == 0 and client.ping()
    client.close()


def test_unknown_protocol_level_refused(cloud):
    client = Mqtt(cloud)
    assert client.connect(f"{UC}.proto-9", f"{UC}|proto-9|2", SECRET[UC], protocol=b"\x00\x04MQTT\x03") == 1
    client.close()


def test_second_login_with_the_same_client_id_closes_the_first(cloud):
    old = Mqtt(cloud)
    assert old.connect(f"{UC}.dup-0001", f"{UC}|dup-0001|2", SECRET[UC]) == 0
    new = Mqtt(cloud)
    assert new.connect(f"{UC}.dup-0001", f"{UC}|dup-0001|2", SECRET[UC]) == 0
    assert closed_within(old.sock, 1.0), "the older connection is still open 1 s after the new login"
    assert new.ping()
    refused = Mqtt(cloud)  # a refused login closes nobody
    assert refused.connect(f"{UC}.dup-0001", f"{UC}|dup-0001|2", "w" * 16) == 5
    assert new.ping()
    new.close()
    refused.close()


@pytest.mark.parametrize("keepalive, will, code", [
    (30, None, 0), (1200, None, 0), (29, None, 5), (1201, None, 5), (0, None, 5),
    (60, ("/dead", "gone"), 5),
])
def test_ucloud_keepalive_range_and_no_will(cloud, keepalive, will, code):
    client = Mqtt(cloud)
    dsn = f"ka-{keepalive}-{bool(will):d}"
    assert client.connect(f"{UC}.{dsn}", f"{UC}|{dsn}|2", SECRET[UC], keepalive=keepalive, will=will) == code
    client.close()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls-no-handshake"])
def test_connection_without_connect_is_closed(cloud, tls):
    sock = socket.create_connection(("127.0.0.1", cloud["mqtts" if tls else "mqtt"]))
    try:
        assert closed_within(sock, 5.0)  # --connect-timeout 0.5 here
    finally:
        sock.close()


def test_connect_timeout_default_is_10_s():
    assert parse_args([]).connect_timeout == 10


# -- the official Tencent SDK ----------------------------------------------------------------------

def test_official_tencent_sdk_registers_and_logs_in(tmp_path):
    """tencent-iot-device (requirements-nodeps.txt) as published: only its hosts, ports and CA point
    here (tools/bench/sdk.py's harness); it speaks MQTT 3.1."""
    pid = "SIMPSK0001"
    names = ["ap-guangzhou.gateway.tencentdevices.com", pid + ".iotcloud.tencentdevices.com"]
    emu = start_cloud(tmp_path / "cloud", *sum((["--cert-name", n] for n in names), []))
    try:
        spec = {"ports": emu.ports, "pid": pid, "secret": TENCENT_SECRET[pid], "name": "sdk-0001",
                "dir": str(tmp_path / "sdk")}
        run = subprocess.run([sys.executable, "-m", "tools.bench", "--sdk-harness", json.dumps(spec)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    finally:
        emu.stop()
    assert run.returncode == 0 and "sdk: registered" in run.stdout and "report 1 sent" in run.stdout, \
        run.stdout[-2000:] + run.stderr[-2000:]
    record = json.loads((tmp_path / "cloud" / "devices.json").read_text())["tencent"][f"{pid}/sdk-0001"]
    assert record["activated"] and record["logins"] == 1
    log = (tmp_path / "cloud" / "cloud.log").read_text()
    assert f"mqtt login {pid}/sdk-0001 ok" in log and record["psk"] not in run.stdout + run.stderr + log

