"""Property-based fuzzing (hypothesis) of every parser in firmware/ that reads what a server sends.

Property, for any input: the parser returns a result or raises DynregError -- never another exception
type, never hangs, never reads past its caps. The firmware is imported here under CPython with the
simulated board's CPython shims (usocket, cryptolib, esp32, ...) appended to sys.path, as
boards/sim/rom.py arranges for a CPython boot. Then the same generated cases (recorded while
hypothesis runs, deterministic with derandomize) go through the MicroPython unix port with
run_on_device, which must give the same outcome for each.
"""

import base64
import functools
import json
import os
import re
import ssl  # noqa: F401  the host's ssl first: the sim's ssl shim (boards/sim/cpython) must not hide it
import sys
import time
import traceback

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from host_tests.conftest import REPO, run_on_device

N_CASES = int(os.environ.get("DYNREG_FUZZ_CASES", 200))  # examples per parser, each interpreter (make mutate: fewer)
RESULTS = REPO / "build" / "robustness"
SECRET = b"FuzzProductSecret123"  # the fake board's product secret (16+ bytes: the AES key is its head)

# --------------------------------------------------------------------------- the driver (both interpreters)

# Runs unchanged in this process and as the board's main.py under MicroPython: decodes one case,
# feeds it to a parser through fake streams / stores / devices, and returns the outcome as text.
DRIVER = r'''
import binascii
import json

from dynreg import DynregError, crypto, http, mqtt, mqttreg, net, protco, protco_reg, store, tencent, tencent_reg
from dynreg import thingsboard, thingsboard_reg, ucloud_reg

SECRET = %r
MAX_READ = http.MAX_HEADER + http.MAX_BODY + 2


def dec(x):
    if isinstance(x, dict):
        if len(x) == 1 and "__b" in x:
            return binascii.unhexlify(x["__b"])
        return {k: dec(v) for k, v in x.items()}
    if isinstance(x, list):
        return [dec(v) for v in x]
    return x


def canon(x):
    if x is None or x is True or x is False:
        return str(x)
    if isinstance(x, int):
        return "i%%d" %% x
    if isinstance(x, float):
        return "f%%.6e" %% x
    if isinstance(x, (bytes, bytearray)):
        return "b" + binascii.hexlify(x).decode()
    if isinstance(x, str):
        return "s" + binascii.hexlify(x.encode()).decode()
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(canon(v) for v in x) + "]"
    if isinstance(x, dict):
        return "{" + ",".join(canon(k) + ":" + canon(x[k]) for k in sorted(x)) + "}"
    return "?" + type(x).__name__


class Stream:
    """A socket-like stream over fixed bytes with MicroPython semantics; counts what was read."""

    def __init__(self, data):
        self.data, self.pos, self.written, self.closed = data, 0, 0, False

    def read(self, n=-1):
        if n is None or n < 0:
            raise AssertionError("unbounded read()")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def readline(self, limit=-1):
        if limit is None or limit < 0:
            raise AssertionError("unbounded readline()")
        end = self.data.find(b"\n", self.pos)
        end = len(self.data) if end < 0 else end + 1
        end = min(end, self.pos + limit)
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def write(self, data):
        self.written += len(data)
        return len(data)

    def close(self):
        self.closed = True

    def setblocking(self, flag):  # the data is all there: blocking or not reads the same
        pass


class Store:
    def __init__(self, values):
        self.values = values

    def get(self, key):
        v = self.values.get(key)
        return v.encode() if isinstance(v, str) else v

    def text(self, key, default=None):
        v = self.values.get(key)
        return v if v else default

    def int(self, key, default=None):
        return self.values.get(key + "#", default)

    def need(self, key):  # text, as dynreg.store.Store.need
        v = self.values[key]
        return v.decode() if isinstance(v, bytes) else v

    def secret(self, key):  # bytes, as dynreg.store.Store.secret
        v = self.values[key]
        return v.encode() if isinstance(v, str) else v

    def set(self, key, value):
        self.values[key] = value

    def erase(self, key):
        self.values.pop(key, None)

    def commit(self):
        pass


class FakeOs:  # request ids from os.urandom, fixed so that generated replies can carry them
    @staticmethod
    def urandom(n):
        return b"\x01" * n


class Client:
    def __init__(self):
        self.sent = []

    def publish(self, topic, msg):
        self.sent.append((topic, msg))


class Dev:
    def __init__(self, msg):
        self.product, self.ident, self.properties, self.on_message = "pid1", "uuid1", {}, None
        self.client, self.msg = Client(), msg

    def publish(self, topic, msg, qos=0):
        json.loads(msg)  # what the device answers must itself be JSON
        self.client.publish(topic, msg)

    def wait_for(self, topic, timeout_ms):
        return self.msg


def _patched(module, name, value, func):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        return func()
    finally:
        setattr(module, name, old)


def _register(platform, s):
    values = {"prod_id": "pid1", "prod_secret": SECRET, "tls#": 0, "reg_host": "localhost"}
    mod = {"tencent": tencent_reg, "ucloud": ucloud_reg, "protco": protco_reg, "thingsboard": thingsboard_reg}[platform]
    if platform == "tencent":
        return _patched(net, "open_socket", lambda *a, **k: s, lambda: mod.register(Store(values), "dev1", None))
    return _patched(mqtt, "login", lambda *a, **k: s, lambda: _patched(
        mqttreg, "os", FakeOs, lambda: mod.register(Store(values), "dev1", None)))


def _time_reply(msg):
    old = net._offset
    try:
        dev = Dev(None)
        tencent.after_login(dev)  # the request, and when it was sent
        if not tencent.handle(dev, b"$sys/operation/result/pid1/uuid1", msg):
            raise AssertionError("the time reply was not taken")
        t = net.unix_time()
        if not isinstance(t, int) or not 1577836800 < t < 4102444800:  # 2020..2100
            raise AssertionError("the clock became %%r" %% (t,))
        return net._offset
    finally:
        net._offset = old


def run_parser(name, args):
    """The parser's result (checked against its caps), or raises what the parser raised."""
    if name == "b64decode":
        return crypto.b64decode(args[0], "value")
    if name == "pem_to_der":
        return tencent_reg.pem_to_der(args[0])
    if name == "decrypt_payload":
        return tencent_reg.decrypt_payload(args[0], args[1], SECRET)
    if name == "credentials":
        return tencent_reg.credentials(args[0])
    if name == "tencent_reply":
        return tencent_reg.parse_reply(args[0], SECRET)
    if name == "read_reply":
        s = Stream(args[0])
        try:
            return http.read_reply(s)
        finally:
            if s.pos > MAX_READ:
                raise AssertionError("read %%d bytes" %% s.pos)
    if name == "mqtt_read":
        s = Stream(args[0])
        try:
            kind, body = mqtt.read(s, args[1], args[2])
            if len(body) > args[1]:
                raise AssertionError("body over the limit")
            return kind, body
        finally:
            if s.pos > 1 + 5 + args[1]:
                raise AssertionError("read %%d bytes" %% s.pos)
    if name == "mqttreg_reply":
        return mqttreg.reply(args[0], args[1], b"t/reply")
    if name in ("tencent_register", "ucloud_register", "protco_register", "thingsboard_register"):
        s = Stream(args[0])
        try:
            return _register(name.split("_")[0], s)
        finally:
            if not s.closed:
                raise AssertionError("registration stream left open")
            if name == "tencent_register" and s.pos > MAX_READ:
                raise AssertionError("read %%d bytes" %% s.pos)
    if name == "protco_handle":
        dev = Dev(None)
        handled = protco.handle(dev, b"rlink/v2/pid1/uuid1/issue", args[0])
        return handled, dev.properties, len(dev.client.sent)
    if name == "thingsboard_handle":
        dev = Dev(None)
        handled = thingsboard.handle(dev, args[0], args[1])
        return handled, dev.properties, [(t, json.loads(m)) for t, m in dev.client.sent]
    if name == "tencent_time":
        return _time_reply(args[0])
    if name == "is_null":
        return store.is_null(args[0])
    raise AssertionError("no parser " + name)


def outcome(name, args):
    """'ok <canon result>', 'DynregError <message>' or 'BAD <type>: <message>' (a broken property)."""
    try:
        return "ok " + canon(run_parser(name, dec(args)))
    except DynregError as e:
        return "DynregError " + str(e)
    except Exception as e:  # noqa: anything else breaks the property
        return "BAD %%s: %%s" %% (type(e).__name__, e)
''' % (SECRET,)

