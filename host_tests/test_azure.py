"""Azure IoT Hub DPS (symmetric-key enrollment group) and IoT Hub, end to end under both interpreters.

Vectors: Microsoft's derived-key example (az iot dps compute-device-key) and the Python SDK's HMAC
signing vector. Fuzz: the percent-encoder against CPython's urllib.parse.quote(safe=""), the reply-topic
and reply-body parsers and the key derivation against oracles written here, each with >= 200 cases,
compared value by value. Then boards against the emulator: success with three token renewals, the
refusals, power cuts at every step of the polling, hostile DPS replies through a proxy, and the
official azure-iot-device SDK provisioning and logging in against the emulator.
"""

import base64
import hashlib
import hmac
import json
import random
import re
import time
from urllib.parse import quote

import pytest

from host_tests.conftest import INTERPS, REPO, RUN, WIFI, run_on_device
from host_tests.mqttproxy import DOWN, UP, MqttProxy, packet
from host_tests.test_faults import Board
from tools.bench.reconnect import DropProxy
from tools.cloud import azure as emulator
from tools.cloud.platform import Refused

REGISTRY = json.loads((REPO / "tools" / "cloud" / "registry.json").read_text())["azure"]
MAIN, FAST, OFF, FAIL, POWER_CUT = "0ne00SIM001", "0ne00SIMFST", "0ne00SIMOFF", "0ne00SIMFAI", "0ne00SIMPWR"
# learn.microsoft.com/azure/iot-dps/concepts-symmetric-key-attestation (az iot dps compute-device-key)
MS_GROUP_KEY = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
MS_REG_ID = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
MS_DEVICE_KEY = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
# azure-iot-sdk-python tests/unit/common/auth/test_signing_mechanism.py
SDK_KEY, SDK_DATA, SDK_SIG = "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=", "sign this message", \
    "8NJRMT83CcplGrAGaUVIUM/md5914KpWVNngSVoF9/M="
N = 200  # fuzz cases per parser


def settings(cloud, scope, name, **extra):
    """Factory settings of an Azure board pointed at the emulator's TLS broker (DPS and hub alike)."""
    s = dict(WIFI, **RUN, platform="azure", prod_id=scope, prod_secret=REGISTRY.get(scope, REGISTRY[MAIN])["secret"],
             dev_name=name, mqtt_host="localhost", mqtt_port=cloud.ports["mqtts"], ca={"file": "@cloud/ca.pem"},
             retry_ms=100, max_tries=1)
    s.update(extra)
    return s


# ------------------------------------------------------------------------------------------------ vectors, fuzz

DRIVER = r'''
import binascii
import json

from dynreg import DynregError, azure, azure_reg, crypto


class Stream:
    """What the broker sent, as a socket that has it all (EOF after it)."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, n):
        d = self.data[self.pos:self.pos + n]
        self.pos += len(d)
        return d


def run(kind, args):
    if kind == "reply":
        import time
        try:
            status, after, r = azure_reg._reply(Stream(binascii.unhexlify(args[0])), args[1].encode(),
                                                time.ticks_add(time.ticks_ms(), 5000))
            return ["ok", [status, after, r]]
        except DynregError as e:
            return ["error", str(e)]
    if kind == "quote":
        return azure.quote(binascii.unhexlify(args))
    if kind == "topic":
        r = azure_reg.parse_topic(binascii.unhexlify(args))
        return None if r is None else [r[0], None if r[1] is None else binascii.hexlify(r[1]).decode(), r[2]]
    if kind == "outcome":
        try:
            return ["ok", list(azure_reg.outcome(*args))]
        except DynregError as e:
            return ["error", str(e)]
    if kind == "key":
        return azure_reg.device_key(args[0].encode(), args[1]).decode()
    if kind == "sas":
        return azure.sas(*args)
    return binascii.b2a_base64(crypto.hmac("sha256", crypto.b64decode(args[0], "k"), args[1]))[:-1].decode()


# one case a line: the whole file would not fit the board's heap
with open(%r) as f:
    for line in f:
        kind, args = json.loads(line)
        print("R " + json.dumps([kind, run(kind, args)]))
'''


def _text(rng, alphabet, n):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))


