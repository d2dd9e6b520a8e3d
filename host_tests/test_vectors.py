"""Edge vectors under both interpreters: RFC 4231 / RFC 2202 HMAC, every null-secret placeholder,
registration replies sent at QoS 1 with DUP and retain set. Each expected value comes from an
independent reference (the RFC text, checked against CPython's hmac), never from the firmware."""

import hashlib
import hmac
import json
import re
import time

import pytest

from host_tests.conftest import INTERPS, run_on_device
from host_tests.test_fuzz_parsers import DRIVER, SECRET, D, enc, packet, publish, ref_mqtt_packet
from tools.cloud.protco import sign as protco_sign
from tools.cloud.tencent import encrypt_payload, legacy_signature, register_signature

_TRUNCATION = b"Test With Truncation"
_BIG_KEY = b"Test Using Larger Than Block-Size Key - Hash Key First"
# (key, data, RFC 4231 HMAC-SHA256 hex, RFC 2202 HMAC-SHA1 hex); test case 5 is truncated (128 / 96 bits).
RFC4231 = [
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\x0c" * 20, _TRUNCATION, "a3b6167473100ee06e0c796c2955552b"),
    (b"\xaa" * 131, _BIG_KEY, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than block-size data. The key "
                    b"needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]
RFC2202 = [
    (b"\x0b" * 20, b"Hi There", "b617318655057264e28bc0b6fb378c8ef146be00"),
    (b"Jefe", b"what do ya want for nothing?", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    (b"\xaa" * 20, b"\xdd" * 50, "125d7342b9ac11cd91a39af48aa17b4f63f175d3"),
    (bytes(range(1, 26)), b"\xcd" * 50, "4c9007f4026250c6bc8414f9bf50c86c2d7235da"),
    (b"\x0c" * 20, _TRUNCATION, "4c1a03424b55e07fe7f27be1d58bb9324a9a5a04"),
    (b"\xaa" * 80, _BIG_KEY, "aa4ae5e15272d00e95705637ce8a3b55ed402112"),
    (b"\xaa" * 80, b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data",
     "e8e99d0f45237d786d6bbaa7965c7808bbff1a91"),
]
# Block-size edges the RFCs skip: keys of 63, 64 and 65 bytes (reference: CPython's hmac).
EDGES = [(bytes([7]) * n, b"edge", None) for n in (63, 64, 65)]
VECTORS = [("sha256", k, m, h) for k, m, h in RFC4231 + EDGES] + [("sha1", k, m, h) for k, m, h in RFC2202 + EDGES]

# The same code under either interpreter: every vector, one JSON line of hex results.
HMAC_MAIN = r'''
import binascii, json
from dynreg import crypto
out = []
for name, key, msg in json.loads(%r):
    out.append(crypto.hexstr(crypto.hmac(name, binascii.unhexlify(key), binascii.unhexlify(msg))))
print("HMAC", json.dumps(out))
'''

NULLS = [b"", b"YOUR_DEVICE_SECRET", b"YOUR_IOT_PSK", b"YOUR_DEVICE_CERT_FILE_NAME",
         b"YOUR_DEVICE_PRIVATE_KEY_FILE_NAME"]  # the SDKs' placeholders (Tencent C and Python SDKs)


def test_rfc_vectors_match_cpython_hmac():
    """The tables above are the RFCs' (CPython's hmac agrees), so the firmware is held to the RFC."""
    for name, key, msg, want in VECTORS:
        ref = hmac.new(key, msg, getattr(hashlib, name)).hexdigest()
        assert want is None or ref.startswith(want), (name, key[:4], msg[:8])


@pytest.mark.parametrize("interp", INTERPS)
def test_hmac_rfc_vectors(interp, tmp_path):
    cases = json.dumps([(n, k.hex(), m.hex()) for n, k, m, _ in VECTORS])
    if interp == "cpython":  # in this process, through the sim's CPython shims
        got = [D["crypto"].hexstr(D["crypto"].hmac(n, k, m)) for n, k, m, _ in VECTORS]
    else:
        out = run_on_device(interp, tmp_path, HMAC_MAIN % cases)
        got = json.loads(out.split("HMAC ", 1)[1])
    for (name, key, msg, _), have in zip(VECTORS, got):
        assert have == hmac.new(key, msg, getattr(hashlib, name)).hexdigest(), (name, len(key), msg[:12])


def _outcomes(interp, tmp_path, cases):
    """The fuzz driver's outcome of each (parser, args) case under `interp`."""
    if interp == "cpython":
        return [D["outcome"](name, enc(list(args))) for name, args in cases]
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps([name, enc(list(args))]) + "\n" for name, args in cases))
    main = DRIVER + "\nimport json\nfor line in open(%r):\n    c = json.loads(line)\n" \
                    "    print('OUT', json.dumps(outcome(c[0], c[1])))\n" % str(path)
    return [json.loads(line[4:]) for line in run_on_device(interp, tmp_path, main).splitlines()
            if line.startswith("OUT ")]


@pytest.mark.parametrize("interp", INTERPS)
def test_every_null_secret(interp, tmp_path):
    """Each placeholder is null, bare or padded with whitespace; with one more character it is a secret."""
    assert list(D["store"].NULL_SECRETS) == NULLS  # a placeholder dropped from the list fails here
    cases = [("is_null", [v]) for n in NULLS for v in (n, b" " + n + b"\r\n", b"\t" + n)]
    cases += [("is_null", [n + b"x"]) for n in NULLS] + [("is_null", [b"x" + n]) for n in NULLS]
    cases += [("is_null", [None])]
    want = ["ok True"] * (3 * len(NULLS)) + ["ok False"] * (2 * len(NULLS)) + ["ok True"]
    assert _outcomes(interp, tmp_path, cases) == want


# A reply as a broker may deliver it: first byte 0x3B = PUBLISH, DUP, QoS 1, retain, then a packet id.
SUBACK = b"\x90\x03\x00\x01\x00"
RID = "0101010101010101"  # the driver's fixed os.urandom
UCLOUD_TOPIC = b"/$system/pid1/dev1/password_reply"
PROTCO_TOPIC = b"register/v2/pid1/dev1/register_response"


def qos1(topic, payload, pid=b"\x7b\x22"):
    """PUBLISH with DUP, QoS 1 and retain; the packet id defaults to the bytes '{"' (a parser that skips no
    id would see JSON-looking garbage, one that skips too much would cut the payload)."""
    return packet(0x3B, len(topic).to_bytes(2, "big") + topic + pid + payload)


@pytest.mark.parametrize("interp", INTERPS)
def test_registration_replies_at_qos1_dup_retain(interp, tmp_path):
    ucloud = json.dumps({"RequestID": RID, "RetCode": "0", "Password": "dev-password-01"}).encode()
    protco = json.dumps({"id": RID, "res": 0, "data": {"uuid": "u-1", "pid": "pid2", "secret": "s3cr3t"}}).encode()
    cases = [
        ("ucloud_register", [SUBACK + qos1(UCLOUD_TOPIC, ucloud)]),
        ("ucloud_register", [SUBACK + qos1(UCLOUD_TOPIC, ucloud, b"\x00\x01")]),
        ("protco_register", [SUBACK + qos1(PROTCO_TOPIC, protco)]),
        ("protco_register", [qos1(PROTCO_TOPIC, protco, b"\xff\xff") + SUBACK]),
        ("mqttreg_reply", [0x3B, qos1(b"t/reply", b'{"a": 1}')[2:]]),
        ("mqttreg_reply", [0x3A, qos1(b"t/reply", b'{"a": 1}')[2:]]),
        ("mqttreg_reply", [0x31, publish(b"t/reply", b'{"a": 1}')[2:]]),  # QoS 0, retain: no packet id
    ]
    ref = D["canon"]
    want = [
        "ok " + ref([("dev_secret", b"dev-password-01")]),
        "ok " + ref([("dev_secret", b"dev-password-01")]),
        "ok " + ref([("dev_pid", b"pid2"), ("dev_uuid", b"u-1"), ("dev_secret", b"s3cr3t")]),
        "ok " + ref([("dev_pid", b"pid2"), ("dev_uuid", b"u-1"), ("dev_secret", b"s3cr3t")]),
        "ok " + ref({"a": 1}), "ok " + ref({"a": 1}), "ok " + ref({"a": 1}),
    ]
    assert _outcomes(interp, tmp_path, cases) == want


def test_sign_method_names():
    """hmacsha256 / hmacsha1 in any case name hashlib's functions; anything else is a ConfigError."""
    crypto = D["crypto"]
    assert [crypto.hash_name(m) for m in ("hmacsha256", "HmacSha256", "hmacSHA1")] == ["sha256", "sha256", "sha1"]
    for bad in ("hmacmd5", "sha256", "", "hmacsha2567"):
        with pytest.raises(crypto.ConfigError, match="unknown sign method %r" % bad):
            crypto.hmac_hex(bad, b"k", b"m")


# --------------------------------------------------------------------------- what the device sends

# The registration requests as the device writes them, checked with the emulator's own signature code
# (tools/cloud, written from the platforms' docs separately from the firmware): one source of truth
# each side, meeting only on the wire.

OPENED = []  # (host, port, ctx, timeout) of each connection _send's registrations opened


def _send(platform, values, reply=b"", name="dev1", ctx=None):
    """Run `platform`_reg.register over a recording stream -> (bytes written, result or DynregError)."""
    class Rec(D["Stream"]):
        out = b""

        def write(self, data):
            self.out += bytes(data)
            return len(data)

    s = Rec(reply)
    st = D["Store"](dict({"prod_id": "pid1", "prod_secret": SECRET.decode(), "tls#": 0, "reg_host": "localhost"},
                         **values))
    reg = D[platform + "_reg"]
    try:
        result = D["_patched"](D["net"], "open_socket", lambda *a: OPENED.append(a) or s, lambda: D["_patched"](
            D["mqttreg"], "os", D["FakeOs"], lambda: reg.register(st, name, ctx)))
    except D["DynregError"] as e:
        result = e
    return s.out, result


def _http_request(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return lines[0], dict(line.split(": ", 1) for line in lines[1:]), body


def _tencent_reply(plain):
    length, payload = encrypt_payload(SECRET.decode(), plain)
    body = json.dumps({"Response": {"Len": length, "Payload": payload, "RequestId": "r"}}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize("method", ["hmacsha256", "hmacsha1"])
def test_tencent_request_is_signed(method, capsys):
    reply = _tencent_reply(json.dumps({"encryptionType": 2, "psk": "MDEyMzQ1Njc4OWFiY2RlZg=="}).encode())
    raw, result = _send("tencent", {"sign_method": method.upper()}, reply)
    assert result == [("dev_secret", b"MDEyMzQ1Njc4OWFiY2RlZg==")]
    line, headers, body = _http_request(raw)
    assert line == "POST /device/register HTTP/1.0" and headers["Host"] == "localhost"
    assert json.loads(body) == {"ProductId": "pid1", "DeviceName": "dev1"} and int(headers["Content-Length"]) == len(body)
    ts, nonce = int(headers["X-TC-Timestamp"]), int(headers["X-TC-Nonce"])
    assert abs(ts - time.time()) < 5 and 0 <= nonce < 2 ** 31 and headers["X-TC-Algorithm"] == method
    assert headers["X-TC-Signature"] == register_signature(SECRET.decode(), "localhost", "/device/register", method,
                                                           ts, nonce, body)
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    # over TLS the default port is 443, which the Host header leaves out
    raw, result = _send("tencent", {}, reply, ctx=True)
    assert _http_request(raw)[1]["Host"] == "localhost" and result == [("dev_secret", b"MDEyMzQ1Njc4OWFiY2RlZg==")]
    assert capsys.readouterr().out.splitlines() == ["dynreg: tencent: POST http://localhost:80/device/register",
                                                    "dynreg: tencent: POST https://localhost:443/device/register"]
    raw, _ = _send("tencent", {"reg_host": ""}, reply)  # the platform's gateway by default
    assert _http_request(raw)[1]["Host"] == "ap-guangzhou.gateway.tencentdevices.com"
    # the nonce is 31 random bits: of 64 requests, all below 2**31 and not all below 2**30 (false failure: 2**-64)
    nonces = [int(_http_request(_send("tencent", {}, reply)[0])[1]["X-TC-Nonce"]) for _ in range(64)]
    assert max(nonces) < 2 ** 31 and max(nonces) >= 2 ** 30 and min(nonces) >= 0


def test_tencent_legacy_request_and_refusals():
    raw, result = _send("tencent", {"reg_api": "legacy", "reg_port#": 8080}, b"HTTP/1.0 500 Oops\r\n\r\n")
    assert str(result) == "tencent: HTTP status 500"
    line, headers, body = _http_request(raw)
    req = json.loads(body)
    assert line == "POST /register/dev HTTP/1.0" and headers["Host"] == "localhost:8080"
    assert req["signature"] == legacy_signature(SECRET.decode(), "dev1", req["nonce"], "pid1", req["timestamp"])
    assert sorted(req) == ["deviceName", "nonce", "productId", "signature", "timestamp"]
    assert (req["deviceName"], req["productId"]) == ("dev1", "pid1")
    for pid, name in (("pid1", "dev 1"), ("pid/1", "dev1"), ("pid1", 'dev"1')):
        raw, result = _send("tencent", {"prod_id": pid}, name=name)
        assert isinstance(result, D["crypto"].ConfigError) and raw == b"", (pid, name, result)
    raw, result = _send("tencent", {}, name="aAzZ09-_:.@")
    assert not isinstance(result, D["crypto"].ConfigError) and raw



def test_tencent_refusal_names_code_and_message():
    """Both reply forms' refusals carry the cloud's code and its (escaped) message."""
    parse = D["tencent_reg"].parse_reply
    for reply, want in (({"Response": {"Error": {"Code": "InvalidParameterValue", "Message": "no such product"},
                                       "RequestId": "r"}}, "InvalidParameterValue: no such product"),
                        ({"code": 1021, "message": "device has been activated"}, "1021: device has been activated"),
                        ({"code": 1, "message": "a\nb"}, "1: a\\x0ab")):
        with pytest.raises(D["DynregError"], match="^tencent: registration refused: %s$" % re.escape(want)):
            parse(json.dumps(reply).encode(), SECRET)


def test_tencent_registration_deadline_from_nvs(monkeypatch):
    """reg_timeout_ms bounds the whole HTTP exchange: a server that sends nothing ends it that soon."""
    base = D["Stream"]

    class Dry(base):
        def read(self, n=-1):
            return base.read(self, n) or None

        def readline(self, limit=-1):
            return base.readline(self, limit) or None

    monkeypatch.setitem(D, "Stream", Dry)  # _send's stream
    t0 = time.monotonic()
    raw, result = _send("tencent", {"reg_timeout_ms#": 50})
    assert str(result) == "http: no complete answer before the deadline" and raw.startswith(b"POST ")
    assert time.monotonic() - t0 < 5  # the default 30 s deadline would still be waiting

def _mqtt_strings(body, n):
    out = []
    for _ in range(n):
        size = int.from_bytes(body[:2], "big")
        out.append(body[2:2 + size].decode())
        body = body[2 + size:]
    return out, body


def _mqtt_session(raw):
    """CONNECT fields (client id, user, password) and the packets after it, from what the device wrote."""
    packets, pos = [], 0
    while pos < len(raw):
        kind, body, pos = ref_mqtt_packet(raw, pos, 1 << 20)
        packets.append((kind, body))
    kind, body = packets[0]
    assert kind == 0x10 and body[:10] == b"\x00\x04MQTT\x04\xc2\x00\x3c", body[:10]  # 3.1.1, user+pass, clean
    fields, rest = _mqtt_strings(body[10:], 3)
    assert rest == b""
    return fields, packets[1:]


CONNACK = b"\x20\x02\x00\x00"


def _check_exchange(packets, topic, reply_topic, id_key):
    """SUBSCRIBE to the reply topic (QoS 0, packet id 1), one PUBLISH of the request, DISCONNECT."""
    (sub, sub_body), (pub, pub_body), last = packets
    assert (sub, sub_body) == (0x82, b"\x00\x01" + len(reply_topic).to_bytes(2, "big") + reply_topic + b"\x00")
    assert last == (0xE0, b"")
    (got_topic,), payload = _mqtt_strings(pub_body, 1)
    assert pub == 0x30 and got_topic == topic.decode()
    request = json.loads(payload)
    assert request[id_key] == RID
    return request



@pytest.mark.parametrize("platform", ["ucloud", "protco"])
def test_mqtt_registration_deadline_from_nvs(platform, monkeypatch):
    """reg_timeout_ms bounds the whole exchange: a broker that answers CONNACK and SUBACK, then nothing."""
    base = D["Stream"]

    class Dry(base):
        def read(self, n=-1):
            return base.read(self, n) or None

    monkeypatch.setitem(D, "Stream", Dry)  # _send's stream
    raw, result = _send(platform, {"reg_timeout_ms#": 50}, CONNACK + SUBACK)
    waited = re.fullmatch(r"no registration reply within (\d+) ms", str(result))
    assert waited and int(waited.group(1)) <= 50, result  # the exchange's own 5000 ms would say 5000

def test_ucloud_request():
    reply = qos1(UCLOUD_TOPIC, json.dumps({"RequestID": RID, "RetCode": 0, "Password": "pw-01"}).encode())
    raw, result = _send("ucloud", {}, CONNACK + SUBACK + reply)
    assert result == [("dev_secret", b"pw-01")]
    fields, packets = _mqtt_session(raw)
    assert fields == ["pid1.dev1", "pid1|dev1|2", SECRET.decode()]
    assert _check_exchange(packets, b"/$system/pid1/dev1/password", UCLOUD_TOPIC, "RequestID") == {"RequestID": RID}
    assert OPENED[-1][3] == 5  # the registration login's connection timeout (s)
    for code in ("7", 1, None):
        raw, result = _send("ucloud", {}, CONNACK + SUBACK + qos1(UCLOUD_TOPIC, json.dumps(
            {"RequestID": RID, "RetCode": code, "Password": "pw-01"}).encode()))
        assert str(result) == "ucloud: registration refused: RetCode %s" % code, result
    for name, ok in (("abc", False), ("abcd", True), ("a" * 64, True), ("a" * 65, False), ("ab cd", False),
                     ("aZzA09-_@:", True), ("ab/cd", False)):
        raw, result = _send("ucloud", {}, name=name)
        assert isinstance(result, D["crypto"].ConfigError) != ok and (raw != b"") == ok, (name, result)


@pytest.mark.parametrize("method", ["hmacSha256", "hmacSha1"])
def test_protco_request(method):
    reply = json.dumps({"id": RID, "res": 0, "data": {"uuid": "u-1", "secret": "s-1"}}).encode()
    values = {"sign_method": method, "barcode": "BC1", "replace_pid": "pid9", "replace_sec": "sec9"}
    raw, result = _send("protco", values, CONNACK + SUBACK + publish(PROTCO_TOPIC, reply))
    assert result == [("dev_pid", b"pid1"), ("dev_uuid", b"u-1"), ("dev_secret", b"s-1")]  # pid: the product's
    (client, user, password), packets = _mqtt_session(raw)
    ts = int(user.rsplit("=", 1)[1])
    assert client == "register_pid1_dev1" and user == "pid1|signMethod=%s,ts=%d" % (method, ts)
    assert abs(ts - time.time()) < 5 and password == protco_sign(SECRET.decode(), "pid1", ts, method)
    assert OPENED[-1][3] == 5
    request = _check_exchange(packets, b"register/v2/pid1/dev1/register", PROTCO_TOPIC, "id")
    assert abs(request.pop("ts") - ts) <= 1
    assert request == {"id": RID, "code": "register", "ack": 1,
                       "data": {"barcode": "BC1", "replacePid": "pid9", "secret": "sec9"}}
    for values, name in (({}, "dev_1"), ({"replace_pid": "pid9"}, "dev1")):
        raw, result = _send("protco", values, name=name)
        assert isinstance(result, D["crypto"].ConfigError) and raw == b"", (values, name)
    raw, result = _send("protco", {}, CONNACK + SUBACK + publish(PROTCO_TOPIC, json.dumps(
        {"id": RID, "res": 1004, "msg": "x"}).encode()))
    assert str(result) == "protco: registration refused: res 1004 (device does not exist)"
    raw, result = _send("protco", {}, CONNACK + SUBACK + publish(PROTCO_TOPIC, json.dumps(
        {"id": RID, "res": 4242, "msg": "no such"}).encode()))
    assert str(result) == "protco: registration refused: res 4242 (no such)"
    assert _mqtt_session(raw)[1][1][0] == 0x30


def test_mqtt_packet_lengths():
    """The remaining length as MQTT 3.1.1 2.2.3 encodes it, at each byte-count boundary."""
    from host_tests.test_fuzz_parsers import varint

    for n in (0, 1, 127, 128, 16383, 16384, 2097151, 2097152):
        assert bytes(D["mqtt"].packet(0x30, b"x" * n)) == b"\x30" + varint(n) + b"x" * n, n
    assert bytes(D["mqtt"].subscribe(7, ("a/b", "c"))) == b"\x82\x0c\x00\x07\x00\x03a/b\x00\x00\x01c\x00"


def test_mqttreg_reply_topics_and_payloads(capsys):
    reply = D["mqttreg"].reply
    long_topic = b"t/" + b"x" * 298  # a topic length with a high byte (300 = 0x012C)
    assert reply(0x30, (300).to_bytes(2, "big") + long_topic + b'{"a": 1}', long_topic) == {"a": 1}
    assert reply(0x30, b"\x00\x07t/other{}", b"t/reply") is None
    assert capsys.readouterr().out == "dynreg: ignoring a message on another topic\n"
    for payload in (b"[1]", b"1", b'"x"', b"null", b"{", b""):
        assert reply(0x30, b"\x00\x07t/reply" + payload, b"t/reply") is None, payload
        assert capsys.readouterr().out == "dynreg: ignoring a reply that is not a JSON object\n"


def _protco_reply(reply):
    return _send("protco", {}, CONNACK + SUBACK + publish(PROTCO_TOPIC, json.dumps(dict(reply, id=RID)).encode()))[1]


def test_protco_reply_fields_and_refusals():
    from host_tests.test_fuzz_parsers import PROTCO_ERRORS

    assert OPENED.clear() or _protco_reply({"res": 0, "data": {"uuid": "u", "pid": "p2", "secret": "s"}}) == [
        ("dev_pid", b"p2"), ("dev_uuid", b"u"), ("dev_secret", b"s")]
    assert OPENED[0][:2] == ("mqtt.protco.in", 1883)  # the platform's broker unless NVS names one
    for data, what in (({"pid": "p", "secret": "s"}, "uuid"), ({"uuid": 5, "secret": "s"}, "uuid"),
                       ({"uuid": "u", "pid": 5, "secret": "s"}, "pid"), ({"uuid": "u", "secret": ""}, "secret"),
                       ({"uuid": "u", "secret": ["s"]}, "secret")):
        assert str(_protco_reply({"res": 0, "data": data})) == "protco: reply lacks " + what, data
    assert str(_protco_reply({"res": 0, "data": "x"})) == "protco: reply holds no data"
    for code, why in PROTCO_ERRORS.items():  # every documented res code is named
        assert str(_protco_reply({"res": code, "msg": "m"})) == "protco: registration refused: res %d (%s)" % (
            code, why)
    assert str(_protco_reply({"res": "1004", "msg": "m"})) == "protco: registration refused: res 1004 (m)"


# --------------------------------------------------------------------------- login over a real socket

# Each test runs the firmware's login under both interpreters against a loopback server that speaks
# scripted bytes, one scripted connection after another: a connection the device leaves open blocks
# the next one's answer, so a missing close() fails the test instead of passing it.

def _recv_packet(conn):
    """One MQTT packet from the socket `conn` -> its bytes (b"" at EOF)."""
    first = conn.recv(1)
    if not first:
        return b""
    raw, n, shift = first, 0, 0
    while True:
        b = conn.recv(1)
        raw += b
        n |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    while n:
        d = conn.recv(n)
        assert d, "cut short"
        raw, n = raw + d, n - len(d)
    return raw


def _rest(conn):
    """Everything the peer sends until it closes (a close with our bytes unread resets the connection)."""
    out = b""
    while True:
        try:
            d = conn.recv(4096)
        except ConnectionResetError:
            d = b""
        if not d:
            return out
        out += d


class _Broker:
    """A loopback server: connection i runs handlers[i](conn) and records what it returns."""

    def __init__(self, handlers):
        import socket
        import threading

        self.handlers, self.seen = handlers, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for handler in self.handlers:
            conn = self.sock.accept()[0]
            conn.settimeout(20)  # a failing test ends, never hangs
            with conn:
                self.seen.append(handler(conn))

    def close(self):
        self.thread.join(30)
        self.sock.close()


def _answer(data, end=True):
    """Read CONNECT, send `data`, end the sending side if `end`; -> (CONNECT, what came after it)."""
    def handler(conn):
        import socket

        connect = _recv_packet(conn)
        conn.sendall(data)
        if end:
            conn.shutdown(socket.SHUT_WR)
        return connect, _rest(conn)
    return handler


def _silent(conn):
    return _recv_packet(conn), _rest(conn)


DEVICE_HEAD = r'''
import binascii, json
from dynreg import DynregError, mqtt, mqttreg, net
PORT = %d
SEEN = []
_open = net.open_socket
def _rec(*a):
    SEEN.append([a[0], a[1], a[2] is None, a[3], a[4]])
    return _open(*a)
net.open_socket = _rec
def out(*v):
    print("R", json.dumps(v))
def login(*a, **k):
    try:
        return mqtt.login(None, "127.0.0.1", PORT, *a, **k)
    except DynregError as e:
        out(str(e))
'''


def _device(interp, tmp_path, handlers, main):
    """Run DEVICE_HEAD + `main` against a _Broker of `handlers` -> (R lines, other stdout lines, broker)."""
    broker = _Broker(handlers)
    try:
        lines = run_on_device(interp, tmp_path, DEVICE_HEAD % broker.port + main, timeout=60).splitlines()
    finally:
        broker.close()
    return [json.loads(x[2:]) for x in lines if x.startswith("R ")], [x for x in lines if not x.startswith("R ")], \
        broker


def _connect_bytes(client_id, user, password, keepalive):
    """CONNECT per MQTT 3.1.1 3.1: "MQTT" level 4, flags user + password + clean session, keepalive."""
    fields = b"".join(len(f).to_bytes(2, "big") + f for f in (client_id, user, password))
    return packet(0x10, b"\x00\x04MQTT\x04\xc2" + keepalive.to_bytes(2, "big") + fields)


CONNACK_OK = b"\x20\x02\x00\x00"
LOGIN_MAIN = r'''
s = login("cid", "user", "pw")
k, body = mqtt.read(s, 100, None, net.deadline(5000))
out(k, binascii.hexlify(body).decode())
s.close()
s = login("c" * 20, "u", "p" * 200, 300)
out(s.read(1))
s.close()
for i in range(6):
    login("cid", "user", "pw")
login("cid", "user", "pw", timeout=1)
out(SEEN)
'''


@pytest.mark.parametrize("interp", INTERPS)
def test_mqtt_login_broker_and_connack(interp, tmp_path):
    bad = [b"\x20\x02\x00\x01", b"\x20\x02\x00\x05", b"\x21\x02\x00\x00", b"\x20\x02\x00", b"\x20\x03\x00\x00\x00", b""]
    handlers = [_answer(CONNACK_OK + publish(b"t/a", b"hi")), _answer(b"\x20\x02\x01\x00", False)]
    handlers += [_answer(a) for a in bad] + [_silent]
    got, _, broker = _device(interp, tmp_path, handlers, LOGIN_MAIN)
    where = "127.0.0.1:%d" % broker.port
    no_ack = "mqtt: no CONNACK from " + where
    assert got == [
        [0x30, (b"\x00\x03t/ahi").hex()],  # the stream is handed over right after the CONNACK
        [None],  # session present is still a login; the stream is non-blocking
        ["mqtt: broker refused the login (CONNACK return code 1) at " + where],
        ["mqtt: broker refused the login (CONNACK return code 5) at " + where],
        [no_ack], [no_ack], [no_ack], [no_ack],  # wrong type, short, long, nothing
        [no_ack],  # never answers: the one-second timeout ends the wait
        [[["127.0.0.1", broker.port, True, t, "mqtt"] for t in [10] * 8 + [1]]],
    ]
    want = _connect_bytes(b"cid", b"user", b"pw", 60)
    assert broker.seen[0] == (want, b"") and broker.seen[1] == (_connect_bytes(b"c" * 20, b"u", b"p" * 200, 300), b"")
    assert broker.seen[2:] == [(want, b"")] * 7



NO_PASSWORD_MAIN = r'''
for user in (None, "user"):
    s = login("cid", user, None)
    out(s.read(1))
    s.close()
'''


@pytest.mark.parametrize("interp", INTERPS)
def test_mqtt_login_without_user_or_password(interp, tmp_path):
    """A client certificate is the credential: the fields left out are flagged off, reserved bit 0 stays 0."""
    got, _, broker = _device(interp, tmp_path, [_answer(CONNACK_OK, False)] * 2, NO_PASSWORD_MAIN)
    assert got == [[None], [None]]
    assert broker.seen == [(packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x03cid"), b""),
                           (packet(0x10, b"\x00\x04MQTT\x04\x82\x00\x3c\x00\x03cid\x00\x04user"), b"")]

CONNECT_MAIN = r'''
c = mqtt.connect(None, "127.0.0.1", PORT, "cid", "user", "pw", 30)
out(c.client_id, c.server, c.port, c.keepalive)
c.publish(b"t/x", b"m")
c.disconnect()
'''


@pytest.mark.parametrize("interp", INTERPS)
def test_mqtt_connect_hands_the_session_to_umqtt(interp, tmp_path):
    got, _, broker = _device(interp, tmp_path, [_answer(CONNACK_OK)], CONNECT_MAIN)
    assert got == [["cid", "127.0.0.1", broker.port, 30]]
    assert broker.seen == [(_connect_bytes(b"cid", b"user", b"pw", 30), publish(b"t/x", b"m") + b"\xe0\x00")]


def _registrar(*replies):
    """CONNACK, then the SUBSCRIBE and PUBLISH, then replies(request id) -> (SUBSCRIBE, PUBLISH, rest)."""
    def handler(conn):
        import socket

        _recv_packet(conn)
        conn.sendall(CONNACK_OK)
        sub, pub = _recv_packet(conn), _recv_packet(conn)
        rid = json.loads(pub[2 + 2 + len(b"t/req"):])["id"]
        for r in replies:
            conn.sendall(r(rid))
        if replies:
            conn.shutdown(socket.SHUT_WR)
        return sub, pub, _rest(conn)
    return handler


EXCHANGE_MAIN = r'''
for timeout_ms in (300, 5000, 5000, 5000):
    try:
        out(mqttreg.exchange(login("cid", "u", "p"), "t/req", "t/reply", "id", {"a": 1}, net.deadline(60000),
                             timeout_ms))
    except DynregError as e:
        out(str(e))
'''


@pytest.mark.parametrize("interp", INTERPS)
def test_mqttreg_exchange_ends_on_a_socket_timeout(interp, tmp_path):
    """Silence ends the wait at the exchange's own timeout; other replies are skipped; the stream is closed
    with a DISCONNECT whatever the end."""
    reply = lambda topic, rid: (lambda want: publish(topic, json.dumps({"id": rid or want, "v": 2}).encode()))
    handlers = [_registrar(), _registrar(lambda rid: SUBACK, reply(b"t/other", None), reply(b"t/reply", "x"),
                                         reply(b"t/reply", None)),
                _registrar(lambda rid: b"\x90\x03\x00\x01\x80"), _registrar(lambda rid: SUBACK)]
    got, logs, broker = _device(interp, tmp_path, handlers, EXCHANGE_MAIN)
    rid = json.loads(broker.seen[1][1][9:])["id"]
    assert got == [["no registration reply within 300 ms"], [{"id": rid, "v": 2}],
                   ["the broker refused the subscription to t/reply"], ["mqtt: the broker closed the connection"]]
    assert [x for x in logs if "ignoring" in x] == ["dynreg: ignoring a message on another topic",
                                                    "dynreg: ignoring a reply for another request"]
    for sub, pub, rest in broker.seen:
        assert sub == b"\x82\x0c\x00\x01\x00\x07t/reply\x00" and rest == b"\xe0\x00"
        request = json.loads(pub[9:])
        assert pub[:9] == packet(0x30, b"\x00\x05t/req" + pub[9:])[:9] and request == {"a": 1, "id": request["id"]}
        assert len(request["id"]) == 16


BIG_MAIN = r'''
def _small(*a):
    s = _rec(*a)
    s.setsockopt(1, 7, 4096)  # SOL_SOCKET, SO_SNDBUF (Linux numbers): a send buffer of a few KB, as on lwIP
    return s
net.open_socket = _small
r = mqttreg.exchange(login("cid", "u", "p"), "t/req", "t/reply", "id", {"a": "x" * 300000}, net.deadline(60000))
out(r["v"])
'''


@pytest.mark.parametrize("interp", INTERPS)
def test_mqttreg_request_larger_than_the_socket_buffers(interp, tmp_path):
    """The request goes out whole although the buffers are small: the write blocks while reads don't. A
    non-blocking write would hand over only what the buffers hold (about 6 KB of the 300 KB)."""
    import socket

    def handler(conn):
        _recv_packet(conn)
        conn.sendall(CONNACK_OK)
        sub, pub = _recv_packet(conn), _recv_packet(conn)
        request = json.loads(pub[1 + 3 + 2 + 5:])  # type, a 3-byte remaining length, "t/req"
        conn.sendall(publish(b"t/reply", json.dumps({"id": request["id"], "v": 7}).encode()))
        return sub, request, _rest(conn)

    broker = _Broker([handler])
    broker.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # accepted connections inherit it
    try:
        lines = run_on_device(interp, tmp_path, DEVICE_HEAD % broker.port + BIG_MAIN).splitlines()
    finally:
        broker.close()
    assert [json.loads(x[2:]) for x in lines if x.startswith("R ")] == [[7]]
    assert broker.seen[0][1] == {"a": "x" * 300000, "id": broker.seen[0][1]["id"]}  # the whole PUBLISH
    assert broker.seen[0][2] == b"\xe0\x00"


@pytest.mark.parametrize("interp", INTERPS)
def test_mqtt_read_remaining_lengths(interp, tmp_path):
    """mqtt.read at each remaining-length byte-count boundary, at and past the limit, and malformed lengths;
    the expected outcome is the reference parser's (MQTT 3.1.1 2.2.3)."""
    from host_tests.test_fuzz_parsers import Refused, varint

    cases = []
    for n in (0, 1, 127, 128, 16383, 16384):
        data = b"\x30" + varint(n) + b"y" * n
        cases += [(data, n, None), (data, n - 1, None), (data[1:], n, 0x30)]
    cases += [(b"\x30\xff\xff\xff\x7f", 100, None), (b"\x30\xff\xff\xff\xff\x01", 100, None), (b"\x30\x80", 9, None),
              (b"\x30", 9, None), (b"", 9, None), (b"\x30\x80\x00", 9, None), (b"\x30\x05abc", 9, None),
              (b"\x30\x82\x01" + b"z" * 130, 130, None), (b"\xff\x80\x80\x80\x00", 9, None)]
    want = []
    for data, limit, first in cases:
        try:
            want.append("ok " + D["canon"](ref_mqtt_packet(data, 0, limit, first)[:2]))
        except Refused as e:
            want.append("DynregError " + str(e))
    got = _outcomes(interp, tmp_path, [("mqtt_read", [d, lim, f]) for d, lim, f in cases])
    assert got == want
    assert want[1] == "DynregError mqtt: 0-byte packet exceeds the -1-byte limit"  # the reference's own words
    assert want[-9:-4] == ["DynregError mqtt: 268435455-byte packet exceeds the 100-byte limit"] + [
        "DynregError mqtt: malformed packet"] * 3 + ["DynregError mqtt: the broker closed the connection"]


def test_mqtt_read_skips_an_oversized_packet_in_chunks(capsys):
    """With skip, a packet over the limit is read in 256-byte pieces and dropped; the next one is intact."""
    class Rec(D["Stream"]):
        def read(self, n=-1):
            self.sizes.append(n)
            return D["Stream"].read(self, n)

    read = D["mqtt"].read
    s = Rec(packet(0x32, b"x" * 600) + publish(b"t", b"ok"))  # the second: a 5-byte body
    s.sizes = []
    assert read(s, 10, None, None, True) == (0x32, None) and s.sizes == [1, 1, 1, 256, 256, 88]
    assert capsys.readouterr().out == "dynreg: mqtt: skipped a 600-byte packet (type 0x32) over the 10-byte limit\n"
    assert read(s, 5, None, None, True) == (0x30, b"\x00\x01tok")  # at the limit: read, not skipped
    s = Rec(packet(0x30, b"x" * 600)[:300])
    s.sizes = []
    with pytest.raises(D["DynregError"], match="^mqtt: packet cut short$"):
        read(s, 10, None, None, True)
    assert s.sizes == [1, 1, 1, 256, 256, 256]  # 256 bytes, then the 41 left, then EOF


def test_mqtt_read_deadline_names_the_step():
    """Past the deadline, wherever the packet stops (first byte, length, body, skipped body), the error
    names mqtt; a non-blocking stream gives None while nothing came."""
    class Dry(D["Stream"]):
        def read(self, n=-1):
            return D["Stream"].read(self, n) or None

    net, read = D["net"], D["mqtt"].read
    for data, skip in ((b"", False), (b"\x30", False), (b"\x30\x85", False), (b"\x30\x05ab", False),
                       (b"\x30\x20ab", True)):
        with pytest.raises(D["DynregError"], match="^mqtt: no complete answer before the deadline$"):
            read(Dry(data), 8, None, net.deadline(0), skip)



def test_http_body_deadline_names_the_step():
    """A reply whose body stops coming ends at the deadline, the error naming http (headers are read first)."""
    class Dry(D["Stream"]):
        def read(self, n=-1):
            return D["Stream"].read(self, n) or None

    for body in (b"", b"ab"):
        s = Dry(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
        with pytest.raises(D["DynregError"], match="^http: no complete answer before the deadline$"):
            D["http"].read_reply(s, D["net"].deadline(200))
        assert s.pos == 38 + len(body)  # the headers and what came of the body were read

def _http_server(reply):
    """Read one HTTP request (head, then Content-Length bytes), answer `reply` (None: never) -> the request."""
    def handler(conn):
        import socket

        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += conn.recv(4096)
        head, _, body = raw.partition(b"\r\n\r\n")
        n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        while len(body) < n:
            body += conn.recv(4096)
        if reply is not None:
            conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)
        return raw[:len(head) + 4] + body, _rest(conn)
    return handler


HTTP_MAIN = r'''
from dynreg import http
status, body = http.post("127.0.0.1", PORT, "/r", [("X-A", "1")], b"body")
out(status, body.decode())
for port, timeout in ((PORT, 1), (1, 10)):
    try:
        http.post("127.0.0.1", port, "/r", [], b"", None, None, timeout)
    except DynregError as e:
        out(str(e).split(" failed")[0])  # the rest is the interpreter's own wording of the refusal
out(SEEN)
'''


@pytest.mark.parametrize("interp", INTERPS)
def test_http_post_over_a_socket(interp, tmp_path):
    """One POST and its reply; a server that never answers ends at the deadline; errors name http and the host."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    got, _, broker = _device(interp, tmp_path, [_http_server(ok), _http_server(None)], HTTP_MAIN)
    host = "127.0.0.1:%d" % broker.port
    assert got == [[200, "ok"], ["http: no complete answer before the deadline"], ["http: connect to 127.0.0.1:1"],
                   [[["127.0.0.1", broker.port, True, 10, "http"], ["127.0.0.1", broker.port, True, 1, "http"],
                     ["127.0.0.1", 1, True, 10, "http"]]]]
    assert broker.seen == [(b"POST /r HTTP/1.0\r\nHost: %s\r\nContent-Length: 4\r\nX-A: 1\r\n\r\nbody" % host.encode(),
                            b""),
                           (b"POST /r HTTP/1.0\r\nHost: %s\r\nContent-Length: 0\r\n\r\n" % host.encode(), b"")]


def test_http_header_line_bound():
    """Under a deadline a header line of 512 bytes (line feed included) is read, one of 513 refused."""
    read_reply, until = D["http"].read_reply, D["net"].deadline(60000)
    for n, ok in ((512, True), (513, False)):
        s = D["Stream"](b"HTTP/1.0 200 OK\r\nX: " + b"a" * (n - 5) + b"\r\nContent-Length: 1\r\n\r\nk")
        if ok:
            assert read_reply(s, until) == (200, b"k")
        else:
            with pytest.raises(D["DynregError"], match="^http: reply headers too long or cut short$"):
                read_reply(s, until)