DEVICE_MAIN = r'''
import sys
import time
CASES = %r
done = 0
t0 = time.ticks_ms()
with open(CASES) as f:
    for line in f:
        case = json.loads(line)
        print("OUT", json.dumps([case[0], outcome(case[0], case[1])]))
        done += 1
print("FUZZ-DONE", done, time.ticks_diff(time.ticks_ms(), t0))
'''


def _add_cpython_compat():
    """MicroPython's time functions firmware uses (as boards/sim/rom.py adds them for a CPython boot)."""
    if hasattr(time, "ticks_ms"):
        return
    time.ticks_ms = lambda: time.monotonic_ns() // 1000000
    time.ticks_us = lambda: time.monotonic_ns() // 1000
    time.ticks_diff = lambda new, old: new - old
    time.ticks_add = lambda ticks, delta: ticks + delta
    time.sleep_ms = lambda ms: time.sleep(ms / 1000)
    time.sleep_us = lambda us: time.sleep(us / 1000000)
    sys.print_exception = lambda exc, file=sys.stdout: traceback.print_exception(exc, file=file)


def _load_driver():
    _add_cpython_compat()
    # Appended, not prepended: the host's own modules (ssl above all) keep precedence in this process.
    for d in ("boards/sim/cpython", "boards/sim/modules", "tools/factory", "firmware/lib"):
        if str(REPO / d) not in sys.path:
            sys.path.append(str(REPO / d))
    env = {"__name__": "fuzz_driver"}
    exec(compile(DRIVER, "fuzz_driver", "exec"), env)
    return env


D = _load_driver()
CASES = {}  # parser -> [encoded args], in the order hypothesis generated them


def enc(x):
    """JSON-safe form of an argument (bytes -> {"__b": hex})."""
    if isinstance(x, (bytes, bytearray)):
        return {"__b": bytes(x).hex()}
    if isinstance(x, dict):
        return {k: enc(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [enc(v) for v in x]
    return x


def check(name, *args):
    """Run one case in this process, record it for the device, assert the property."""
    a = enc(list(args))
    if len(CASES.setdefault(name, [])) < N_CASES:
        CASES[name].append(a)
    json.dumps(a)  # every case must travel to the device
    t0 = time.monotonic()
    out = D["outcome"](name, a)
    assert time.monotonic() - t0 < 2, (name, args)
    assert not out.startswith("BAD"), (name, args, out)
    return out


# --------------------------------------------------------------------------- strategies

# Non-ASCII as UTF-8, as servers send it: MicroPython's json decodes a \\ud83d\\ude00 surrogate-pair escape
# as two separate surrogates (CESU-8), CPython as one character -- an interpreter difference, not dynreg's.
dumps = functools.partial(json.dumps, ensure_ascii=False)
FUZZ = settings(max_examples=N_CASES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
json_leaf = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=12)
             | st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: round(f, 3)))
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                      max_size=4), max_leaves=12)
b64_text = (st.text(alphabet=B64_ALPHABET, max_size=48)
            | st.binary(max_size=36).map(lambda b: base64.b64encode(b).decode())
            | st.text(max_size=24))
