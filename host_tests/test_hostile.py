"""Hostile and broken servers: raw TLS servers started here answer the simulated board's
registration with garbage, lies and oversize; the board must log a clear error for each, store
nothing, back off and give up after max_tries without a crash loop.

One board run per platform and interpreter serves one hostile case per attempt (connection i gets
case i), so every case gets its own attempt, error line and back-off; max_tries = number of cases.
"""

import base64
import datetime
import json
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from host_tests.conftest import REPO, WIFI, run_on_device
from host_tests.secrets_scan import assert_clean
from tools.cloud import certs

SECRET = "HostileProdSecret42"  # the board's product secret (the board fixture checks it never leaks)
OTHER_KEY = b"AnotherProductK!"
RESULTS = REPO / "build" / "robustness"
COUNTS = {}  # (platform, interp) -> hostile inputs tried


# --------------------------------------------------------------------------- PKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Server certificates: good (our CA), from another CA, for another name, expired."""
    d = tmp_path_factory.mktemp("hostile-pki")
    ours, other = certs.Pki(str(d / "ours")), certs.Pki(str(d / "other"))
    for p in (ours, other):
        Path(p.dir).mkdir()
        p.ensure()
    files = {"good": (ours.server_pem, ours.server_key), "other-ca": (other.server_pem, other.server_key)}

    def issue(tag, names, not_after):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(certs._name(names[0])).issuer_name(ours._ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(certs.NOT_BEFORE).not_valid_after(not_after)
                .add_extension(certs._san(names), critical=False)
                .sign(ours._ca_private, hashes.SHA256()))
        cp, kp = str(d / (tag + ".pem")), str(d / (tag + ".key"))
        Path(cp).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        Path(kp).write_bytes(certs._key_pem(key))
        files[tag] = (cp, kp)

    now = datetime.datetime.now(datetime.timezone.utc)
    issue("wrong-name", ["cloud.example.com"], now + datetime.timedelta(days=365))
    issue("expired", ["localhost", "127.0.0.1"], datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc))
    ctxs = {}
    for tag, (cp, kp) in files.items():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cp, kp)
        ctxs[tag] = ctx
    return {"ca": ours.ca_pem, "ctx": ctxs}


# --------------------------------------------------------------------------- server


class HostileServer:
    """Accepts on 127.0.0.1; connection i is TLS-wrapped with cases[i]'s certificate and handled by it."""

    def __init__(self, ctxs, cases):
        self.ctxs, self.cases = ctxs, cases
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.served = 0
        self.errors = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            case = self.cases[min(self.served, len(self.cases) - 1)]
            self.served += 1
            t = threading.Thread(target=self._serve, args=(raw, case), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, raw, case):
        raw.settimeout(20)
        try:
            conn = self.ctxs[case.get("cert", "good")].wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # the device refused our certificate: expected for the certificate cases
            return
        try:
            case["serve"](self, conn)
        except (OSError, ssl.SSLError):
            pass  # the device hung up on us
        except Exception as e:  # a bug in the test server itself
            self.errors.append(repr(e))
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()
        for t in self.threads:
            t.join(5)
        assert not self.errors, self.errors


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise OSError("eof")
        buf += chunk
    return buf


# --------------------------------------------------------------------------- Tencent HTTPS cases


