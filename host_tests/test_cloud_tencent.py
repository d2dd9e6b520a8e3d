"""The cloud emulator's Tencent platform, driven over the network like a device would."""

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import shutil
import socket
import ssl
import struct
import time

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from host_tests.conftest import REPO, start_cloud
from host_tests.secrets_scan import assert_clean
from tools.cloud.tencent import legacy_signature, mqtt_password, register_signature

REGISTRY = json.load(open(os.path.join(REPO, "tools", "cloud", "registry.json"), encoding="utf-8"))["tencent"]
SECRET = {pid: p["secret"] for pid, p in REGISTRY.items()}
PSK, CERT, PRE, OFF = "SIMPSK0001", "SIMCERT001", "SIMPRE0001", "SIMOFF0001"


# -- host-side device helpers ----------------------------------------------------------------

def register(ports, pid, dn, secret=None, algorithm="hmacsha256", tls=True, header_algorithm=None,
             timestamp=None, body=None, path="/device/register", sign_host="127.0.0.1", sign_path=None):
    """POST /device/register signed like the SDKs do; returns (HTTP status, reply JSON)."""
    body = body if body is not None else json.dumps({"ProductId": pid, "DeviceName": dn},
                                                     separators=(",", ":")).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = random.randrange(2 ** 31)
    signature = register_signature(secret or SECRET.get(pid, "x" * 24), sign_host, sign_path or path, algorithm,
                                   timestamp, nonce, body)
    headers = {"Content-Type": "application/json; charset=utf-8",
               "X-TC-Algorithm": header_algorithm or algorithm, "X-TC-Timestamp": str(timestamp),
               "X-TC-Nonce": str(nonce), "X-TC-Signature": signature}
    return post(ports, path, body, headers, tls)