b64_any = b64_text | b64_text.map(str.encode) | st.binary(max_size=40)


def pad16(b):
    return b + b"\0" * (-len(b) % 16)


def aes(plain, key=SECRET[:16]):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    e = Cipher(algorithms.AES(key), modes.CBC(b"0" * 16)).encryptor()
    return e.update(pad16(plain)) + e.finalize()


def pem(body, label="CERTIFICATE"):
    return "-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, body, label)


pem_text = (st.builds(pem, b64_text)
            | st.builds(pem, st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()))
            | st.text(max_size=60) | st.builds(lambda a, b: a + b, st.sampled_from(["-----BEGIN", "-----BEGIN X\n",
                                                                                   "-----END", "\n-----END"]),
                                               st.text(max_size=30)))
info = st.fixed_dictionaries({"encryptionType": st.sampled_from([1, 2, 0, 3, "2", None, True, 2.0, [2]])},
                             optional={"psk": b64_text | json_value, "clientCert": pem_text | json_value,
                                       "clientKey": pem_text | json_value})
info_json = info.map(dumps) | json_value.map(dumps) | st.text(max_size=40)
payload_and_len = st.one_of(
    st.tuples(info_json.map(lambda t: base64.b64encode(aes(t.encode())).decode()),
              st.integers(-2, 300) | json_value),
    info_json.map(lambda t: (base64.b64encode(aes(t.encode())).decode(), len(t.encode()))),
    info_json.map(lambda t: (base64.b64encode(aes(t.encode(), b"K" * 16)).decode(), len(t.encode()))),
    st.tuples(b64_text | json_value, st.integers(-2, 300) | json_value),
)


def tencent_body(pl):
    payload, length = pl
    return dumps({"Response": {"Payload": payload, "Len": length, "RequestId": "x"}})


reply_body = st.one_of(
    payload_and_len.map(tencent_body),
    payload_and_len.map(lambda pl: dumps({"code": 0, "payload": pl[0], "len": pl[1]})),
    st.builds(lambda c, m: dumps({"Response": {"Error": {"Code": c, "Message": m}}}), json_value, json_value),
    st.builds(lambda c, m: dumps({"code": c, "message": m}), json_value, json_value),
    json_value.map(dumps),
    st.integers(1, 3000).map(lambda n: "[" * n),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
).map(str.encode)

header_line = st.one_of(
    st.integers(0, 10**20).map(lambda n: b"Content-Length: %d\r\n" % n),
    st.binary(max_size=12).map(lambda v: b"content-length:" + v + b"\r\n"),
    st.integers(1, 3000).map(lambda n: b"X-Pad: " + b"a" * n + b"\r\n"),
    st.binary(max_size=40).map(lambda b: b + b"\r\n"),
)
http_reply = st.one_of(
    st.builds(lambda status, headers, end, body: status + b"".join(headers) + end + body,
              st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 500 Error\r\n", b"HTTP/1.1 x\r\n", b"HTTP/1.1\r\n",
                               b"HTTP/1.1 20000000000000000000000000 OK\r\n", b"\r\n", b"ICY 200 OK\r\n"]),
              st.lists(header_line, max_size=6), st.sampled_from([b"\r\n", b"\n", b""]),
              reply_body | st.integers(0, 6000).map(lambda n: b"x" * n)),
    st.binary(max_size=300),
)


def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes((first,)) + varint(len(body)) + body


mqtt_stream = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda first, n, body: bytes((first,)) + varint(n) + body, st.integers(0, 255),
              st.integers(0, 2**28 - 1) | st.integers(0, 80), st.binary(max_size=80)),
    st.builds(lambda first, cont: bytes((first,)) + b"\xff" * cont, st.integers(0, 255), st.integers(0, 8)),
)


def publish(topic, payload, qos=0):
    return packet(0x30 | qos << 1, len(topic).to_bytes(2, "big") + topic + (b"\x00\x01" if qos else b"") + payload)


def reply_payload(platform):
    rid = "0101010101010101"
    if platform == "thingsboard":  # no request id; credentialsValue a token or the MQTT_BASIC object
        creds = st.fixed_dictionaries({}, optional={k: b64_text | json_value for k in ("clientId", "userName",
                                                                                        "password")})
        ok = {"status": st.sampled_from(["SUCCESS", "SUCCESS", "FAILURE", "NOT_FOUND", None, 1]),
              "credentialsType": st.sampled_from(["ACCESS_TOKEN", "MQTT_BASIC", "X509_CERTIFICATE", None]),
              "credentialsValue": b64_text | creds | json_value, "errorMsg": json_value}
        return st.fixed_dictionaries(ok).map(dumps).map(str.encode) | st.binary(max_size=40) | st.integers(
            1, 1000).map(lambda n: b"[" * n)
    ok = ({"RequestID": st.just(rid), "RetCode": st.sampled_from([0, "0", 1, "7", None, [0]]),
           "Password": b64_text | json_value} if platform == "ucloud" else
          {"id": st.just(rid), "res": st.sampled_from([0, 1004, 17032, 99, None, "0", [1], {"a": 1}]),
           "msg": json_value,
           "data": st.fixed_dictionaries({}, optional={"uuid": json_value, "pid": json_value, "secret": json_value})
           | json_value})
    return (st.fixed_dictionaries(ok) | st.dictionaries(st.sampled_from(["RequestID", "id", "res", "RetCode"]),
                                                          json_value)).map(dumps).map(str.encode) \
        | st.binary(max_size=40) | st.integers(1, 1000).map(lambda n: b"[" * n)