def cases():
    """Deterministic fuzz cases (seeded) and the oracle's value for each."""
    rng = random.Random(20261202)
    c, want = {}, {}
    # quote: ASCII of every kind, UTF-8 beyond it, and raw bytes that are no UTF-8
    raw = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))) for _ in range(N // 2)]
    raw += [_text(rng, "aZ09-_.~ /+=%&?:@#\u00e9\u4e2d\U0001f600\n", 30).encode() for _ in range(N // 2)]
    c["quote"], want["quote"] = [r.hex() for r in raw], [quote(r, safe="") for r in raw]
    # reply topics: right and wrong prefixes, statuses, query fields in any order, junk
    topics, tw = [], []
    for _ in range(N):
        prefix = rng.choice(["$dps/registrations/res/"] * 6 + ["$dps/registrations/rez/", "dps/registrations/res/",
                                                               "$dps/registrations/res", ""])
        status = rng.choice([str(rng.choice([200, 202, 401, 429, 500]))] * 6 + [str(rng.randrange(10000)), "", "2x2"])
        fields, rid, after = [], None, None
        for _ in range(rng.randint(0, 4)):
            kind = rng.choice(["rid", "after", "junk"])
            if kind == "rid":
                rid = _text(rng, "abc019-$=\u00e9", 12).encode()
                fields.append(b"$rid=" + rid)
            elif kind == "after":
                v = rng.choice([str(rng.randrange(100)), str(10 ** rng.randint(8, 12)), "", "1.5", "x"])
                if v.isdigit() and len(v) <= 9:
                    after = int(v)
                fields.append(b"retry-after=" + v.encode())
            else:
                fields.append(_text(rng, "ab=&?/", 8).encode())
        sep = rng.choice(["/?"] * 6 + ["?", "/", ""])
        topic = (prefix + status + sep).encode() + b"&".join(fields)
        topics.append(topic.hex())
        # the oracle: the documented shape, taken apart with a regular expression
        m = re.fullmatch(rb"\$dps/registrations/res/([0-9]{1,3})(?:/\?(.*))?", topic, re.S)
        if not m:
            tw.append(None)
            continue
        query = m.group(2) or b""
        rids = [f[5:] for f in query.split(b"&") if f.startswith(b"$rid=")]
        # rid and retry-after as the query says them, the last one of each kind winning
        afters = [int(f[12:]) for f in query.split(b"&") if re.fullmatch(rb"retry-after=[0-9]{1,9}", f)]
        tw.append([int(m.group(1)), rids[-1].hex() if rids else None, afters[-1] if afters else None])
    c["topic"], want["topic"] = topics, tw
    # reply bodies
    vocab = [None, True, 0, 7, "", "x", "assigned", "assigning", "failed", [], {}, "4.abc.def", "h" * 129]
    bodies, ow = [], []
    for _ in range(N):
        status = rng.choice([200, 202, 202, 401, 404, 429, 503, 302])
        body = {}
        for k in ("status", "operationId", "errorCode", "message"):
            if rng.random() < 0.6:
                body[k] = rng.choice(vocab)
        if rng.random() < 0.5:
            rs = {k: rng.choice(vocab + ["hub.example.net", "dev-1"]) for k in ("assignedHub", "deviceId", "errorCode",
                                                                               "errorMessage") if rng.random() < 0.7}
            body["registrationState"] = rs if rng.random() < 0.9 else "nope"
        bodies.append([status, body])
        ow.append(_outcome(status, body))
    c["outcome"], want["outcome"] = bodies, ow
    c["reply"], want["reply"] = _replies(rng)
    # derived keys and SAS tokens, checked by the emulator's own implementation
    keys = [base64.b64encode(bytes(rng.randrange(256) for _ in range(rng.choice([16, 32, 64])))).decode()
            for _ in range(N)]
    ids = [_text(rng, "abcdefghijklmnopqrstuvwxyz0123456789-", 40) or "a" for _ in range(N)]
    c["key"] = [[MS_GROUP_KEY, MS_REG_ID]] + [[k, r] for k, r in zip(keys, ids)]
    want["key"] = [MS_DEVICE_KEY] + [base64.b64encode(hmac.new(base64.b64decode(k), r.encode(), hashlib.sha256)
                                                       .digest()).decode() for k, r in zip(keys, ids)]
    resources = [_text(rng, "abcXYZ09-/.%&=+ \u00e9", 40) for _ in range(N)]
    expiries = [int(time.time()) + rng.randint(60, 10 ** 6) for _ in range(N)]
    c["sas"] = [[k, r, se, rng.choice([None, "registration"])] for k, r, se in zip(keys, resources, expiries)]
    return c, want


def _mqtt(first, body):
    n, head = len(body), bytearray([first])
    while n > 0x7F:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(head + bytes([n]) + body)


def _replies(rng):
    """Streams of broker packets around a reply, and what the device must make of each."""
    streams, want = [], []
    for _ in range(N):
        rid = _text(rng, "0123456789abcdef", 8) or "0"
        data, verdict = b"", None
        kinds = [rng.choice(["suback", "publish", "publish", "publish", "ping"]) for _ in range(rng.randint(1, 5))]
        for kind in kinds + [rng.choice(["junk", "big"] + ["none"] * 8)]:
            if kind == "suback":
                code = rng.choice([b"\x00", b"\x01", b"\x80"])
                data += _mqtt(0x90, b"\x00\x01" + code)
                if code == b"\x80" and verdict is None:
                    verdict = ["error", "refused the subscription"]
            elif kind == "ping":
                data += _mqtt(0xD0, b"")
            elif kind == "big":
                data += _mqtt(0x30, bytes(2049))
                verdict = verdict or ["error", "exceeds the 2048-byte limit"]
                break
            elif kind == "none":
                break
            elif kind == "junk":
                data += bytes([rng.choice([0x30, 0x20, 0x40])]) + bytes(rng.randrange(256) for _ in range(3))
                break
            else:
                status = rng.choice([200, 202, 401, 1000])
                mine = rng.random() < 0.5
                topic = ("$dps/registrations/res/%d/?$rid=%s" % (status, rid if mine else rid + "x")).encode()
                after = rng.choice([None, 0, 3])
                if after is not None:
                    topic += b"&retry-after=%d" % after
                obj = {"status": rng.choice(["assigning", "assigned"]), "operationId": _text(rng, "abc.4-", 10)}
                payload = rng.choice([json.dumps(obj).encode()] * 4 + [b"[1, 2]", b"{{", b"\xff", b'"text"'])
                qos1 = rng.random() < 0.3
                body = len(topic).to_bytes(2, "big") + topic + (b"\x00\x07" if qos1 else b"") + payload
                data += _mqtt(0x32 if qos1 else 0x30, body)
                if verdict is None and mine and status < 1000:
                    value = json.loads(payload) if payload.startswith(b"{\"") else None
                    verdict = ["ok", [status, after, value]] if value else ["error", "is not a JSON object"]
        streams.append([data.hex(), rid])
        # a stream that ends (or breaks) before the verdict: the reading fails, naming MQTT
        want.append(verdict or ["error", "mqtt: "])
    return streams, want


def _outcome(status, body):
    """What the device must make of a DPS reply, written from the protocol description."""
    if status == 429 or status >= 500:
        return ["ok", ["retry", None]]
    if status >= 300:
        return ["error", "registration refused: DPS %d" % status]
    rs = body.get("registrationState")
    if body.get("status") == "assigned":
        good = isinstance(rs, dict) and all(isinstance(rs.get(k), str) and rs[k] for k in ("assignedHub", "deviceId"))
        return ["ok", ["assigned", rs]] if good else ["error", "named no assignedHub"]
    if body.get("status") == "failed":
        return ["error", "registration failed"]
    op = body.get("operationId")
    if isinstance(op, str) and 0 < len(op) <= 128:
        return ["ok", ["wait", op]]
    return ["error", "holds no operationId"]


def test_vectors_and_fuzz(interp, tmp_path):
    """Every case through the device code; each value equals the oracle's."""
    c, want = cases()
    path = tmp_path / "cases.jsonl"
    c["hmac"] = [[SDK_KEY, SDK_DATA]]
    path.write_text("".join(json.dumps([kind, args]) + "\n" for kind, items in c.items() for args in items))
    got = {}
    for line in run_on_device(interp, tmp_path, DRIVER % str(path)).splitlines():
        if line.startswith("R "):
            kind, value = json.loads(line[2:])
            got.setdefault(kind, []).append(value)
    got["hmac"], = got["hmac"]
    assert got["hmac"] == SDK_SIG
    assert got["key"][0] == MS_DEVICE_KEY
    for name in ("quote", "topic", "key"):
        assert len(got[name]) == len(want[name]) >= N
        bad = [(i, g, w) for i, (g, w) in enumerate(zip(got[name], want[name])) if g != w]
        assert not bad, (name, bad[:3])
    for name in ("outcome", "reply"):
        assert len(got[name]) == len(want[name]) >= N
        for i, (g, w) in enumerate(zip(got[name], want[name])):
            assert g[0] == w[0] and (g[1] == w[1] if w[0] == "ok" else w[1] in g[1]), (name, i, c[name][i], g, w)
    # the emulator's independent check accepts every token the device made, and no altered one
    for (k, r, se, policy), token in zip(c["sas"], got["sas"]):
        assert emulator.check_sas(token, r, k, policy) == se
        assert quote(r, safe="") in token
        forged = token.replace("&se=%d" % se, "&se=%d" % (se + 1))
        with pytest.raises(Refused, match="signature"):
            emulator.check_sas(forged, r, k, policy)
    assert sum(1 for t in want["topic"] if t) >= N // 5
    assert all(sum(1 for o in want[k] if o[0] == "ok") >= N // 5 for k in ("outcome", "reply"))


def test_emulator_sas_checks():
    """Expired, wrong resource, wrong policy and malformed tokens are refused; the signature covers sr as sent."""
    key = emulator.derive(REGISTRY[MAIN]["secret"], "dev-1")
    se = int(time.time()) + 60

    def token(sr, expiry=se, extra=""):
        sig = base64.b64encode(hmac.new(base64.b64decode(key), ("%s\n%d" % (sr, expiry)).encode(),
                                        hashlib.sha256).digest()).decode()
        return "SharedAccessSignature sr=%s&sig=%s&se=%d%s" % (sr, quote(sig, safe=""), expiry, extra)

    res = "s/registrations/dev-1"
    for sr in ("s%2Fregistrations%2Fdev-1", "s%2fregistrations%2fdev-1"):  # the Python and the C SDK's forms
        assert emulator.check_sas(token(sr, extra="&skn=registration"), res, key, "registration") == se
    for bad, why in ((token("s%2Fregistrations%2Fdev-1", int(time.time()) - 1), "expired"),
                     (token("s%2Fregistrations%2Fdev-2"), "another resource"),
                     (token("s%2Fregistrations%2Fdev-1", extra="&skn=owner"), "policy"),
                     (token("s%2Fregistrations%2Fdev-1", extra="&x=1"), "needs"),
                     ("Basic abc", "no SharedAccessSignature")):
        with pytest.raises(Refused, match=why):
            emulator.check_sas(bad, res, key, "registration")


# ------------------------------------------------------------------------------------------------ boards

def test_register_login_renew_and_cloud_to_device(cloud, tmp_path, interp):
    """Provisioned after three polls and logged in with the derived key; a cloud-to-device message reaches
    on_message; with a 5 s token the board renews its login three times, staying online, before any token
    expires (the emulator closes an expired session: it never has to)."""
    from host_tests.runtimeboard import Board as Online
    from host_tests.secrets_scan import assert_clean
    from host_tests.test_cloud_tencent import Mqtt
    from tools.cloud.state import read_console_password

    name = "az-ok-" + interp[:2]
    board = Online(tmp_path, interp, settings(cloud, FAST, name, token_ttl_s=5, max_tries=0), cloud.state,
                   period_ms=500)
    con = Mqtt(cloud.ports)
    try:
        board.wait_line(r"^app: online 0 ")
        assert con.connect("console-azure", cloud.registry["console"]["username"],
                           read_console_password(cloud.state)) == 0
        topic = "devices/%s/messages/devicebound/%%24.to=%%2Fdevices%%2F%s%%2Fmessages%%2Fdevicebound" % (name, name)
        con.publish(topic, b'{"led": 1}', qos=1)
        board.wait_line(r"^app: message on %s \(10 bytes\)" % re.escape(topic))
        at = 0
        for _ in range(3):
            at = board.wait_line(r"^dynreg: mqtt: login renewed", at).index + 1
        board.wait_line(r"^app: report \d+ acked", at)  # online after the third, too
    finally:
        con.sock.close()
        assert board.stop()
    out = board.out
    assert out.count("asking again in 0 s") == 3 and "azure: assigned to hub sim-hub.azure-devices.net" in out, out
    assert "stored az_hub, az_device, dev_secret in NVS" in out
    # renewed in place: the application never saw the connection go (no offline, no reconnect)
    assert out.count("mqtt: login renewed") >= 3 and "app: offline" not in out and "connection lost" not in out, out
    assert "unacked" not in out, out
    rec = cloud.devices()["azure"]["%s/%s" % (FAST, name)]
    assert rec["round_trips"] == 2 + 3 and rec["logins"] >= 4, rec
    assert cloud.log().count("cloud: azure %s telemetry: " % name) >= 4
    assert rec["secret"] == emulator.derive(REGISTRY[FAST]["secret"], name)
    assert "%s: login credentials expired" % name not in cloud.log()
    assert_clean(out, cloud.secrets(), cloud.public() | {FAST, name}, derived=True, where="the board's output")


@pytest.mark.parametrize("interp", ["micropython"])
def test_refused_renewal_keeps_the_identity(cloud, tmp_path, interp):
    """The device is deleted at the hub while online: its next renewal is refused (CONNACK 5), which the runtime
    treats as a lost connection, backing off and keeping the derived key; no new registration."""
    from host_tests.runtimeboard import Board as Online
    from tools.cloud.registry import forget_device
    from tools.factory import nvsformat

    name = "az-deleted-" + interp[:2]
    board = Online(tmp_path, interp, settings(cloud, FAST, name, token_ttl_s=4, max_tries=0, retry_ms=200),
                   cloud.state, period_ms=500)
    try:
        board.wait_line(r"^app: report 1 acked")  # between two logins and reports: the console edits alone
        assert forget_device(str(cloud.state / "devices.json"), "azure", "%s/%s" % (FAST, name))
        board.wait_line(r"^dynreg: mqtt: connection lost \(DynregError: mqtt: broker refused the login "
                        r"\(CONNACK return code 5\)")
        board.wait_line(r"^app: offline")
        board.wait_line(r"^dynreg: mqtt: reconnect 2 failed \(.*return code 5.*\); retrying in \d+ ms")
    finally:
        assert board.stop()
    nvs = {k: v for k, (_, v) in nvsformat.parse((tmp_path / "board" / "nvs.bin").read_bytes())["dynreg"].items()}
    assert nvs["dev_secret"].decode() == emulator.derive(REGISTRY[FAST]["secret"], name)
    assert board.boots() == 2 and board.out.count("registering azure device") == 1, board.out


def test_forget_prod_after_accepted_login(cloud, board):
    run = board(settings(cloud, FAST, "az-forget", forget_prod=1, report_count=1))
    assert run.rc == 0 and "product secret erased from NVS (forget_prod=1)" in run.out, run


@pytest.mark.parametrize("case, extra, why", [
    ("wrong-key", {"prod_secret": base64.b64encode(b"k" * 64).decode()},
     r"registration refused: DPS 401 errorCode 401002: Unauthorized: SAS signature does not match"),
    ("unknown-scope", {"prod_id": "0ne00NOSUCH"}, r"DPS 401 errorCode 401002: Unauthorized: unknown ID scope"),
    ("disabled", {"prod_id": OFF}, r"DPS 401 errorCode 401002: Unauthorized: the enrollment group is disabled"),
    ("failed", {"prod_id": FAIL}, r"registration failed: errorCode 400207: Custom allocation failed"),
    ("bad-id", {"dev_name": "Bad_Id"}, r"ConfigError: registration id 'Bad_Id' has a character outside"),
    ("bad-key", {"prod_secret": "not base64!"}, r"ConfigError: NVS prod_secret \(the enrollment group key\) is not"),
])
def test_refusals(cloud, board, interp, case, extra, why):
    """Each refusal is one clear line; nothing is stored."""
    s = settings(cloud, FAST, "az-no-%s-%s" % (case, interp[:2]), **extra)
    if "prod_id" in extra and extra["prod_id"] in REGISTRY:
        s["prod_secret"] = REGISTRY[extra["prod_id"]]["secret"]
    run = board(s, max_boots=1)
    assert run.rc != 0 and re.search(why, run.out), run
    assert "registered: stored" not in run.out


# as the DPS connection starts, after the 202 to the PUT, after the 202 to the first GET; after the
# assignment, at the first and the last
# (the device key) NVS write; after the commit
POWER = ["mqtt: connecting to", "to request 1;", "to request 2;", "nvs_write:1", "nvs_write:3", "nvs_commit:1"]


# the NVS writes are the shared flow's: under MicroPython only
POWER_CASES = [(w, i) for w in POWER for i in INTERPS if i == "micropython" or not w.startswith("nvs")]


@pytest.mark.parametrize("when, interp", POWER_CASES)
def test_power_cut(cloud, tmp_path, interp, when):
    """A power cut after each DPS reply, at the NVS writes and after the commit: the next boot registers again
    (the derived key is the same) unless the commit was done, logs in, and NVS and emulator agree. A cut on
    a log line lands while the device waits the reply's retry-after (2 s), before its next request."""
    name = "az-pc-%s-%s" % (re.sub(r"[^a-z0-9]", "", when.lower())[:12], interp[:2])
    # the NVS faults are exact without waiting: the fast group
    scope = FAST if when.startswith("nvs") else POWER_CUT
    s = settings(cloud, scope, name, report_count=1, max_tries=4)
    board = Board(cloud, tmp_path, interp, s)
    if when.startswith("nvs"):
        board.run(fault=when)
    else:
        board.run(cut_on=re.escape(when))
        # the cut came before the next request: boot 1 never heard of an assignment
        assert "azure: assigned" not in board.out.split("[sim] power cut")[0], board.out
    assert board.rc == 0 and "power cut" in board.out and "dynreg: mqtt: logged in" in board.out, board.out
    key = "%s/%s" % (scope, name)
    rec = cloud.devices()["azure"][key]
    assert board.nvs()["dev_secret"].decode() == rec["secret"] and board.nvs()["az_device"] == name.encode()
    # registrations the emulator completed: the cut one too when its assignment had been sent
    assert rec["registrations"] == (2 if when.startswith("nvs_write") else 1), (rec, board.out)


def _hostile(cloud, tmp_path, interp, reply, **extra):
    """Run a board over plain TCP through a proxy that swallows DPS's first reply and sends `reply(rid)` instead."""
    proxy = MqttProxy(cloud.ports["mqtt"])
    proxy.rule = (DOWN, lambda c, f, b: f & 0xF0 == 0x30, "stall")
    s = settings(cloud, MAIN, "az-hostile-" + interp[:2], tls=0, mqtt_port=proxy.port, reg_timeout_ms=4000, **extra)
    s.pop("ca")
    board = Board(cloud, tmp_path, interp, s)
    import threading

    def inject():
        proxy.wait(lambda: proxy.conns and proxy.conns[0].stalled, what="the first DPS reply")
        (_, put), = [(f, b) for d, f, b in proxy.conns[0].packets if d == UP and f & 0xF0 == 0x30]
        rid = re.search(rb"\$rid=([0-9a-f]+)", put).group(1)
        topic, body = reply(rid)
        proxy.inject(packet(0x30, len(topic).to_bytes(2, "big") + topic + body))

    t = threading.Thread(target=inject, daemon=True)
    t.start()
    try:
        board.run(max_boots=1)
    finally:
        t.join(10)
        proxy.close()
    return board


@pytest.mark.parametrize("case, reply, why", [
    ("huge-retry-after", lambda rid: (b"$dps/registrations/res/202/?$rid=" + rid + b"&retry-after=999999999",
                                      b'{"operationId":"4.a.b","status":"assigning"}'),
     r"DPS asks to wait 999999999 s; the registration deadline is \d s away"),
    ("no-operation-id", lambda rid: (b"$dps/registrations/res/202/?$rid=" + rid, b'{"status":"assigning"}'),
     r"DPS reply \(status assigning\) holds no operationId"),
    ("error-body", lambda rid: (b"$dps/registrations/res/401/?$rid=" + rid,
                                b'{"errorCode":401002,"message":"Unauthorized\\u001b[31m"}'),
     r"registration refused: DPS 401 errorCode 401002: Unauthorized\\x1b\[31m"),
    ("no-hub", lambda rid: (b"$dps/registrations/res/200/?$rid=" + rid,
                            b'{"operationId":"4.a.b","status":"assigned","registrationState":{"deviceId":"d"}}'),
     r"DPS assigned the device but named no assignedHub and deviceId"),
    ("not-json", lambda rid: (b"$dps/registrations/res/202/?$rid=" + rid, b"\xff{{"), r"DPS reply 202 is not a JSON"),
    ("throttled", lambda rid: (b"$dps/registrations/res/429/?$rid=" + rid + b"&retry-after=0", b'{"errorCode":429001}'),
     r"DPS 429 \(retry\) to request 1; asking again in 0 s\n(.|\n)*no complete answer before the deadline"),
    ("wrong-rid", lambda rid: (b"$dps/registrations/res/200/?$rid=x" + rid, b'{"status":"assigned"}'),
     r"ignoring a message that is no reply to request [0-9a-f]+\n(.|\n)*no complete answer before the deadline"),
])
def test_hostile_dps_replies(cloud, tmp_path, interp, case, reply, why):
    """A hostile reply is one clear error line and a retry (here: giving up after the one try), never a crash."""
    board = _hostile(cloud, tmp_path, interp, reply)
    assert board.rc != 0 and re.search(why, board.out), board.out
    assert "giving up after 1 attempts" in board.out, board.out


# ------------------------------------------------------------------------------------------------ the official SDK

class ConnectProxy(DropProxy):
    """An HTTP CONNECT proxy on loopback that takes every tunnel to the emulator's TLS port, whatever host and
    port were asked: how the SDK, which always dials 8883, reaches an emulator on an ephemeral port."""

    def __init__(self, upstream_port):
        self.asked = []
        super().__init__(upstream_port)

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 4096:
                chunk = client.recv(1024)
                if not chunk:
                    break
                head += chunk
            self.asked.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            upstream = socket.create_connection(self.upstream)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()


def sdk_register(cloud, name, proxy):
    """Provision `name` in the FAST group with the official SDK through `proxy`; (its key, the registration state)."""
    from azure.iot.device import ProvisioningDeviceClient, ProxyOptions

    key = emulator.derive(REGISTRY[FAST]["secret"], name)
    dps = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host="localhost", registration_id=name, id_scope=FAST, symmetric_key=key,
        server_verification_cert=(cloud.state / "ca.pem").read_text(),
        proxy_options=ProxyOptions("HTTP", "127.0.0.1", proxy.port))
    result = dps.register()
    assert result.status == "assigned", result
    return key, result.registration_state


def test_official_sdk(cloud):
    """azure-iot-device provisions through the emulator's DPS (SDK defaults: its UUID rids, no skn, clean session
    off) and sends telemetry to the assigned hub; only endpoints and the CA are redirected."""
    from azure.iot.device import IoTHubDeviceClient, Message, ProxyOptions

    name = "az-sdk-client"
    proxy = ConnectProxy(cloud.ports["mqtts"])
    try:
        key, state = sdk_register(cloud, name, proxy)
        assert (state.assigned_hub, state.device_id) == ("sim-hub.azure-devices.net", name)
        hub = IoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id,
            server_verification_cert=(cloud.state / "ca.pem").read_text(), gateway_hostname="localhost",
            proxy_options=ProxyOptions("HTTP", "127.0.0.1", proxy.port))
        hub.connect()
        hub.send_message(Message('{"temp": 21.5}', content_encoding="utf-8", content_type="application/json"))
        hub.shutdown()
    finally:
        proxy.close()
    assert proxy.asked and all(a.startswith("CONNECT localhost:8883 ") for a in proxy.asked), proxy.asked
    rec = cloud.devices()["azure"]["%s/%s" % (FAST, name)]
    assert rec["activated"] and rec["round_trips"] >= 2 + 3, rec
    assert cloud.log().count("cloud: azure %s telemetry: 14 bytes" % name) == 1


def test_secret_scan_sees_sas_tokens_and_device_keys():
    """The scan every board run goes through catches a SAS token, its signature alone, and a derived key."""
    from host_tests.secrets_scan import scan

    key = emulator.derive(REGISTRY[MAIN]["secret"], "dev-1")
    token = "SharedAccessSignature sr=s%2Fregistrations%2Fdev-1&sig=" + quote(SDK_SIG, safe="") + "&se=1"
    for leaked in (token, "password " + token[22:], "signed " + quote(SDK_SIG, safe=""), "key " + key):
        assert scan("dynreg: %s\n" % leaked, [], derived=True), leaked
    assert not scan("dynreg: azure: assigned to hub sim-hub.azure-devices.net as device dev-1\n", [], derived=True)


def test_hub_refuses_and_expires_tokens(cloud):
    """At the hub: a wrong key, another device's token and a past expiry are CONNACK 5; an accepted session is
    closed by the emulator once its token's se passes (what a device that never renews meets)."""
    import socket

    from host_tests.test_cloud_tencent import Mqtt

    name = "az-expiry"
    proxy = ConnectProxy(cloud.ports["mqtts"])
    try:
        key, state = sdk_register(cloud, name, proxy)
    finally:
        proxy.close()
    hub = state.assigned_hub

    def token(k, resource, se):
        sr = quote(resource, safe="")
        sig = base64.b64encode(hmac.new(base64.b64decode(k), ("%s\n%d" % (sr, se)).encode(), hashlib.sha256).digest())
        return "SharedAccessSignature sr=%s&sig=%s&se=%d" % (sr, quote(sig.decode(), safe=""), se)

    user, res, now = "%s/%s/?api-version=2021-04-12" % (hub, name), "%s/devices/%s" % (hub, name), int(time.time())
    for password in (token(base64.b64encode(b"x" * 32).decode(), res, now + 60), token(key, res + "x", now + 60),
                     token(key, res, now - 1)):
        assert Mqtt(cloud.ports).connect(name, user, password) == 5
    c = Mqtt(cloud.ports)
    assert c.connect(name, user, token(key, res, now + 2)) == 0
    c.sock.settimeout(10)
    try:
        assert c.sock.recv(1) == b""  # the emulator closed it: EOF, well before the 10 s timeout
    except (ConnectionResetError, socket.timeout) as e:
        assert isinstance(e, ConnectionResetError), "the session outlived its token"
    assert "mqtt %s: login credentials expired, connection closed" % name in cloud.log()


@pytest.mark.parametrize("spec, why", [
    ({"secret": "not-base64-at-all!!"}, "secret must be the group key in base64"),
    ({"secret": REGISTRY[MAIN]["secret"], "polls": 0}, "polls must be an integer of at least 1"),
    ({"secret": REGISTRY[MAIN]["secret"], "retry_after": "1"}, "retry_after must be an integer"),
    ({"secret": REGISTRY[MAIN]["secret"], "allocation": "maybe"}, "allocation"),
])
def test_registry_options_checked(tmp_path, spec, why):
    """A bad enrollment group in the registry stops the emulator with one line naming it, no traceback."""
    import subprocess

    from host_tests.conftest import PYTHON

    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"azure": {"0ne00BAD": spec}}))
    proc = subprocess.run([PYTHON, "-m", "tools.cloud", "--state", str(tmp_path / "s"), "--registry", str(path),
                           "--http-port", "0", "--https-port", "0", "--mqtt-port", "0", "--mqtts-port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cloud: cannot use registry" in proc.stdout and why in proc.stdout, proc
    assert "Traceback" not in proc.stdout + proc.stderr and "0ne00BAD" in proc.stdout


def test_emulator_compares_sas_in_constant_time(monkeypatch):
    """The SAS signature is compared through hmac.compare_digest, which sees what was sent."""
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append({a, b})
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key = emulator.derive(REGISTRY[MAIN]["secret"], "dev-1")
    wrong = "SharedAccessSignature sr=s%2Fregistrations%2Fdev-1&sig=AAAA&se=" + str(int(time.time()) + 60)
    with pytest.raises(Refused, match="signature"):
        emulator.check_sas(wrong, "s/registrations/dev-1", key, "registration")
    assert any(b"AAAA" in pair for pair in seen), seen