def read_http_request(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(1)
        if not chunk:
            raise OSError("eof")
        head += chunk
    m = re.search(rb"Content-Length: (\d+)", head)
    recv_exact(conn, int(m.group(1)) if m else 0)
    return head


def http(raw_reply):
    """serve(): read the request, send raw_reply (bytes), close."""
    def serve(srv, conn):
        read_http_request(conn)
        conn.sendall(raw_reply)
    return serve


def ok(body, status="200 OK", extra=b""):
    body = body.encode() if isinstance(body, str) else body
    return (b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (status.encode(), len(body), extra)) + body


def encrypt(plain, key=SECRET.encode()[:16]):
    plain = plain.encode() if isinstance(plain, str) else plain
    padded = plain + b"\0" * (-len(plain) % 16)
    enc = Cipher(algorithms.AES(key), modes.CBC(b"0" * 16)).encryptor()
    return base64.b64encode(enc.update(padded) + enc.finalize()).decode()


def response(payload, length):
    return json.dumps({"Response": {"Len": length, "Payload": payload, "RequestId": "r1"}})


def sealed(plain, key=SECRET.encode()[:16]):
    """A well-formed reply whose payload decrypts (with `key`) to `plain`."""
    return http(ok(response(encrypt(plain, key), len(plain))))


PSK_INFO = '{"encryptionType":2,"psk":"%s"}' % base64.b64encode(b"0123456789abcdef").decode()


def hang(srv, conn):
    read_http_request(conn)
    srv.stop.wait(30)  # accept, read, never answer: the device's 10 s socket timeout must end it


def stream_forever(srv, conn):
    read_http_request(conn)
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
    chunk = b"{" + b" " * 8191
    for _ in range(128):  # 1 MB, no Content-Length: the device must stop after its cap
        conn.sendall(chunk)


def big_announced(srv, conn):
    read_http_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
    for _ in range(128):
        conn.sendall(b"x" * 8192)


TENCENT_CASES = [
    # (name, the attempt's error (substring or regex), a line logged before it or None, case)
    ("malformed JSON", "tencent: reply is not a JSON object", None, {"serve": http(ok('{"Response": {"Len": 3, '))}),
    ("JSON not an object", "tencent: reply is not a JSON object", None, {"serve": http(ok("[1, 2]"))}),
    ("no Response", "tencent: reply lacks a Payload string and a positive Len", None, {"serve": http(ok('{"Foo": 1}'))}),
    ("no Payload/Len", "tencent: reply lacks a Payload string and a positive Len", None,
     {"serve": http(ok('{"Response": {"RequestId": "r1"}}'))}),
    ("Len not a number", "tencent: reply lacks a Payload string and a positive Len", None,
     {"serve": http(ok(response(encrypt(PSK_INFO), "46")))}),
    ("Len too large", re.compile(r"tencent: Len 4000 does not fit a \d+-byte payload"), None,
     {"serve": http(ok(response(encrypt(PSK_INFO), 4000)))}),
    ("Len too small", "tencent: payload does not decrypt to JSON (wrong product secret?)", None,
     {"serve": http(ok(response(encrypt(PSK_INFO), 10)))}),
    ("invalid base64", "tencent: Payload is not valid base64", None,
     {"serve": http(ok(response("@@@@not*base64", 8)))}),
    ("ciphertext not a multiple of 16", "tencent: Len 20 does not fit a 20-byte payload", None,
     {"serve": http(ok(response(base64.b64encode(b"x" * 20).decode(), 20)))}),
    ("payload for another key", "(wrong product secret?)", None,
     {"serve": sealed(PSK_INFO, OTHER_KEY)}),
    ("payload not JSON", "tencent: payload does not decrypt to JSON", None,
     {"serve": sealed("hello world")}),
    ("unknown encryptionType", "tencent: unknown encryptionType 7", None,
     {"serve": sealed('{"encryptionType":7}')}),
    ("psk not base64", "tencent: psk is not valid base64", None,
     {"serve": sealed('{"encryptionType":2,"psk":"!!!!"}')}),
    ("certificate not PEM", "not a PEM block", None,
     {"serve": sealed('{"encryptionType":1,"clientCert":"x","clientKey":"y"}')}),
    ("error reply", "tencent: registration refused: InvalidParameterValue: hostile", None,
     {"serve": http(ok('{"Response": {"Error": {"Code": "InvalidParameterValue", "Message": "hostile"}}}'))}),
    ("Content-Length 1 MB", "http: reply body of 1048576 bytes exceeds 4096", None, {"serve": big_announced}),
    ("1 MB body without Content-Length", "http: reply body too long or cut short", None, {"serve": stream_forever}),
    ("oversized header", "http: reply headers too long or cut short", None,
     {"serve": http(ok("{}", extra=b"X-Big: " + b"a" * 3000 + b"\r\n"))}),
    ("body cut short", "http: reply body too long or cut short", None,
     {"serve": http(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"Resp")}),
    ("bad Content-Length", "http: bad Content-Length", None,
     {"serve": http(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n{}")}),
    ("garbage status line", "http: malformed status line", None, {"serve": http(b"SSH-2.0-OpenSSH\r\n\r\n")}),
    ("HTTP 500", "tencent: HTTP status 500", None, {"serve": http(ok("oops", status="500 Internal Server Error"))}),
    ("server certificate from another CA", "not correctly signed by the trusted CA", None,
     {"cert": "other-ca", "serve": hang}),
    ("hostname mismatch", "does not match with the expected CN", None, {"cert": "wrong-name", "serve": hang}),
    ("expired certificate", "certificate validity has expired", None, {"cert": "expired", "serve": hang}),
    # Last: it costs the device's 10 s socket timeout.
    ("accepts and never answers", re.compile("ETIMEDOUT|110|timed out"), None, {"serve": hang}),
]


# --------------------------------------------------------------------------- MQTT cases (UCloud, Protco)


def read_packet(conn):
    first = recv_exact(conn, 1)[0]
    n = shift = 0
    while True:
        b = recv_exact(conn, 1)[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, recv_exact(conn, n)


def packet(first, body):
    n, head = len(body), bytearray((first,))
    while n > 0x7F:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + body


def publish(topic, payload):
    t = topic.encode()
    return packet(0x30, len(t).to_bytes(2, "big") + t + (payload.encode() if isinstance(payload, str) else payload))


def mqtt(reply, suback=b"\x00", connack=0, keep_open=False):
    """serve(): CONNACK, read SUBSCRIBE + PUBLISH, then SUBACK and whatever reply(topic, request) returns."""
    def serve(srv, conn):
        read_packet(conn)  # CONNECT
        conn.sendall(b"\x20\x02\x00" + bytes((connack,)))
        if connack:
            return
        kind, sub = read_packet(conn)
        assert kind == 0x82, kind
        kind, pub = read_packet(conn)
        assert kind & 0xF0 == 0x30, kind
        n = int.from_bytes(pub[:2], "big")
        topic, request = pub[2:2 + n].decode(), json.loads(pub[2 + n:])
        conn.sendall(packet(0x90, sub[:2] + suback))
        if suback != b"\x80":
            conn.sendall(reply(topic, request))
        if keep_open:
            srv.stop.wait(30)
    return serve


def answer(topic, request, **fields):
    """A success-shaped reply on the platform's reply topic, for the request's id unless fields override."""
    if topic == "/provision/request":  # ThingsBoard: the reply carries no request id
        body = {"status": "SUCCESS", "credentialsType": "ACCESS_TOKEN", "credentialsValue": "HostilePassword1"}
        return "/provision/response", dict(body, **{k: v for k, v in fields.items() if k in body})
    if topic.endswith("/password"):  # UCloud
        body = {"RequestID": request["RequestID"], "RetCode": 0, "Password": "HostilePassword1"}
        return topic + "_reply", dict(body, **fields)
    body = {"id": request["id"], "res": 0, "data": {"uuid": "u1", "pid": "p1", "secret": "HostileSecret1"}}
    return topic + "_response", dict(body, **fields)


def reply_other_topic(topic, request):
    t, body = answer(topic, request)
    return publish(t + "x", json.dumps(body))


def reply_other_id(topic, request):
    t, body = answer(topic, request, RequestID="0000", id="0000")
    return publish(t, json.dumps(body))


def reply_oversized(topic, request):
    t, _ = answer(topic, request)
    return bytes((0x30,)) + b"\xa0\x8d\x06" + b"x" * 4096  # remaining length 100000 announced


def reply_not_json(topic, request):
    t, _ = answer(topic, request)
    return publish(t, '{"RequestID": "' + "x" * 10)


def reply_no_secret(topic, request):
    t, body = answer(topic, request)
    body.pop("Password", None)
    body.get("data", {}).pop("secret", None)
    body.pop("credentialsValue", None)
    return publish(t, json.dumps(body))


def reply_refused(topic, request):
    t, body = answer(topic, request, RetCode="7", res=1004, status="FAILURE")
    return publish(t, json.dumps(body))


CLOSED = re.compile("the broker closed the connection|no registration reply within")
MQTT_CASES = [
    # (name, the attempt's error, a line logged before it or None, case)
    ("reply on the wrong topic", CLOSED, "ignoring a message on another topic", {"serve": mqtt(reply_other_topic)}),
    ("reply for another request id", CLOSED, "ignoring a reply for another request", {"serve": mqtt(reply_other_id)}),
    ("oversized remaining length", "mqtt: 100000-byte packet exceeds the 1024-byte limit", None,
     {"serve": mqtt(reply_oversized)}),
    ("malformed JSON reply", CLOSED, "ignoring a reply that is not a JSON object", {"serve": mqtt(reply_not_json)}),
    ("SUBACK 0x80", "the broker refused the subscription to", None, {"serve": mqtt(None, suback=b"\x80")}),
    ("CONNACK refused", "mqtt: broker refused the login (CONNACK return code 5)", None,
     {"serve": mqtt(None, connack=5)}),
    ("reply without the secret", re.compile("reply holds no Password|reply lacks secret|no usable access token"), None,
     {"serve": mqtt(reply_no_secret)}),
    ("refusal", "registration refused: ", None, {"serve": mqtt(reply_refused)}),
    ("server certificate from another CA", "not correctly signed by the trusted CA", None,
     {"cert": "other-ca", "serve": hang}),
    ("only replies for another id, connection kept open", "no registration reply within 5000 ms",
     "ignoring a reply for another request", {"serve": mqtt(reply_other_id, keep_open=True)}),  # last: 5 s
]

# ThingsBoard's reply has no request id: the cases about other ids become cases about its credentials.
# The refusal comes first: after a request left unanswered, a FAILURE means "created, the reply was lost"
# and the device takes the credentials it sent (docs/platforms/thingsboard.md).
TB_CASES = [c for c in MQTT_CASES if c[0] == "refusal"] + [
    c for c in MQTT_CASES if "another request id" not in c[0] and "another id" not in c[0] and c[0] != "refusal"] + [
    ("unknown credentialsType", "reply has credentialsType X509_CERTIFICATE, not ACCESS_TOKEN or MQTT_BASIC", None,
     {"serve": mqtt(lambda t, r: publish(*_tb(credentialsType="X509_CERTIFICATE")))}),
    ("MQTT_BASIC credentials not an object", "reply has credentialsType MQTT_BASIC", None,
     {"serve": mqtt(lambda t, r: publish(*_tb(credentialsType="MQTT_BASIC", credentialsValue="x")))}),
    ("MQTT_BASIC without a password", "reply holds no usable password", None,
     {"serve": mqtt(lambda t, r: publish(*_tb(credentialsType="MQTT_BASIC", credentialsValue={
         "clientId": "c", "userName": "u"})))}),
    ("no reply, connection kept open", "no registration reply within 5000 ms", None,
     {"serve": mqtt(lambda t, r: b"", keep_open=True)}),  # last: 5 s
]


def _tb(**fields):
    t, body = answer("/provision/request", None)
    body.update(fields)
    return t, json.dumps(body)


# --------------------------------------------------------------------------- the runs


NVS_CHECK = """
import esp32
nvs = esp32.NVS("dynreg")
for k in ("dev_secret", "dev_cert", "dev_key", "dev_uuid", "dev_pid"):
    try:
        nvs.get_blob(k, bytearray(4096))
        print("STORED", k)
    except OSError as e:
        print("ABSENT", k, e.errno)
"""


def settings(platform, port, ca, interp, tries):
    s = dict(WIFI, platform=platform, prod_secret=SECRET, ca={"file": ca}, retry_ms=20, retry_max_ms=100,
             max_tries=tries, mqtt_host="localhost", mqtt_port=port)
    if platform == "tencent":
        s.update(prod_id="HOSTILE001", dev_name="hostile-" + interp, reg_host="localhost", reg_port=port)
    elif platform == "ucloud":
        s.update(prod_id="hostileucloud001", dev_name="hostile-" + interp)
    elif platform == "thingsboard":
        s.update(prod_id="hostiletbkey0001", dev_name="hostile-" + interp)
    else:
        s.update(prod_id="hostilepid", dev_name="hostile" + interp)
    return s


def attempt_lines(out):
    """The flow's error per attempt: 'attempt n failed (...)' lines, then the final 'giving up' line."""
    errors = re.findall(r"attempt (\d+) failed \((.*?)\); retrying in \d+ ms", out, re.S)
    last = re.search(r"giving up after (\d+) attempts; last: (.*)", out, re.S)
    return [e for _, e in errors] + ([last.group(2)] if last else [])


@pytest.mark.parametrize("platform", ["tencent", "ucloud", "protco", "thingsboard"])
def test_hostile_servers(platform, interp, board, pki, tmp_path):
    cases = {"tencent": TENCENT_CASES, "thingsboard": TB_CASES}.get(platform, MQTT_CASES)
    srv = HostileServer(pki["ctx"], [c for _, _, _, c in cases])
    try:
        t0 = time.monotonic()
        run = board(settings(platform, srv.port, pki["ca"], interp, len(cases)), max_boots=2, timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        srv.close()
    out = run.out
    print(out)
    assert run.rc == 1 and run.boots == 1, run  # gave up: no reset, no crash loop
    assert srv.served == len(cases), run
    assert len(re.findall(r"; retrying in \d+ ms", out)) == len(cases) - 1, run
    assert "DynregError: giving up after %d attempts" % len(cases) in out, run
    errors = attempt_lines(out)
    assert len(errors) == len(cases), run
    pos = 0
    for (name, words, logged, _), error in zip(cases, errors):
        found = words.search(error) if isinstance(words, re.Pattern) else words in error
        assert found, (name, error, out)
        if logged:  # a message the exchange ignored, logged before this attempt's error
            at = out.find(logged, pos)
            assert at >= 0, (name, out)
        pos = out.find(error, pos) + 1
    assert_clean(out, ("HostilePassword1", "HostileSecret1"), where="the board's output")  # what the servers handed out
    assert "registered: stored" not in out and "Traceback" in out  # the final DynregError, once
    assert out.count("Traceback") == 1, run
    # Bounded: the one 10 s (HTTP) or 5 s (MQTT) timeout plus fast failures.
    assert elapsed < (35 if platform == "tencent" else 25), (elapsed, run)
    nvs = run_on_device(interp, tmp_path, NVS_CHECK, nvs=tmp_path / "board" / "nvs.bin")
    assert "STORED" not in nvs and nvs.count("ABSENT") == 5, nvs
    COUNTS[(platform, interp)] = len(cases)
    _write_counts()


def _write_counts():
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "hostile.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    runs = data.setdefault("hostile_runs", {})
    for (platform, interp), n in COUNTS.items():
        runs["%s/%s" % (platform, interp)] = n
    data["hostile_inputs_tried"] = sum(runs.values())
    data["hostile_inputs_distinct"] = len(TENCENT_CASES) + 2 * len(MQTT_CASES) + len(TB_CASES)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print("hostile: %d inputs tried so far (%d distinct hostile cases, each under both interpreters)"
          % (data["hostile_inputs_tried"], data["hostile_inputs_distinct"]))