def register_legacy(ports, pid, dn, secret=None, timestamp=None):
    """POST /register/dev (QuecPython/LuatOS style); returns (HTTP status, reply JSON)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = random.randrange(2 ** 31)
    body = {"deviceName": dn, "nonce": nonce, "productId": pid, "timestamp": timestamp,
            "signature": legacy_signature(secret or SECRET[pid], dn, nonce, pid, timestamp)}
    return post(ports, "/register/dev", json.dumps(body).encode(), {"Content-Type": "application/json"}, False)


def post(ports, path, body, headers, tls=True):
    if tls:
        ctx = ssl.create_default_context(cafile=ports["ca"])
        conn = http.client.HTTPSConnection("127.0.0.1", ports["https"], context=ctx, timeout=10)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=10)
    try:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def decrypt(secret, payload, length):
    """AES-128-CBC, key secret[:16], IV '0'*16, zero padding trimmed to length -> JSON."""
    dec = Cipher(algorithms.AES(secret[:16].encode()), modes.CBC(b"0" * 16)).decryptor()
    plain = dec.update(base64.b64decode(payload)) + dec.finalize()
    assert all(b == 0 for b in plain[length:]) and len(plain) % 16 == 0
    return json.loads(plain[:length])


def registered(ports, pid, dn, **kw):
    """Register and return the decrypted payload (asserting success)."""
    status, reply = register(ports, pid, dn, **kw)
    assert status == 200 and "Error" not in reply["Response"], reply
    r = reply["Response"]
    return decrypt(SECRET[pid], r["Payload"], r["Len"])


def error_code(reply):
    return reply["Response"]["Error"]["Code"]


class Mqtt:
    """A minimal blocking MQTT 3.1.1 client (what umqtt.simple does, over a raw socket)."""

    def __init__(self, ports, tls=False, cert=None, key=None, tmp=None):
        sock = socket.create_connection(("127.0.0.1", ports["mqtts" if tls else "mqtt"]), timeout=5)
        if tls:
            ctx = ssl.create_default_context(cafile=ports["ca"])
            if cert:
                cert_file, key_file = tmp / "c.pem", tmp / "k.pem"
                cert_file.write_text(cert)
                key_file.write_text(key)
                ctx.load_cert_chain(cert_file, key_file)
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.pid = 0
        self.pending = []

    def connect(self, client_id, username=None, password=None, clean=True, keepalive=60, will=None,
                protocol=b"\x00\x04MQTT\x04"):
        """CONNECT (will: (topic, message), QoS 0); returns the CONNACK return code (0 = accepted).
        protocol: name and level, b"\\x00\\x06MQIsdp\\x03" for MQTT 3.1."""
        flags = (0x02 if clean else 0) | (0x80 if username else 0) | (0x40 if password else 0) | (0x04 if will else 0)
        payload = _s(client_id) + (_s(will[0]) + _s(will[1]) if will else b"")
        payload += (_s(username) if username else b"") + (_s(password) if password else b"")
        self._send(0x10, protocol + bytes([flags]) + struct.pack("!H", keepalive) + payload)
        kind, body = self.read()
        assert kind == 0x20, kind
        return body[1]

    def subscribe(self, topic):
        """SUBSCRIBE QoS 0; returns the granted code (0x80 = refused)."""
        self.pid += 1
        self._send(0x82, struct.pack("!H", self.pid) + _s(topic) + b"\x00")
        while True:
            kind, body = self.read()
            if kind == 0x90:
                return body[2]

    def publish(self, topic, payload, qos=0):
        """PUBLISH; with qos=1 wait for the PUBACK (PUBLISH packets meanwhile are kept)."""
        if not qos:
            self._send(0x30, _s(topic) + payload)
            return
        self.pid += 1
        self._send(0x32, _s(topic) + struct.pack("!H", self.pid) + payload)
        while True:
            kind, body = self.read()
            if kind == 0x40:
                assert struct.unpack("!H", body)[0] == self.pid
                return
            self.pending.append((kind, body))

    def ping(self):
        """True if the broker still answers (connection alive)."""
        self._send(0xC0, b"")
        try:
            while True:
                kind, _ = self.read()
                if kind == 0xD0:
                    return True
        except (ConnectionError, OSError, AssertionError):
            return False

    def messages(self, wait=1.0):
        """All PUBLISH packets received within wait seconds: [(topic, payload)]."""
        got = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                kind, body = self.pending.pop(0) if self.pending else self.read()
            except (socket.timeout, TimeoutError):
                break
            if kind & 0xF0 == 0x30:
                n = struct.unpack("!H", body[:2])[0]
                got.append((body[2:2 + n].decode(), body[2 + n:]))
        self.sock.settimeout(5)
        return got

    def read(self):
        head = self._exact(1)[0]
        length, shift = 0, 0
        while True:
            b = self._exact(1)[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return head, self._exact(length)

    def _exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by broker")
            data += chunk
        return data

    def _send(self, head, body):
        n, rl = len(body), b""
        while True:
            b, n = n & 0x7F, n >> 7
            rl += bytes([b | (0x80 if n else 0)])
            if not n:
                break
        self.sock.sendall(bytes([head]) + rl + body)

    def close(self):
        self.sock.close()


def _s(text):
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def login(ports, pid, dn, psk, tls=False, algorithm="hmacsha256", expiry=None):
    """Connect with Tencent's PSK login; returns (client, CONNACK code)."""
    expiry = int(time.time()) + 3600 if expiry is None else expiry
    username = f"{pid}{dn};12010126;abcde;{expiry}"
    client = Mqtt(ports, tls=tls)
    return client, client.connect(pid + dn, username, mqtt_password(psk, username, algorithm))


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    state = tmp_path_factory.mktemp("cloud")
    emu = start_cloud(state)
    yield emu.ports
    assert emu.stop() == 0
    _assert_no_secrets(state)


def _assert_no_secrets(state):
    """Neither product secrets nor issued device secrets may appear in the log."""
    log = (state / "cloud.log").read_text()
    devices = json.loads((state / "devices.json").read_text())["tencent"]
    assert_clean(log, list(SECRET.values()) + [d["psk"] for d in devices.values() if "psk" in d],
                 set(SECRET) | set(devices), derived=True, where="the emulator's log")
    assert "Traceback" not in log


# -- tests ------------------------------------------------------------------------------------