def mqtt_exchange(platform):
    topic = {"ucloud": b"/$system/pid1/dev1/password_reply", "thingsboard": b"/provision/response"}.get(
        platform, b"register/v2/pid1/dev1/register_response")
    pkt = st.one_of(
        st.builds(publish, st.sampled_from([topic, topic + b"x", b"", b"other"]), reply_payload(platform),
                  st.sampled_from([0, 0, 1])),
        st.sampled_from([b"\x90\x03\x00\x01\x00", b"\x90\x03\x00\x01\x80", b"\xd0\x00", b"\x90\x00"]),
        mqtt_stream,
    )
    return st.lists(pkt, max_size=4).map(b"".join)


protco_msg = st.one_of(
    st.fixed_dictionaries({"code": st.sampled_from(["ping", "property_set", "x"]) | json_value},
                          optional={"id": json_value, "data": json_value
                                    | st.fixed_dictionaries({"properties": json_value})}).map(dumps),
    json_value.map(dumps), st.text(max_size=30)).map(str.encode) | st.binary(max_size=30)
time_msg = st.one_of(
    st.fixed_dictionaries({"ntptime1": json_value | st.integers(-2**70, 2**70), "ntptime2": json_value
                           | st.integers(-2**70, 2**70)}).map(dumps),
    st.fixed_dictionaries({"ntptime1": st.just(int(time.time() * 1000)),
                           "ntptime2": st.integers(0, 2**62)}).map(dumps),
    json_value.map(dumps)).map(str.encode) | st.binary(max_size=30)


# --------------------------------------------------------------------------- the oracles (CPython references)

# Each reference states the parser's contract from the protocol, with CPython's base64, json and an AES
# from `cryptography`: ("ok", value) or ("err", message). check_against() compares the firmware with it.


class Refused(Exception):
    """The message a parser must raise (as DynregError) for an input."""


def ref_b64(raw, what):
    """Strict base64: non-empty, whole quads, only the alphabet, canonical padding (re-encodes to itself)."""
    if isinstance(raw, str):
        raw = raw.encode()
    try:
        data = base64.b64decode(raw, validate=True) if raw and not len(raw) % 4 else None
    except ValueError:
        data = None
    if data is None or base64.b64encode(data) != raw:
        raise Refused("%s is not valid base64" % what)
    return data


def ref_pem(pem):
    if isinstance(pem, str):
        pem = pem.encode()
    start = pem.find(b"-----BEGIN")
    m = re.compile(rb"[^\n]*\n(.*?)-----END", re.S).match(pem, start) if start >= 0 else None
    if m is None:
        raise Refused("tencent: not a PEM block")
    return ref_b64(m.group(1).replace(b"\r", b"").replace(b"\n", b""), "tencent: PEM body")


def ref_json_object(text):
    try:
        v = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return v if isinstance(v, dict) else None


def ref_decrypt(payload, length):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if not isinstance(payload, str) or type(length) is not int or length <= 0:  # true is no length
        raise Refused("tencent: reply lacks a Payload string and a positive Len")
    data = ref_b64(payload, "tencent: Payload")
    if length > len(data) or len(data) % 16:
        raise Refused("tencent: Len %d does not fit a %d-byte payload" % (length, len(data)))
    d = Cipher(algorithms.AES(SECRET[:16]), modes.CBC(b"0" * 16)).decryptor()
    plain = d.update(data) + d.finalize()
    info = ref_json_object(plain[:length]) if not plain[length:].strip(b"\0") else None
    if info is None:
        raise Refused("tencent: payload does not decrypt to JSON (wrong product secret?)")
    return info


def ref_credentials(info):
    kind = info.get("encryptionType")
    if kind == 2:
        psk = info.get("psk")
        if not isinstance(psk, str) or len(ref_b64(psk, "tencent: psk")) < 16:
            raise Refused("tencent: payload holds no usable psk")
        return [("dev_secret", psk.encode())]
    if kind == 1:
        cert, key = info.get("clientCert"), info.get("clientKey")
        if not isinstance(cert, str) or not isinstance(key, str):
            raise Refused("tencent: payload lacks clientCert/clientKey")
        return [("dev_key", ref_pem(key)), ("dev_cert", ref_pem(cert))]  # the certificate, "registered", last
    raise Refused("tencent: unknown encryptionType %r" % (kind,))


def ref_shown(value, limit=64):
    """Network text as the device logs it: its UTF-8 bytes, printable ASCII kept, others \\xNN, then cut."""
    data = value if isinstance(value, (bytes, bytearray)) else str(value).encode()
    text = "".join(chr(b) if 32 <= b < 127 else "\\x%02x" % b for b in data[:limit])
    return text[:limit] + ("..." if len(text) > limit or len(data) > limit else "")


def ref_tencent_reply(body):
    reply = ref_json_object(body)
    if reply is None:
        raise Refused("tencent: reply is not a JSON object")
    r = reply.get("Response") or reply
    if not isinstance(r, dict):
        raise Refused("tencent: reply is not a JSON object")
    err = r.get("Error") or (r.get("code") and r)
    if err:
        if not isinstance(err, dict):
            raise Refused("tencent: reply is not a JSON object")
        raise Refused("tencent: registration refused: %s: %s" % (ref_shown(err.get("Code", err.get("code"))),
                                                                 ref_shown(err.get("Message", err.get("message")))))
    return ref_decrypt(r.get("Payload", r.get("payload")), r.get("Len", r.get("len")))


def ref_http(data):
    """HTTP/1.x reply -> (status, body), read as a stream and refused at the first fault: the head within
    2048 bytes, lines of at most 512 ending in LF, a numeric status, a decimal Content-Length, 4096 of body."""
    status, length, pos = None, None, 0
    while True:
        nl = data.find(b"\n", pos, pos + 512)
        if nl < 0 or nl + 1 > 2048:
            raise Refused("http: reply headers too long or cut short")
        line, pos = data[pos:nl + 1], nl + 1
        if status is None:
            m = re.match(rb"\s*(HTTP/\S*)\s+(\S+)", line)
            if not m or not re.fullmatch(rb"[0-9]+", m.group(2)):
                raise Refused("http: malformed status line")
            status = int(m.group(2))
        elif line in (b"\r\n", b"\n"):
            break
        else:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                if not re.fullmatch(rb"[0-9]+", value.strip()):
                    raise Refused("http: bad Content-Length")
                length = int(value.strip())
    if length is not None and length > 4096:
        raise Refused("http: reply body of %d bytes exceeds 4096" % length)
    body = data[pos:pos + (4097 if length is None else length)]
    if len(body) > 4096 or (length is not None and len(body) != length):
        raise Refused("http: reply body too long or cut short")
    return status, body


def ref_mqtt_packet(data, pos, limit, first=None):
    """One MQTT packet of `data` at `pos` -> (first byte, body, next pos); remaining length per MQTT 3.1.1 2.2.3."""
    if first is None:
        if pos >= len(data):
            raise Refused("mqtt: the broker closed the connection")
        first, pos = data[pos], pos + 1
    n = 0
    for i in range(4):
        if pos >= len(data):
            raise Refused("mqtt: malformed packet")
        b, pos = data[pos], pos + 1
        n += (b & 0x7F) * 128 ** i
        if not b & 0x80:
            break
    else:
        raise Refused("mqtt: malformed packet")  # a fifth length byte
    if n > limit:
        raise Refused("mqtt: %d-byte packet exceeds the %d-byte limit" % (n, limit))
    if pos + n > len(data):
        raise Refused("mqtt: packet cut short")
    return first, data[pos:pos + n], pos + n


def ref_publish_json(kind, body, topic):
    """The JSON object of a PUBLISH on `topic`, skipping the packet id at QoS 1 and 2; else None."""
    if kind >> 4 != 3 or len(body) < 2:
        return None
    n = int.from_bytes(body[:2], "big")
    if body[2:2 + n] != topic:
        return None
    return ref_json_object(body[2 + n + (2 if (kind >> 1) & 3 else 0):])


RID = "0101010101010101"  # the driver's os.urandom gives 01 bytes


def ref_mqtt_exchange(data, topic, id_key):
    pos = 0
    while True:
        kind, body, pos = ref_mqtt_packet(data, pos, 1024)
        if kind == 0x90 and body[-1:] == b"\x80":
            raise Refused("the broker refused the subscription to " + topic.decode())
        r = ref_publish_json(kind, body, topic)
        if r is not None and (id_key is None or r.get(id_key) == RID):
            return r


def ref_ucloud(data):
    r = ref_mqtt_exchange(data, b"/$system/pid1/dev1/password_reply", "RequestID")
    if str(r.get("RetCode")) != "0":
        raise Refused("ucloud: registration refused: RetCode %s" % ref_shown(r.get("RetCode")))
    pw = r.get("Password")
    if not isinstance(pw, str) or ref_is_null(pw.encode()):
        raise Refused("ucloud: reply holds no Password")
    return [("dev_secret", pw.encode())]


def ref_tb_text(value, what):
    if not isinstance(value, str) or ref_is_null(value.encode()) or len(value) > 256:
        raise Refused("thingsboard: reply holds no usable " + what)
    return value


def ref_thingsboard(data):
    """The NVS items of the first message on /provision/response (no request id), by its credentialsType."""
    r = ref_mqtt_exchange(data, b"/provision/response", None)
    if r.get("status") != "SUCCESS":
        raise Refused("thingsboard: registration refused: %s (%s)" % (ref_shown(r.get("status")),
                                                                      ref_shown(r.get("errorMsg"))))
    kind, value = r.get("credentialsType"), r.get("credentialsValue")
    if kind == "ACCESS_TOKEN":
        return [("dev_secret", ref_tb_text(value, "access token").encode())]
    if kind == "MQTT_BASIC" and isinstance(value, dict):
        return [("tb_client", ref_tb_text(value.get("clientId"), "clientId")),
                ("tb_user", ref_tb_text(value.get("userName"), "userName")),
                ("dev_secret", ref_tb_text(value.get("password"), "password").encode())]
    raise Refused("thingsboard: reply has credentialsType %s, not ACCESS_TOKEN or MQTT_BASIC" % ref_shown(kind))