def test_signature_vectors():
    """docs/platforms/tencent.md "Test vectors"."""
    body = b'{"ProductId":"PRODUCT_ID1","DeviceName":"DEVICENAME1"}'
    assert hashlib.sha1(body).hexdigest() == "88eef715f4c42652ef51b274f174f4f81a393f75"
    assert register_signature("PRODUCT_SECRETKEY", "ap-guangzhou.gateway.tencentdevices.com",
                              "/device/register", "hmacsha1", 1629362589, 333464802, body) \
        == "7u3+tAPlt8O4mPpBm3lambv23sw="
    assert mqtt_password("7WmFA/MEs+Fy+32QwJWtYw==", "S3EUVBRJLBdevice_1234;12010126;abcde;2147483647") == \
        "c431221c27bb1b44156bf798569569b3e9b78d7778aeba89303ea1b4da21e7b3;hmacsha256"
    src = "deviceName=d&nonce=1&productId=p&timestamp=2"
    assert legacy_signature("k", "d", 1, "p", 2) == base64.b64encode(
        hmac.new(b"k", src.encode(), hashlib.sha1).hexdigest().encode()).decode()


def test_psk_register_login_time_and_report(cloud):
    status, reply = register(cloud, PSK, "240ac4000001")
    assert status == 200 and set(reply["Response"]) == {"Len", "Payload", "RequestId"}
    r = reply["Response"]
    payload = decrypt(SECRET[PSK], r["Payload"], r["Len"])
    assert payload["encryptionType"] == 2 and len(base64.b64decode(payload["psk"])) == 16

    client, rc = login(cloud, PSK, "240ac4000001", payload["psk"], tls=True)
    assert rc == 0
    assert client.subscribe(f"$sys/operation/result/{PSK}/240ac4000001") == 0
    assert client.subscribe(f"$thing/down/property/{PSK}/240ac4000001") == 0
    before = time.time()
    client.publish(f"$sys/operation/{PSK}/240ac4000001", b'{"type":"get","resource":["time"]}')
    (topic, data), = client.messages()
    answer = json.loads(data)
    assert topic == f"$sys/operation/result/{PSK}/240ac4000001"
    assert answer["type"] == "get" and abs(answer["time"] - before) < 5
    assert abs(answer["ntptime1"] / 1000 - before) < 5 and answer["ntptime2"] >= answer["ntptime1"]

    client.publish(f"$thing/up/property/{PSK}/240ac4000001",
                   b'{"method":"report","clientToken":"t-1","params":{"x":1}}', qos=1)
    (topic, data), = client.messages()
    assert topic == f"$thing/down/property/{PSK}/240ac4000001"
    assert json.loads(data) == {"method": "report_reply", "clientToken": "t-1", "code": 0, "status": "success"}
    assert client.ping()
    client.close()