TB_RPC = b"v1/devices/me/rpc/request/"


def ref_thingsboard_handle(topic, msg):
    """(handled, properties after, [(reply topic, reply)]): ping answered, other methods refused (no
    on_message), attributes merged; anything else on these topics ignored; other topics not handled."""
    if topic != b"v1/devices/me/attributes" and not topic.startswith(TB_RPC):
        return False, {}, []
    body = ref_json_object(msg)
    if body is None:
        return True, {}, []
    if topic == b"v1/devices/me/attributes":
        return True, body, []
    rid, method = topic[len(TB_RPC):], body.get("method")
    if not (0 < len(rid) <= 10 and rid.isdigit()) or not isinstance(method, str):
        return True, {}, []
    reply = {"pong": True} if method == "ping" else {"error": "unsupported method"}
    return True, {}, [("v1/devices/me/rpc/response/" + rid.decode(), reply)]


PROTCO_ERRORS = {1001: "service exception", 1002: "invalid parameter", 1003: "message format error",
                 1004: "device does not exist", 1005: "product does not exist", 1006: "service not activated",
                 17032: "device is bound"}  # rlink v2's documented res codes


def ref_protco(data):
    r = ref_mqtt_exchange(data, b"register/v2/pid1/dev1/register_response", "id")
    res = r.get("res")
    if res != 0:
        why = PROTCO_ERRORS.get(res) if isinstance(res, int) else None
        raise Refused("protco: registration refused: res %s (%s)" % (ref_shown(res), why or ref_shown(r.get("msg"))))
    d = r.get("data")
    if not isinstance(d, dict):
        raise Refused("protco: reply holds no data")
    got = {"uuid": d.get("uuid"), "pid": d.get("pid") or "pid1", "secret": d.get("secret")}
    for what in ("uuid", "pid", "secret"):
        if not isinstance(got[what], str) or not got[what]:
            raise Refused("protco: reply lacks " + what)
    return [("dev_pid", got["pid"].encode()), ("dev_uuid", got["uuid"].encode()), ("dev_secret", got["secret"].encode())]


def ref_tencent_register(data):
    status, body = ref_http(data)
    if status != 200:
        raise Refused("tencent: HTTP status %d" % status)
    return ref_credentials(ref_tencent_reply(body))


def ref_protco_handle(msg):
    """(handled, properties after, replies sent): every command on .../issue gets one reply, bad JSON none."""
    cmd = ref_json_object(msg)
    if cmd is None or "code" not in cmd:
        try:
            json.loads(msg)["code"]
        except (ValueError, RecursionError, KeyError, TypeError, IndexError):
            return True, {}, 0
        raise AssertionError("a non-object with a code")
    data = cmd.get("data")
    props = data.get("properties") if cmd["code"] == "property_set" and isinstance(data, dict) else None
    return True, props if isinstance(props, dict) else {}, 1


def ref_time_offset(msg):
    """The clock correction a time reply gives (seconds, +-2 for the run's own time), or 0 when malformed."""
    t = ref_json_object(msg)
    try:
        a, b = t["ntptime1"], t["ntptime2"]
    except (TypeError, KeyError):
        return 0
    if not all(type(v) is int for v in (a, b)) or not 1577836800 < (a + b) // 2 // 1000 < 4102444800:
        return 0  # floats, strings, booleans (true + true is an int: out of range anyway) or out of range
    return (a + b) // 2 // 1000 - int(time.time())


NULLS = (b"", b"YOUR_DEVICE_SECRET", b"YOUR_IOT_PSK", b"YOUR_DEVICE_CERT_FILE_NAME", b"YOUR_DEVICE_PRIVATE_KEY_FILE_NAME")


def ref_is_null(v):
    return v is None or v.strip() in NULLS


def expected(ref, *args):
    """'ok <canon>' or 'DynregError <message>', as the driver reports an outcome."""
    try:
        return "ok " + D["canon"](ref(*args))
    except Refused as e:
        return "DynregError " + str(e)


def check_against(name, ref, *args):
    """The firmware's outcome for the case must be the reference's."""
    out = check(name, *args)
    want = expected(ref, *args)
    # the same message, up to the server's own text (which the firmware escapes for the log)
    assert out == want or (want.startswith("DynregError") and _fixed(out) == _fixed(want) != out), (
        name, args, out, want)


# --------------------------------------------------------------------------- the properties (CPython)


@FUZZ
@given(b64_any)
def test_b64decode(text):
    check_against("b64decode", lambda t: ref_b64(t, "value"), text)


PEM_OK = pem(base64.b64encode(b"\x30\x03\x02\x01\x05").decode())


@FUZZ
@given(pem_text | pem_text.map(str.encode) | st.binary(max_size=60))
@example(PEM_OK)  # a block at offset 0
@example("junk\n" + PEM_OK)
@example(PEM_OK.replace("\n", "\r\n"))
@example("-----BEGIN X-----END X-----")  # no line break after BEGIN
@example("-----BEGIN X\nMDEy\n")  # no END
@example("MDEy\n-----END X-----\n")  # no BEGIN
def test_pem_to_der(text):
    check_against("pem_to_der", ref_pem, text)


@FUZZ
@given(payload_and_len)
def test_decrypt_payload(pl):
    check_against("decrypt_payload", ref_decrypt, *pl)


@FUZZ
@given(info | json_value.filter(lambda v: isinstance(v, dict)))
@example({"encryptionType": 1, "clientCert": PEM_OK, "clientKey": PEM_OK.replace("MAMCAQU=", "MAMCAQY=")})
@example({"encryptionType": 2, "psk": "MDEyMzQ1Njc4OWFiY2RlZg=="})
@example({"encryptionType": 2, "psk": "MDEyMzQ1Njc4OWFiY2Rl"})  # 15 bytes
@example({"encryptionType": 2.0, "psk": "MDEyMzQ1Njc4OWFiY2RlZg=="})
def test_credentials(i):
    check_against("credentials", ref_credentials, i)


DEEP = b"[" * 3000  # nesting: CPython's json recurses (RecursionError), MicroPython's does not


@FUZZ
@given(reply_body)
@example(DEEP)
@example(b'{"code": 0, "payload": "xtMxyIb1MRae", "len": true}')  # a boolean Len (an int to CPython)
@example(b'{"Response": {"Error": [1]}}')
def test_tencent_reply(body):
    check_against("tencent_reply", ref_tencent_reply, body)


def _pad_line(n):
    """A header line of exactly n bytes (CRLF included)."""
    return b"X-Pad: " + b"a" * (n - 9) + b"\r\n"


def _head(n):
    """Status line plus padding headers: a head (blank line included) of exactly n bytes."""
    head = b"HTTP/1.1 200 OK\r\n"
    while n - len(head) - 2 > 512:
        head += _pad_line(500)
    return head + _pad_line(n - len(head) - 2) + b"\r\n"