def test_cert_product_login_with_client_certificate(cloud, tmp_path):
    payload = registered(cloud, CERT, "cert-dev-1")
    assert payload["encryptionType"] == 1
    assert payload["clientCert"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY-----" in payload["clientKey"]
    username = f"{CERT}cert-dev-1;12010126;abcde;{int(time.time()) + 60}"

    client = Mqtt(cloud, tls=True)  # no client certificate
    assert client.connect(CERT + "cert-dev-1", username, "x;hmacsha256") == 5
    client = Mqtt(cloud)  # plain TCP cannot carry a certificate
    assert client.connect(CERT + "cert-dev-1", username, "x;hmacsha256") == 5
    other = registered(cloud, CERT, "cert-dev-2")  # a valid certificate, but of another device
    client = Mqtt(cloud, tls=True, cert=other["clientCert"], key=other["clientKey"], tmp=tmp_path)
    assert client.connect(CERT + "cert-dev-1", username, "x;hmacsha256") == 5

    client = Mqtt(cloud, tls=True, cert=payload["clientCert"], key=payload["clientKey"], tmp=tmp_path)
    assert client.connect(CERT + "cert-dev-1", username, "x;hmacsha256") == 0
    assert client.subscribe(f"{CERT}/cert-dev-1/control") == 0
    client.close()
    assert error_code(register(cloud, CERT, "cert-dev-1")[1]) == "FailedOperation.DeviceAlreadyActivated"


@pytest.mark.parametrize("header", ["hmacsha1", "HmacSha1", "HMACSHA1"])
def test_hmacsha1_over_http_header_any_case(cloud, header):
    dn = "sha1-" + header
    payload = registered(cloud, PSK, dn, algorithm="hmacsha1", header_algorithm=header, tls=False)
    _, rc = login(cloud, PSK, dn, payload["psk"], algorithm="hmacsha1")
    assert rc == 0


def test_algorithm_signed_as_spelled_in_header(cloud):
    """A client that signs the algorithm exactly as its header spells it (docs: HmacSha256)."""
    assert registered(cloud, PSK, "spelled-1", algorithm="HmacSha256")["encryptionType"] == 2


def test_refusals_have_the_error_shape(cloud):
    status, reply = register(cloud, PSK, "bad-sig-1", secret="W" * 24)
    assert status == 200 and set(reply) == {"Response"}
    assert set(reply["Response"]) == {"Error", "RequestId"} and reply["Response"]["RequestId"]
    assert set(reply["Response"]["Error"]) == {"Code", "Message"}
    assert error_code(reply) == "AuthFailure.SignatureFailure"

    assert error_code(register(cloud, PSK, "old-1", timestamp=int(time.time()) - 3600)[1]) \
        == "AuthFailure.SignatureExpire"
    assert error_code(register(cloud, "NOSUCHPROD", "x1", secret="A" * 24)[1]) \
        == "ResourceNotFound.ProductNotExist"
    reply = register(cloud, OFF, "off-1")[1]
    assert reply["Response"]["Error"]["Message"] == \
        "Not support dynamic device register, please check setting first"
    reply = register(cloud, PRE, "not-precreated")[1]
    assert reply["Response"]["Error"]["Message"] == "Pre create mode: device not exists"
    assert registered(cloud, PRE, "precreated-1")["encryptionType"] == 2
    # the signature covers host and path of the URL called
    reply = register(cloud, PSK, "host-1", sign_host="ap-guangzhou.gateway.tencentdevices.com")[1]
    assert error_code(reply) == "AuthFailure.SignatureFailure"
    assert error_code(register(cloud, PSK, "path-1", sign_path="/device/register2")[1]) \
        == "AuthFailure.SignatureFailure"


def test_garbage_requests(cloud):
    headers = {"Content-Type": "application/json"}
    for body in (b"not json", b"[1,2]", b'{"ProductId":"SIMPSK0001"}', b'{"ProductId":"SIMPSK0001",'
                 b'"DeviceName":"bad/name"}', b"x" * 5000):
        status, reply = post(cloud, "/device/register", body, headers)
        assert status == 200 and error_code(reply) == "InvalidParameter", body[:40]
    status, reply = post(cloud, "/register/dev", b"{}", headers, tls=False)
    assert status == 200 and reply["code"] == 1001
    status, reply = post(cloud, "/nope", b"{}", headers)
    assert status == 404 and "Error" in reply["Response"]
    # missing signature headers
    status, reply = post(cloud, "/device/register", b'{"ProductId":"SIMPSK0001","DeviceName":"h1"}', headers)
    assert error_code(reply) == "AuthFailure.SignatureFailure"


def test_reregistration_until_first_login(cloud):
    first = registered(cloud, PSK, "rereg-1")["psk"]
    second = registered(cloud, PSK, "rereg-1")["psk"]
    assert first != second
    client, rc = login(cloud, PSK, "rereg-1", first)
    assert rc == 5  # replaced by the second registration
    client, rc = login(cloud, PSK, "rereg-1", second)
    assert rc == 0
    client.close()
    assert error_code(register(cloud, PSK, "rereg-1")[1]) == "FailedOperation.DeviceAlreadyActivated"
    assert register_legacy(cloud, PSK, "rereg-1")[1]["code"] == 1021


def test_legacy_register_dev(cloud):
    status, reply = register_legacy(cloud, PSK, "legacy-1")
    assert status == 200 and reply["code"] == 0 and reply["message"] == ""
    payload = decrypt(SECRET[PSK], reply["payload"], reply["len"])
    _, rc = login(cloud, PSK, "legacy-1", payload["psk"])
    assert rc == 0
    assert register_legacy(cloud, PSK, "legacy-2", secret="Z" * 24)[1]["code"] == 1003
    assert register_legacy(cloud, PSK, "legacy-4", timestamp=str(int(time.time())))[1]["code"] == 0
    assert register_legacy(cloud, OFF, "legacy-3")[1]["code"] == 1005


def test_mqtt_login_refusals_and_quick_reconnects(cloud):
    psk = registered(cloud, PSK, "login-1")["psk"]
    other_psk = base64.b64encode(b"\1" * 16).decode()
    started = time.monotonic()
    assert login(cloud, PSK, "login-1", other_psk)[1] == 5
    assert login(cloud, PSK, "login-1", psk, expiry=int(time.time()) - 10)[1] == 5
    assert login(cloud, PSK, "never-registered", psk)[1] == 5
    assert Mqtt(cloud).connect(PSK + "login-1", "someone", "pw") == 5
    assert Mqtt(cloud).connect(PSK + "login-1") == 5  # anonymous
    for _ in range(3):  # same client id again and again, quickly
        client, rc = login(cloud, PSK, "login-1", psk)
        assert rc == 0
        client.close()
    client, rc = login(cloud, PSK, "login-1", psk)
    assert rc == 0 and client.ping()
    assert time.monotonic() - started < 5


def test_topic_permissions(cloud):
    a, b = "perm-a", "perm-b"
    ca, rc = login(cloud, PSK, a, registered(cloud, PSK, a)["psk"])
    assert rc == 0
    cb, rc = login(cloud, PSK, b, registered(cloud, PSK, b)["psk"])
    assert rc == 0
    assert cb.subscribe(f"{PSK}/{b}/#") == 0
    assert cb.subscribe(f"$sys/operation/result/{PSK}/{b}") == 0
    assert ca.subscribe(f"{PSK}/{a}/#") == 0
    for refused in (f"{PSK}/{b}/#", "#", f"{PSK}/+/data", f"$sys/operation/result/{PSK}/{b}",
                    f"$thing/down/+/{PSK}/{b}", f"$sys/operation/{PSK}/{a}", f"$thing/up/property/{PSK}/{a}"):
        assert ca.subscribe(refused) == 0x80, refused
    ca.publish(f"{PSK}/{b}/data", b"spoofed")
    ca.publish(f"$sys/operation/{PSK}/{b}", b'{"type":"get","resource":["time"]}')
    ca.publish(f"{PSK}/{a}/data", b"own")
    assert cb.messages(0.5) == []
    assert ca.messages(0.5) == [(f"{PSK}/{a}/data", b"own")]
    assert ca.ping() and cb.ping()  # refused publishes are dropped, connections stay
    ca.close()
    cb.close()


def test_state_survives_restart(tmp_path):
    state = tmp_path / "state"
    emu = start_cloud(state)
    ports = emu.ports
    try:
        psk = registered(ports, PSK, "persist-1")["psk"]
        pending = registered(ports, PSK, "persist-2")["psk"]
        client, rc = login(ports, PSK, "persist-1", psk)
        assert rc == 0
        client.close()
    finally:
        assert emu.stop() == 0
    ca = (state / "ca.pem").read_bytes()
    assert not (state / "ports.json").exists()
    record = json.loads((state / "devices.json").read_text())["tencent"][f"{PSK}/persist-1"]
    assert record["activated"] is True and record["registrations"] == 1 and record["logins"] == 1

    # restarted with the timestamp check off: a fixed old timestamp (the C SDK's) is accepted
    emu = start_cloud(state, "--ts-window", "0", "--cert-name", "192.0.2.7")
    ports = emu.ports
    try:
        assert (state / "ca.pem").read_bytes() == ca
        assert error_code(register(ports, PSK, "persist-1")[1]) == "FailedOperation.DeviceAlreadyActivated"
        client, rc = login(ports, PSK, "persist-1", psk, tls=True)
        assert rc == 0
        client.close()
        _, rc = login(ports, PSK, "persist-2", pending)
        assert rc == 0
        assert registered(ports, PSK, "persist-3", timestamp=1609430400)["encryptionType"] == 2
    finally:
        assert emu.stop() == 0
    log = (state / "cloud.log").read_text()
    assert "generated server certificate for localhost, 127.0.0.1, ::1, 192.0.2.7" in log
    _assert_no_secrets(state)
    shutil.rmtree(state)


def test_login_as_the_python_sdk_sends_it(cloud):
    """tencent-iot-device 1.0.0: sdkappid 21010406, expiry in milliseconds, hmacsha1; other app ids refused."""
    psk = registered(cloud, PSK, "pysdk-1")["psk"]
    username = f"{PSK}pysdk-1;21010406;AbC12;{int(time.time() * 1000)}"
    client = Mqtt(cloud, tls=True)
    assert client.connect(PSK + "pysdk-1", username, mqtt_password(psk, username, "hmacsha1")) == 0
    client.close()
    username = f"{PSK}pysdk-1;99999999;AbC12;{int(time.time()) + 60}"
    assert Mqtt(cloud).connect(PSK + "pysdk-1", username, mqtt_password(psk, username)) == 5