@FUZZ
@given(http_reply)
@example(b"HTTP/1.1 200 OK\r\n" + _pad_line(512) + b"\r\nok")  # the caps, exactly and one over
@example(b"HTTP/1.1 200 OK\r\n" + _pad_line(513) + b"\r\nok")
@example(_head(2048) + b"ok")
@example(_head(2049) + b"ok")
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"x" * 4096)
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 4097\r\n\r\n" + b"x" * 4097)
@example(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 4096)
@example(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 4097)
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcd")
@example(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcd")
@example(b"HTTP/1.1 200 OK\r\ncontent-length:  7 \r\n\r\nabcdefg")
@example(b"HTTP/1.1 200\r\n\r\nok")  # no reason phrase
@example(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")  # bare LF line ends
@example(b"ICY 200 OK\r\n\r\nok")  # not HTTP
def test_read_reply(data):
    check_against("read_reply", ref_http, data)


@FUZZ
@given(mqtt_stream, st.integers(0, 1100), st.none() | st.integers(0, 255))
@example(packet(0x30, b"x" * 10), 10, None)  # the limit, exactly and one under
@example(packet(0x30, b"x" * 10), 9, None)
@example(packet(0x30, b"x" * 128), 128, None)  # a two-byte remaining length
@example(packet(0x30, b"x" * 16384), 1100, None)  # three bytes, over the limit
@example(b"\x30\xff\xff\xff\x7f", 1100, None)  # the largest four-byte length
@example(b"\x30\xff\xff\xff\xff\x01", 1100, None)  # a fifth length byte
@example(b"\x05abcde", 5, 0x30)
@example(b"\x00", 5, 0xD0)
@example(b"", 5, None)
@example(b"\x30", 5, None)
@example(b"\x30\x05abc", 5, None)
def test_mqtt_read(data, limit, first):
    check_against("mqtt_read", lambda d, lim, f: ref_mqtt_packet(d, 0, lim, f)[:2], data, limit, first)


@FUZZ
@given(st.integers(0, 255), st.one_of(st.binary(max_size=60), st.builds(
    lambda t, p: len(t).to_bytes(2, "big") + t + p, st.sampled_from([b"t/reply", b"t/other", b""]),
    reply_payload("ucloud") | reply_payload("protco"))))
@example(0x30, b"\x00\x07t/reply" + b"[" * 1000)
@example(0x30, b"\x00\x07t/reply{}")
@example(0x32, b"\x00\x07t/reply\x00\x01{}")  # QoS 1 and 2: a packet id before the payload
@example(0x34, b"\x00\x07t/reply\x00\x01{}")
@example(0x3D, b"\x00\x07t/reply\x7b\x7d{}")
@example(0x20, b"\x00\x07t/reply{}")
@example(0x40, b"\x00\x07t/reply{}")
@example(0x30, b"\x00")
@example(0x30, b"\x00\x08t/reply{}")
@example(0x30, b"\x00\x06t/reply{}")
def test_mqttreg_reply(kind, body):
    check_against("mqttreg_reply", lambda k, b: ref_publish_json(k, b, b"t/reply"), kind, body)


@FUZZ
@given(http_reply)
def test_tencent_register(data):
    check_against("tencent_register", ref_tencent_register, data)


@FUZZ
@given(mqtt_exchange("ucloud"))
def test_ucloud_register(data):
    check_against("ucloud_register", ref_ucloud, data)


@FUZZ
@given(mqtt_exchange("protco"))
@example(publish(b"register/v2/pid1/dev1/register_response", b'{"id": "0101010101010101", "res": [1]}'))
@example(publish(b"register/v2/pid1/dev1/register_response", b'{"id": "0101010101010101", "res": 0, "data": []}'))
def test_protco_register(data):
    check_against("protco_register", ref_protco, data)


@FUZZ
@given(mqtt_exchange("thingsboard"))
@example(publish(b"/provision/response", b'{"status": "SUCCESS", "credentialsType": "MQTT_BASIC", '
                                         b'"credentialsValue": {"clientId": "c", "userName": "u", "password": "p"}}'))
@example(publish(b"/provision/response", b'{"status": "SUCCESS", "credentialsType": "ACCESS_TOKEN", '
                                         b'"credentialsValue": "YOUR_DEVICE_SECRET"}'))
@example(publish(b"/provision/response", b'{"status": "FAILURE", "errorMsg": "Failed to provision device!"}'))
def test_thingsboard_register(data):
    check_against("thingsboard_register", ref_thingsboard, data)


@FUZZ
@given(st.sampled_from([b"v1/devices/me/attributes", TB_RPC + b"7", TB_RPC, TB_RPC + b"12345678901", TB_RPC + b"x1",
                        TB_RPC + b"4294967295", b"v1/devices/me/attributesx", b"other"]),
       st.one_of(st.fixed_dictionaries({"method": st.sampled_from(["ping", "reboot"]) | json_value},
                                       optional={"params": json_value}).map(dumps),
                 json_value.map(dumps), st.text(max_size=30)).map(str.encode) | st.binary(max_size=30))
@example(TB_RPC + b"1", b'{"method": "ping", "params": {}}')
@example(TB_RPC + b"1", b"[" * 3000)
def test_thingsboard_handle(topic, msg):
    check_against("thingsboard_handle", ref_thingsboard_handle, topic, msg)


@FUZZ
@given(protco_msg)
@example(b'{"code": "property_set", "data": true}')
@example(b'{"code": "property_set", "data": {"properties": [1]}}')
@example(b"[" * 3000)
def test_protco_handle(msg):
    check_against("protco_handle", ref_protco_handle, msg)


@FUZZ
@given(time_msg)
@example(b'{"ntptime1": 1.5, "ntptime2": 3}')
@example(b'{"ntptime1": 1e300, "ntptime2": 1e300}')
@example(b'{"ntptime1": 100000000000000000000000000, "ntptime2": 1}')
@example(b'{"ntptime1": "1", "ntptime2": "2"}')
@example(b'{"ntptime1": true, "ntptime2": true}')
def test_tencent_time(msg):
    out, want = check("tencent_time", msg), ref_time_offset(msg)
    assert out.startswith("ok i") and abs(int(out[4:]) - want) <= 2, (msg, out, want)


@FUZZ
@given(st.none() | st.binary(max_size=30) | st.builds(lambda pre, s, post: pre + s + post, st.sampled_from(
    [b"", b" ", b"\n", b"\t"]), st.sampled_from([b"", b"YOUR_DEVICE_SECRET", b"YOUR_IOT_PSK", b"x"]),
    st.sampled_from([b"", b" ", b"\r\n"])))
def test_is_null(secret):
    check_against("is_null", ref_is_null, secret)


PROPERTY_TESTS = [v for k, v in dict(globals()).items() if k.startswith("test_")]


# --------------------------------------------------------------------------- the same cases under the unix port


def test_unix_port_same_outcomes(tmp_path):
    for t in PROPERTY_TESTS:  # when run alone: generate the cases first (deterministic)
        if not CASES.get(t.__name__[len("test_"):]):
            t()
    cases = [(name, a) for name in sorted(CASES) for a in CASES[name]]
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    expected = {}
    for name, a in cases:
        expected.setdefault(name, []).append(D["outcome"](name, a))
    t0 = time.monotonic()
    out = run_on_device("micropython", tmp_path, DRIVER + DEVICE_MAIN % str(path), timeout=240)
    elapsed = time.monotonic() - t0
    got = {}
    for line in out.splitlines():
        if line.startswith("OUT "):
            name, result = json.loads(line[4:])
            got.setdefault(name, []).append(result)
    assert "FUZZ-DONE %d" % len(cases) in out, out[-3000:]
    bad, differ, lenient = [], [], []
    for name in expected:
        for a, want, have in zip(CASES[name], expected[name], got.get(name, [])):
            if have.startswith("BAD"):
                bad.append((name, a, have))
            elif have == want:
                continue  # the same value, or the same error and message
            elif have.startswith("DynregError") and _fixed(have) == _fixed(want) != have:
                continue  # the same message up to a quoted server value (dict order, repr of non-ASCII differ)
            elif have.startswith("ok") and (want.startswith("DynregError") or want == "ok None"):
                # MicroPython's json is lenient where CPython's is strict: a NUL ends the text, trailing
                # commas and leading zeros pass. What the port accepts must still be sound (not BAD).
                lenient.append((name, a, want, have))
            else:
                differ.append((name, a, want, have))
    counts = {name: len(v) for name, v in CASES.items()}
    _write_counts(counts, elapsed, len(lenient))
    assert not bad, "unix port broke the property:\n" + "\n".join(map(repr, bad[:10]))
    assert not differ, "unix port and CPython disagree:\n" + "\n".join(map(repr, differ[:10]))
    assert len(lenient) <= len(cases) // 20, lenient[:10]


def _fixed(message):
    """A message's own text: up to the first value it quotes from the server (repr or JSON)."""
    return re.split(r"[\[{'\"]", message, 1)[0]


def _write_counts(counts, elapsed, lenient):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "hostile.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    total = sum(counts.values())
    data["fuzz"] = {"parsers": len(counts), "cases_per_parser": counts,
                    "cases": {"cpython": total, "micropython": total},
                    "micropython_lenient_json": lenient}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print("fuzz: %d parsers, %d cases under cpython, %d under micropython (%.1f s on the unix port; "
          "%d accepted only by MicroPython's lenient json)" % (len(counts), total, total, elapsed, lenient))
