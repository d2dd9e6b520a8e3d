"""Alibaba Cloud IoT Platform end to end and in parts: the official vectors, each registration variant and
sign method on the simulated board against the emulator (under the MicroPython unix port and CPython),
the emulator's refusal and replay rules over real HTTPS and MQTT, hostile servers, and fuzzing of the
device's new parsers against CPython references. Power cuts are in test_faults.py (its PRODUCTS).
"""

import hashlib
import hmac
import http.client
import json
import re
import ssl
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import host_tests.test_fuzz_parsers as fz
from host_tests.conftest import REPO, WIFI, aliyun_settings, run_on_device
from host_tests.secrets_scan import assert_clean
from host_tests.test_hostile import (HostileServer, big_announced, hang, http as http_serve, ok, packet,  # noqa: F401
                                     pki, publish, read_packet, stream_forever)
from tools.cloud import aliyun as emu

PK = "a1ExpAkj9Hi"  # the vendor's example product (registry.json): pre-registration and registration-free on
PRE, OFF, MUTE = "a1SimPre0001", "a1SimOff0001", "a1SimMute001"
# The vendor's documented example (its SDK's log of one registration), and what follows from it.
PS, DN, RANDOM = "ffFnFlKQW3HYjjPR", "Example_dyn1", "7y4Jg5xdKCy9W2i"
SIGN = "d3b560d5be0c9c19749470e85d912b65685fa4b20edcbd179ccfe98fcca23d5e"
DS = "KGQQFFlGinIipW9Xn7xQ5U6d6MokPZD4"  # the deviceSecret of that reply
REPLY = ('{"code":200,"data":{"deviceName":"Example_dyn1","deviceSecret":"KGQQFFlGinIipW9Xn7xQ5U6d6MokPZD4",'
         '"productKey":"a1ExpAkj9Hi"},"message":"success"}')
QUICK = {"report_count": 1}  # one report: enough where the test is about registration


def name(interp, what):
    return "%s-%s" % (what, interp[:2])


def ref_hmac(method, key, text):
    return hmac.new(key.encode(), text.encode(), {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1}[method]).hexdigest()


# --------------------------------------------------------------------------- vectors


def test_official_vectors(interp, tmp_path):
    out = run_on_device(interp, tmp_path, (
        "from dynreg import aliyun, aliyun_reg\n"
        "print('reg256', aliyun_reg.sign('hmacsha256', %r, %r, %r, %r))\n"
        "print('reg1', aliyun_reg.sign('hmacsha1', %r, %r, %r, %r))\n"
        "print('login', aliyun.password('hmacsha256', %r, '%s.%s', %r, %r, '2524608000000'))\n"
        "print('reply', aliyun_reg.parse_http(%r))\n"
        "print('docs', aliyun.password('hmacsha1', b'secret', '12345', 'device', 'pk', '789'))\n") % (
        PS.encode(), PK, DN, RANDOM, PS.encode(), PK, DN, RANDOM, DS.encode(), PK, DN, DN, PK, REPLY.encode()))
    got = dict(line.split(" ", 1) for line in out.splitlines() if line[:4] in ("reg2", "reg1", "logi", "repl", "docs"))
    assert got["reg256"] == SIGN  # the vendor's own value
    assert got["reg1"] == ref_hmac("hmacsha1", PS, "deviceName%sproductKey%srandom%s" % (DN, PK, RANDOM))
    assert got["reg1"] == "c6123bc05b87b81cec9d73c9d7e98d80c1147444"
    login = ref_hmac("hmacsha256", DS, "clientId%s.%sdeviceName%sproductKey%stimestamp2524608000000" % (PK, DN, DN, PK))
    assert got["login"] == login == "4cdce2673dbe3a3611d34b06a2dbb377f1e091505facd9b354314fc5ff3d5931"
    assert got["reply"] == "[('dev_secret', b'%s')]" % DS
    # the login docs' example (clientId 12345, deviceName device, productKey pk, timestamp 789, secret "secret")
    assert got["docs"].upper() == "FAFD82A3D602B37FB0FA8B7892F24A477F851A14"


def test_emulator_signs_the_vectors_independently():
    assert emu.registration_sign(PS, PK, DN, RANDOM) == SIGN
    assert emu.registration_sign(PS, PK, DN, RANDOM, "hmacSha1") == "c6123bc05b87b81cec9d73c9d7e98d80c1147444"
    assert emu.login_sign(DS, "%s.%s" % (PK, DN), DN, PK, "2524608000000") == (
        "4cdce2673dbe3a3611d34b06a2dbb377f1e091505facd9b354314fc5ff3d5931")
    assert emu.login_sign("secret", "12345", "device", "pk", "789", "hmacsha1") == (
        "FAFD82A3D602B37FB0FA8B7892F24A477F851A14".lower())
    # the firmware's HMAC is its own (crypto.hmac over hashlib); the emulator's is CPython's hmac module
    assert "import hmac" not in (REPO / "firmware" / "lib" / "dynreg" / "crypto.py").read_text()


# --------------------------------------------------------------------------- the board, end to end


def test_https_registers_then_second_boot_logs_in(cloud, board, interp):
    dn = name(interp, "ali-first")
    s = aliyun_settings(cloud, PK, dn, report_count=2)
    run = board(s)
    assert run.rc == 0 and run.boots == 2, run
    order = ["registering aliyun device", "aliyun: POST https://localhost:%d/auth/register/device" % s["reg_port"],
             "registered: stored dev_secret", "[sim] machine.reset()",
             "as %s.%s|timestamp=" % (PK, dn), ",securemode=2,signmethod=hmacsha256|", "mqtt: logged in",
             "report 1 sent, acknowledged", "aliyun: property/set ", "-> code 200", "report 2 sent, acknowledged"]
    positions = [run.out.find(x) for x in order]
    assert -1 not in positions and positions == sorted(positions), run
    rec = cloud.devices()["aliyun"]["%s/%s" % (PK, dn)]
    assert rec["activated"] and rec["registrations"] == 1 and rec["round_trips"] == 1, rec
    assert rec["commands_answered"] == 1, rec  # the emulator's property/set got its set_reply
    assert "aliyun registration %s/%s ok (device secret, registration 1, 1 round trip)" % (PK, dn) in cloud.log()

    again = board(s, fresh=False)  # the second boot goes straight to MQTT
    assert again.rc == 0 and again.boots == 1, again
    assert "registering" not in again.out and "mqtt: logged in" in again.out, again
    assert cloud.devices()["aliyun"]["%s/%s" % (PK, dn)]["registrations"] == 1


VARIANTS = [("https", "hmacsha1"), ("mqtt", "hmacsha256"), ("mqtt", "hmacsha1"), ("mqtt-nwl", "hmacsha256"),
            ("mqtt-nwl", "hmacsha1")]


@pytest.mark.parametrize("variant,method", VARIANTS, ids=["%s-%s" % v for v in VARIANTS])
def test_variant_and_sign_method(cloud, board, interp, variant, method):
    dn = name(interp, "ali-%s-%s" % (variant.replace("mqtt-", ""), method[-1]))
    s = aliyun_settings(cloud, PK, dn, variant, sign_method=method, **QUICK)
    run = board(s)
    assert run.rc == 0 and run.boots == 2, run
    key = "%s/%s" % (PK, dn)
    rec = cloud.devices()["aliyun"][key]
    assert rec["activated"] and rec["round_trips"] == 1, rec
    if variant == "https":
        assert "POST https://localhost" in run.out
    else:
        auth = "regnwl" if variant == "mqtt-nwl" else "register"
        assert "as %s.%s|random=" % (dn, PK) in run.out and ",authType=%s,securemode=2,signmethod=%s|" % (
            auth, method) in run.out, run
    if variant == "mqtt-nwl":
        assert "stored dev_client, dev_secret" in run.out
        assert "as %s|securemode=-2,authType=connwl|" % rec["client_id"] in run.out, run
        assert "mqtt login %s ok (aliyun, connwl; device activated)" % key in cloud.log()
        again = board(s, fresh=False)  # the token logs in again, and again
        assert again.rc == 0 and again.boots == 1 and "authType=connwl" in again.out, again
    else:
        assert "signmethod=%s|" % method in run.out.split("[sim] boot 2")[1], run  # the login signs so too


def test_instance_id_securemode(cloud, board, interp):
    """The current docs: securemode=-2 with instanceId on new instances; NVS secure_mode picks 2 (the SDKs').
    One case per interpreter: the choice is the same code on both."""
    mode, want = {"micropython": (None, "securemode=-2"), "cpython": ("2", "securemode=2")}[interp]
    s = aliyun_settings(cloud, PK, name(interp, "ali-inst"), "mqtt", instance_id="iot-06z00test", **QUICK)
    if mode:
        s["secure_mode"] = mode
    run = board(s)
    assert run.rc == 0, run
    assert ",authType=register,%s,signmethod=hmacsha256,instanceId=iot-06z00test|" % want in run.out, run


def _refused(board, s, words):
    run = board(dict(s, max_tries=1))
    assert run.rc == 1 and run.boots == 1, run
    assert re.search(words, run.out), run
    assert "registered: stored" not in run.out
    return run


def test_settings_the_platform_cannot_take(cloud, board, interp):
    """A ConfigError at once, naming the setting, before anything is sent."""
    dn = name(interp, "ali-config")
    for extra, words in (({"ali_reg": "coap"}, "aliyun: NVS ali_reg is 'coap', not https, mqtt or mqtt-nwl"),
                         ({"dev_name": "a|b&c"}, "aliyun: 'a|b&c' must be 4-32 characters of A-Za-z0-9-_@.:"),
                         ({"ali_reg": "mqtt", "instance_id": "x,y", "tls": 0}, "aliyun: MQTT registration needs TLS"),
                         ({"ali_reg": "mqtt", "instance_id": "x,y"}, "aliyun: 'x,y' must be 1-64 characters")):
        run = board(dict(aliyun_settings(cloud, PK, dn), **extra), max_boots=1)
        assert "ConfigError: " + words in run.out and "attempt 1 failed" not in run.out, run
        assert "POST" not in run.out and "mqtt: connecting" not in run.out, run


def test_refusals_reach_the_device(cloud, board, interp):
    """The cloud's no, as the device logs it: one line naming it, the lockout hint, nothing stored."""
    dn = name(interp, "ali-active")
    s = aliyun_settings(cloud, PK, dn, **QUICK)
    assert board(s).rc == 0
    _refused(board, s, r"aliyun: registration refused: code 6289 \(device is already active\) "
                             r"\(NVS lost\? make nvs-restore\)")  # a new board (NVS lost) with that name
    _refused(board, dict(s, ali_reg="mqtt"), r"aliyun: registration refused: mqtt: broker refused the login "
                                              r"\(CONNACK return code 5\)")
    assert "registration: code 6289: device is already active" in cloud.log()
    _refused(board, aliyun_settings(cloud, PK, name(interp, "ali-nosecret"), prod_secret="WrongSecretWrong1"),
             r"code 6401 \(sign check failed\)")
    _refused(board, aliyun_settings(cloud, MUTE, name(interp, "ali-mute"), "mqtt", reg_timeout_ms=1500),
             r"no registration reply within 1\d{3} ms")


def test_product_rules_over_https(cloud):
    """Every refusal rule of /auth/register/device, over the emulator's real HTTPS server."""
    ctx = ssl.create_default_context(cafile=str(cloud.state / "ca.pem"))

    def post(pk, dn, secret, rnd=None, method="hmacsha256", **override):
        rnd = rnd or "r%d" % time.monotonic_ns()
        form = {"productKey": pk, "deviceName": dn, "random": rnd,
                "sign": emu.registration_sign(secret, pk, dn, rnd, method), "signMethod": method}
        form.update(override)
        conn = http.client.HTTPSConnection("localhost", cloud.ports["https"], context=ctx, timeout=10)
        conn.request("POST", "/auth/register/device", "&".join("%s=%s" % kv for kv in form.items()),
                     {"Content-Type": "application/x-www-form-urlencoded"})
        reply = conn.getresponse()
        assert reply.status == 200
        body = json.loads(reply.read())
        conn.close()
        return body

    secret = cloud.secret("aliyun", PK)
    emu.create_device(str(cloud.state / "devices.json"), PK, "rules-dev1")
    assert post("a1Unknown000", "rules-dev1", secret)["code"] == 6250
    assert post(PK, "rules-dev1", "not-the-secret")["code"] == 6401
    assert post(PK, "never-created", secret)["code"] == 6100  # not pre-registered
    assert post(OFF, "240ac4123456", cloud.secret("aliyun", OFF))["code"] == 6402
    assert post(PK, "rules-dev1", secret, signMethod="hmacsha512")["code"] == 460
    assert post(PK, "x", secret)["code"] == 460  # DeviceName: 4-32 characters
    ok_reply = post(PK, "rules-dev1", secret, rnd="fixed-random-1", method="hmacsha1")
    assert ok_reply["code"] == 200 and ok_reply["message"] == "success"
    assert set(ok_reply["data"]) == {"productKey", "deviceName", "deviceSecret"}
    assert post(PK, "rules-dev1", secret, rnd="fixed-random-1", method="hmacsha1")["code"] == 6403  # replay
    again = post(PK, "rules-dev1", secret)  # not activated yet: a new random registers again, a new secret
    assert again["code"] == 200 and again["data"]["deviceSecret"] != ok_reply["data"]["deviceSecret"]
    log = cloud.log()
    for words in ("code 6250: product not found", "code 6401: sign check failed", "code 6100: device not found",
                  "code 6402: dynamic registration is off", "code 6403: random already used"):
        assert words in log


def _connect(cloud, client_id, username, password, tls=True, wait_push=False):
    """A real MQTT CONNECT to the emulator (paho) -> (CONNACK code, [(topic, payload)] pushed unasked;
    with wait_push, the first one is waited for)."""
    import threading

    import paho.mqtt.client as mqtt

    got, done = [], threading.Event()
    c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
    c.username_pw_set(username, password)
    if tls:
        c.tls_set(ca_certs=str(cloud.state / "ca.pem"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    result = {}

    def on_connect(client, userdata, flags, rc):
        result["rc"] = rc
        if rc or not wait_push:
            done.set()

    def on_message(client, userdata, msg):
        got.append((msg.topic, json.loads(msg.payload)))
        done.set()

    c.on_connect, c.on_message = on_connect, on_message
    c.on_disconnect = lambda *a: done.set()
    c.connect("localhost", cloud.ports["mqtts" if tls else "mqtt"], 30)
    c.loop_start()
    done.wait(10)
    c.disconnect()
    c.loop_stop()
    return result.get("rc"), got


def _reg_connect(cloud, pk, dn, secret, auth="register", rnd=None, tls=True, mode="2"):
    rnd = rnd or "r%d" % time.monotonic_ns()
    cid = "%s.%s|random=%s,authType=%s,securemode=%s,signmethod=hmacsha256|" % (dn, pk, rnd, auth, mode)
    return _connect(cloud, cid, "%s&%s" % (dn, pk), emu.registration_sign(secret, pk, dn, rnd), tls, True)


def test_product_rules_over_mqtt(cloud):
    """The MQTT registration's rules: a refusal is a CONNACK code; the reply is pushed with no SUBSCRIBE."""
    secret, pre = cloud.secret("aliyun", PK), cloud.secret("aliyun", PRE)
    emu.create_device(str(cloud.state / "devices.json"), PK, "mqtt-rules1")
    assert _reg_connect(cloud, PK, "mqtt-rules1", "not-the-secret")[0] == 5
    assert _reg_connect(cloud, PK, "never-created", secret)[0] == 5  # register needs pre-registration
    assert _reg_connect(cloud, PRE, "mqtt-rules2", pre, "regnwl")[0] == 5  # registration-free off
    assert _reg_connect(cloud, OFF, "240ac4123456", cloud.secret("aliyun", OFF))[0] == 5
    assert _reg_connect(cloud, PK, "mqtt-rules1", secret, tls=False)[0] == 5  # TLS only
    assert _reg_connect(cloud, PK, "mqtt-rules1", secret, mode="3")[0] == 5
    rc, pushed = _reg_connect(cloud, PK, "mqtt-rules1", secret, rnd="fixed-random-2")
    assert rc == 0 and [t for t, _ in pushed] == ["/ext/register"], pushed
    assert pushed[0][1]["deviceName"] == "mqtt-rules1" and pushed[0][1]["productKey"] == PK
    assert pushed[0][1]["deviceSecret"] == cloud.devices()["aliyun"][PK + "/mqtt-rules1"]["secret"]
    assert _reg_connect(cloud, PK, "mqtt-rules1", secret, rnd="fixed-random-2")[0] == 5  # replay
    rc, pushed = _reg_connect(cloud, PK, "mqtt-rules3", secret, "regnwl", mode="-2")
    assert rc == 0 and pushed[0][0] == "/ext/regnwl" and set(pushed[0][1]) == {
        "productKey", "deviceName", "clientId", "deviceToken"}, pushed
    # the token logs in; another token does not; a device secret login needs its signature
    token, cid = pushed[0][1]["deviceToken"], pushed[0][1]["clientId"]
    assert _connect(cloud, cid + "|securemode=-2,authType=connwl|", "mqtt-rules3&" + PK, token)[0] == 0
    assert _connect(cloud, cid + "|securemode=-2,authType=connwl|", "mqtt-rules3&" + PK, token[::-1])[0] == 5
    log = cloud.log()
    for words in ("registration: code 6401: sign check failed", "registration: code 6100: device not found",
                  "registration-free (regnwl) is off", "dynamic registration needs TLS", "securemode must be 2 or -2",
                  "code 6403: random already used", "wrong deviceToken"):
        assert words in log, words


def test_emulator_compares_in_constant_time(cloud, monkeypatch):
    """Every signature and token check goes through hmac.compare_digest (platform.same)."""
    from tools.cloud import platform

    calls = []
    real = platform.hmac.compare_digest
    monkeypatch.setattr(platform.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    from tools.cloud.registry import Product

    rules = emu.AliyunPlatform({PK: Product(pid=PK, secret=cloud.secret("aliyun", PK))}, None, None)
    with pytest.raises(emu.Rejected):
        rules._register(PK, "ct-device1", "r1", "hmacsha256", "0" * 64, False, 1)
    assert calls, "the registration signature was not compared with hmac.compare_digest"


# --------------------------------------------------------------------------- hostile servers


def aliyun_hostile(platform_variant, port, ca, interp, tries):
    s = dict(WIFI, platform="aliyun", prod_id="a1Hostile01", prod_secret="HostileProdSecret42", ca={"file": ca},
             dev_name="hostile-" + interp, ali_reg=platform_variant, reg_host="localhost", reg_port=port,
             mqtt_host="localhost", mqtt_port=port, retry_ms=20, retry_max_ms=100, max_tries=tries,
             reg_timeout_ms=1500)
    return s


def reply(body):
    return {"serve": http_serve(ok(body))}


HTTPS_CASES = [
    ("malformed JSON", "aliyun: reply is not a JSON object", reply('{"code": 200, "data": {')),
    ("JSON not an object", "aliyun: reply is not a JSON object", reply("[200]")),
    ("refusal", "aliyun: registration refused: code 6289 (device is already active)",
     reply('{"code": 6289, "message": "device is already active"}')),
    ("code as text", 'aliyun: registration refused: code 200 (success)', reply('{"code": "200", "message": "success"}')),
    ("code 200.0", "aliyun: registration refused: code 200.0", reply('{"code": 200.0, "data": {"deviceSecret": "x"}}')),
    ("no data", "aliyun: reply holds no usable deviceSecret", reply('{"code": 200, "message": "success"}')),
    ("secret not text", "aliyun: reply holds no usable deviceSecret", reply('{"code": 200, "data": {"deviceSecret": 7}}')),
    ("secret a placeholder", "aliyun: reply holds no usable deviceSecret",
     reply('{"code": 200, "data": {"deviceSecret": "YOUR_DEVICE_SECRET"}}')),
    ("secret with a bar", "aliyun: reply holds no usable deviceSecret",
     reply('{"code": 200, "data": {"deviceSecret": "abc|def"}}')),
    ("message of control characters", "code 1 (\\x1b[2J\\x00)",
     reply('{"code": 1, "message": "\\u001b[2J\\u0000"}')),
    ("Content-Length 1 MB", "http: reply body of 1048576 bytes exceeds 4096", {"serve": big_announced}),
    ("1 MB body without Content-Length", "http: reply body too long or cut short", {"serve": stream_forever}),
    ("oversized header", "http: reply headers too long or cut short",
     {"serve": http_serve(ok("{}", extra=b"X-Big: " + b"a" * 3000 + b"\r\n"))}),
    ("garbage status line", "http: malformed status line", {"serve": http_serve(b"SSH-2.0-OpenSSH\r\n\r\n")}),
    ("HTTP 500", "aliyun: HTTP status 500 from localhost", {"serve": http_serve(ok("oops", status="500 Oops"))}),
    ("server certificate from another CA", "not correctly signed by the trusted CA", {"cert": "other-ca", "serve": hang}),
    ("hostname mismatch", "does not match with the expected CN", {"cert": "wrong-name", "serve": hang}),
]


def push(*packets, connack=0, keep_open=False):
    """serve(): read the CONNECT, CONNACK, then the packets (nothing is subscribed: Aliyun pushes)."""
    def serve(srv, conn):
        read_packet(conn)
        conn.sendall(b"\x20\x02\x00" + bytes((connack,)))
        for p in packets:
            conn.sendall(p)
        if keep_open:
            srv.stop.wait(30)
    return serve


def pushed(obj):
    return publish("/ext/register", json.dumps(obj))


GOOD = {"productKey": "a1Hostile01", "deviceSecret": "HostileSecret1"}
CLOSED = "mqtt: the broker closed the connection"
MQTT_CASES = [
    ("refused in the CONNACK", "aliyun: registration refused: mqtt: broker refused the login (CONNACK return code 5)",
     {"serve": push(connack=5)}),
    ("bad credentials CONNACK", "(CONNACK return code 4)", {"serve": push(connack=4)}),
    ("reply on another topic, then closed", CLOSED, {"serve": push(publish("/ext/regnwl", json.dumps(GOOD)))}),
    ("reply not JSON, then closed", CLOSED, {"serve": push(publish("/ext/register", '{"deviceSecret": "x'))}),
    ("oversized remaining length", "mqtt: 100000-byte packet exceeds the 1024-byte limit",
     {"serve": push(b"\x30\xa0\x8d\x06" + b"x" * 4096)}),
    ("reply for another device", "aliyun: reply is for another device (deviceName other-device)",
     {"serve": push(pushed(dict(GOOD, deviceName="other-device")))}),
    ("reply without the secret", "aliyun: reply holds no usable deviceSecret",
     {"serve": push(pushed({"productKey": "a1Hostile01"}))}),
    ("secret too long", "aliyun: reply holds no usable deviceSecret",
     {"serve": push(pushed({"deviceSecret": "s" * 129}))}),
    ("malformed packet", "mqtt: malformed packet", {"serve": push(b"\x30\xff\xff\xff\xff\x01")}),
    ("server certificate from another CA", "not correctly signed by the trusted CA", {"cert": "other-ca", "serve": hang}),
    ("pings only, connection kept open", re.compile(r"no registration reply within 1\d{3} ms"),
     {"serve": push(b"\xd0\x00", keep_open=True)}),  # last: the registration's deadline
]


@pytest.mark.parametrize("variant", ["https", "mqtt"])
def test_hostile_servers(variant, interp, board, pki, tmp_path):
    cases = HTTPS_CASES if variant == "https" else MQTT_CASES
    srv = HostileServer(pki["ctx"], [c for _, _, c in cases])
    try:
        run = board(aliyun_hostile(variant, srv.port, pki["ca"], interp, len(cases)), max_boots=2, timeout=90)
    finally:
        srv.close()
    out = run.out
    assert run.rc == 1 and run.boots == 1, run  # gave up: no reset, no crash loop
    assert srv.served == len(cases), run
    errors = re.findall(r"attempt \d+ failed \((.*?)\); retrying in \d+ ms", out, re.S)
    errors.append(re.search(r"giving up after \d+ attempts; last: (.*)", out).group(1))
    assert len(errors) == len(cases), run
    for (what, words, _), error in zip(cases, errors):
        assert (words.search(error) if isinstance(words, re.Pattern) else words in error), (what, error)
    assert_clean(out, ("HostileSecret1",), where="the board's output")
    assert "registered: stored" not in out and out.count("Traceback") == 1, run
    nvs = run_on_device(interp, tmp_path, "import esp32\nnvs = esp32.NVS('dynreg')\n"
                        "for k in ('dev_secret', 'dev_client'):\n"
                        "    try:\n        nvs.get_blob(k, bytearray(256)); print('STORED', k)\n"
                        "    except OSError:\n        print('ABSENT', k)\n", nvs=tmp_path / "board" / "nvs.bin")
    assert nvs.count("ABSENT") == 2, nvs


# --------------------------------------------------------------------------- fuzzing the new parsers

# The fuzz driver of test_fuzz_parsers.py (fake streams, stores, devices; the outcome as text) plus the
# Aliyun parsers; the same cases then run on the unix port, which must agree.
DRIVER = fz.DRIVER + r'''
from dynreg import aliyun, aliyun_reg


def ali_register(variant, s):
    values = {"prod_id": "pk1", "prod_secret": SECRET, "reg_host": "localhost", "ali_reg": variant}
    if variant == "https":
        return _patched(net, "open_socket", lambda *a, **k: s, lambda: aliyun_reg.register(Store(values), "dev1", True))
    return _patched(mqtt, "login", lambda *a, **k: s, lambda: aliyun_reg.register(Store(values), "dev1", True))


def ali_run(name, args):
    if name == "aliyun_handle":
        dev = Dev(None)
        handled = aliyun.handle(dev, args[0], args[1])
        return handled, dev.properties, [(t, json.loads(m)) for t, m in dev.client.sent]
    s = Stream(args[0])
    try:
        return ali_register(name[len("aliyun_"):].replace("_", "-"), s)
    finally:
        if not s.closed:
            raise AssertionError("registration stream left open")
        if s.pos > MAX_READ:
            raise AssertionError("read %d bytes" % s.pos)


_run_parser = run_parser


def run_parser(name, args):  # outcome() calls it: the Aliyun cases first
    return ali_run(name, args) if name.startswith("aliyun_") else _run_parser(name, args)
'''
D = {"__name__": "aliyun_fuzz_driver"}
exec(compile(DRIVER, "aliyun_fuzz_driver", "exec"), D)
CASES = {}


def check_against(name, ref, *args):
    a = fz.enc(list(args))
    if len(CASES.setdefault(name, [])) < fz.N_CASES:
        CASES[name].append(a)
    out = D["outcome"](name, a)
    assert not out.startswith("BAD"), (name, args, out)
    want = fz.expected(ref, *args)
    assert out == want or (want.startswith("DynregError") and fz._fixed(out) == fz._fixed(want) != out), (
        name, args, out, want)


def ref_text(value, what):
    if (not isinstance(value, str) or not 0 < len(value) <= 128 or any(not 33 <= ord(c) <= 126 or c in "|&"
                                                                       for c in value)
            or fz.ref_is_null(value.encode())):
        raise fz.Refused("aliyun: reply holds no usable " + what)
    return value.encode()


def ref_http_reply(data):
    status, body = fz.ref_http(data)
    if status != 200:
        raise fz.Refused("aliyun: HTTP status %d from localhost" % status)
    r = fz.ref_json_object(body)
    if r is None:
        raise fz.Refused("aliyun: reply is not a JSON object")
    code = r.get("code")
    if type(code) is not int or code != 200:
        raise fz.Refused("aliyun: registration refused: code %s (%s)" % (fz.ref_shown(code), fz.ref_shown(r.get("message"))))
    data = r.get("data")
    return [("dev_secret", ref_text(data.get("deviceSecret") if isinstance(data, dict) else None, "deviceSecret"))]


def ref_push(nwl):
    topic = b"/ext/regnwl" if nwl else b"/ext/register"

    def ref(data):
        pos = 0
        while True:
            kind, body, pos = fz.ref_mqtt_packet(data, pos, 1024)
            if kind == 0x90 and body[-1:] == b"\x80":
                raise fz.Refused("the broker refused the subscription to " + topic.decode())
            r = fz.ref_publish_json(kind, body, topic)
            if r is not None:
                break
        for key, mine in (("productKey", "pk1"), ("deviceName", "dev1")):
            if key in r and r[key] != mine:
                raise fz.Refused("aliyun: reply is for another device (%s %s)" % (key, fz.ref_shown(r[key])))
        if nwl:
            return [("dev_client", ref_text(r.get("clientId"), "clientId")),
                    ("dev_secret", ref_text(r.get("deviceToken"), "deviceToken"))]
        return [("dev_secret", ref_text(r.get("deviceSecret"), "deviceSecret"))]
    return ref


SET, POST_REPLY = b"/sys/pid1/uuid1/thing/service/property/set", b"/sys/pid1/uuid1/thing/event/property/post_reply"


def ref_handle(topic, msg):
    """(handled, properties, replies): a property/set gets one set_reply (200 with object params, else 460)."""
    if topic not in (SET, POST_REPLY):
        return False, {}, []
    m = fz.ref_json_object(msg)
    if m is None or topic == POST_REPLY:
        return True, {}, []
    params = m.get("params")
    code = 200 if isinstance(params, dict) else 460
    answer = {"code": code, "data": {}, "id": m.get("id"), "version": "1.0",
              "message": "success" if code == 200 else "params is not an object"}
    return True, params if code == 200 else {}, [(SET.decode() + "_reply", answer)]


token_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
secret_like = st.one_of(
    token_text, st.sampled_from(["KGQQFFlGinIipW9Xn7xQ5U6d6MokPZD4", "s" * 128, "s" * 129, "", " ", "a|b", "a&b",
                                 "YOUR_DEVICE_SECRET", "\u00e9t\u00e9", "x\ty"]), fz.json_value)
ali_body = st.one_of(
    st.fixed_dictionaries({"code": st.just(200), "data": st.fixed_dictionaries({"deviceSecret": token_text})}),
    st.fixed_dictionaries({"code": st.sampled_from([200, 200, 200, 6289, "200", 200.0, True, None, 460, [200]])},
                          optional={"message": fz.json_value, "data": st.fixed_dictionaries(
                              {"deviceSecret": secret_like}, optional={"productKey": fz.json_value})
                              | st.fixed_dictionaries({}, optional={"deviceSecret": secret_like}) | fz.json_value}),
    fz.json_value).map(fz.dumps).map(str.encode) | st.integers(1, 3000).map(lambda n: b"[" * n)
well_formed = st.builds(lambda status, body: status + b"Content-Length: %d\r\n\r\n" % len(body) + body,
                        st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 403 No\r\n"]),
                        ali_body)
ali_http = st.integers(0, 3).flatmap(lambda i: fz.http_reply if i == 0 else well_formed)
good_push = st.fixed_dictionaries({"productKey": st.just("pk1"), "deviceSecret": token_text, "clientId": token_text,
                                   "deviceToken": token_text}).map(fz.dumps).map(str.encode)
push_payload = good_push | st.fixed_dictionaries({}, optional={
    "productKey": st.sampled_from(["pk1", "pk1", "pk2", None]) | fz.json_value,
    "deviceName": st.sampled_from(["dev1", "dev1", "dev2"]) | fz.json_value,
    "deviceSecret": secret_like, "clientId": secret_like, "deviceToken": secret_like}).map(fz.dumps).map(str.encode) \
    | st.binary(max_size=40) | st.integers(1, 1000).map(lambda n: b"[" * n)
to_device = st.builds(fz.publish, st.sampled_from([b"/ext/register", b"/ext/regnwl"]), push_payload, st.sampled_from([0, 1]))
ali_mqtt = st.lists(st.integers(0, 5).flatmap(lambda i: (
    to_device if i < 3 else st.one_of(
    st.builds(fz.publish, st.sampled_from([b"/ext/registerx", b"", b"/ext/regnw"]), push_payload, st.just(0)),
    st.sampled_from([b"\x90\x03\x00\x01\x00", b"\x90\x03\x00\x01\x80", b"\xd0\x00", b"\x90\x00"]),
    fz.mqtt_stream))), min_size=1, max_size=4).map(b"".join)
alink_msg = st.one_of(
    st.fixed_dictionaries({}, optional={"id": fz.json_value, "params": fz.json_value, "method": fz.json_value,
                                        "code": fz.json_value}).map(fz.dumps),
    fz.json_value.map(fz.dumps), st.text(max_size=30)).map(str.encode) | st.binary(max_size=30)


@fz.FUZZ
@given(ali_http)
@example(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(REPLY), REPLY.encode()))
@example(b'HTTP/1.1 200 OK\r\n\r\n{"code": 200, "data": {"deviceSecret": "a&b"}}')
@example(b'HTTP/1.1 200 OK\r\n\r\n{"code": 200, "data": {"deviceSecret": "a|b"}}')
@example(b'HTTP/1.1 200 OK\r\n\r\n{"code": 200, "data": {"deviceSecret": "%s"}}' % (b"s" * 128))  # the cap
@example(b'HTTP/1.1 200 OK\r\n\r\n{"code": 200, "data": {"deviceSecret": "%s"}}' % (b"s" * 129))
@example(b'HTTP/1.1 200 OK\r\n\r\n{"code": 200.0, "data": {"deviceSecret": "abc"}}')
@example(b'HTTP/1.1 200 OK\r\n\r\n{"code": true, "data": {"deviceSecret": "abc"}}')
def test_fuzz_https_registration(data):
    check_against("aliyun_https", ref_http_reply, data)


@fz.FUZZ
@given(data=ali_mqtt)
@example(data=fz.publish(b"/ext/register", b'{"productKey": "pk1", "deviceName": "dev1", "deviceSecret": "abc"}'))
@example(data=fz.publish(b"/ext/register", b'{"deviceSecret": "a&b"}'))
@example(data=fz.publish(b"/ext/register", b'{"deviceName": "dev2", "deviceSecret": "abc"}'))
@example(data=fz.publish(b"/ext/register", b'{"productKey": null, "deviceSecret": "abc"}'))
@example(data=fz.publish(b"/ext/regnwl", b'{"clientId": "c1", "deviceToken": "t1"}'))
@example(data=fz.publish(b"/ext/regnwl", b'{"clientId": "c|1", "deviceToken": "t1"}'))
@example(data=fz.publish(b"/ext/regnwl", b'{"clientId": "c1", "deviceToken": "YOUR_DEVICE_SECRET"}'))
@pytest.mark.parametrize("nwl", [False, True], ids=["register", "regnwl"])
def test_fuzz_mqtt_registration(nwl, data):
    check_against("aliyun_mqtt_nwl" if nwl else "aliyun_mqtt", ref_push(nwl), data)


@fz.FUZZ
@given(st.sampled_from([SET, SET, POST_REPLY, SET + b"x"]), alink_msg)
@example(SET, b'{"id": "1", "params": {"led": 1}}')
@example(SET, b"[" * 3000)
def test_fuzz_alink_handle(topic, msg):
    check_against("aliyun_handle", ref_handle, topic, msg)


FUZZ_TESTS = {"aliyun_https": test_fuzz_https_registration, "aliyun_handle": test_fuzz_alink_handle,
              "aliyun_mqtt": lambda: test_fuzz_mqtt_registration(False),
              "aliyun_mqtt_nwl": lambda: test_fuzz_mqtt_registration(True)}


def test_fuzz_unix_port_same_outcomes(tmp_path):
    for case, t in FUZZ_TESTS.items():  # when run alone: generate the cases first (deterministic)
        if not CASES.get(case):
            t()
    assert sorted(CASES) == ["aliyun_handle", "aliyun_https", "aliyun_mqtt", "aliyun_mqtt_nwl"]
    assert all(len(v) >= min(200, fz.N_CASES) for v in CASES.values()), {k: len(v) for k, v in CASES.items()}
    cases = [(n, a) for n in sorted(CASES) for a in CASES[n]]
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    out = run_on_device("micropython", tmp_path, DRIVER + fz.DEVICE_MAIN % str(path), timeout=240)
    assert "FUZZ-DONE %d" % len(cases) in out, out[-3000:]
    got = [json.loads(line[4:]) for line in out.splitlines() if line.startswith("OUT ")]
    differ, lenient = [], []
    for (n, a), (n2, have) in zip(cases, got):
        want = D["outcome"](n, a)
        assert n == n2 and not have.startswith("BAD"), (n, a, have)
        if have == want or (have.startswith("DynregError") and fz._fixed(have) == fz._fixed(want) != have):
            continue
        if have.startswith("ok") and want.startswith("DynregError"):
            lenient.append((n, a, want, have))  # MicroPython's json accepts what CPython's refuses
        else:
            differ.append((n, a, want, have))
    assert not differ, "unix port and CPython disagree:\n" + "\n".join(map(repr, differ[:10]))
    assert len(lenient) <= len(cases) // 20, lenient[:10]


# --------------------------------------------------------------------------- the vendor's SDK


@pytest.fixture(scope="module")
def sdk_cloud(tmp_path_factory):
    """An emulator whose certificate also names the SDK's HTTPS registration host."""
    from host_tests.conftest import start_cloud

    state = tmp_path_factory.mktemp("aliyun-sdk-cloud")
    emulator = start_cloud(state, "--cert-name", "iot-auth.cn-shanghai.aliyuncs.com")
    yield state, emulator.ports
    assert emulator.stop() == 0
    assert "Traceback" not in (state / "cloud.log").read_text()


@pytest.mark.parametrize("variant", ["https", "register", "regnwl"])
def test_official_sdk_registers_and_logs_in(sdk_cloud, variant):
    """aliyun-iot-linkkit 1.2.13 as published (host_tests/aliyun_sdk.py: only hosts, ports and CA redirected)
    registers, logs in with what it got and has its property post answered."""
    import subprocess
    import sys

    state, ports = sdk_cloud
    dn = "sdk-%s-01" % variant
    emu.create_device(str(state / "devices.json"), PK, dn)
    spec = {"pk": PK, "ps": PS, "dn": dn, "region": "cn-shanghai", "variant": variant, "https": ports["https"],
            "mqtts": ports["mqtts"], "ca": (state / "ca.pem").read_text()}
    run = subprocess.run([sys.executable, "-m", "host_tests.aliyun_sdk", json.dumps(spec)], cwd=REPO,
                         capture_output=True, text=True, timeout=90)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert re.search(r"sdk: registered over %s.*rc 0" % ("https" if variant == "https" else "mqtt"), out), out
    assert "sdk: logged in, rc 0" in out and "sdk: /sys/%s/%s/thing/event/property/post_reply 200" % (PK, dn) in out
    record = json.loads((state / "devices.json").read_text())["aliyun"]["%s/%s" % (PK, dn)]
    assert record["activated"] and record["registrations"] == 1 and record["logins"] == 1, record
    log = (state / "cloud.log").read_text()
    assert "mqtt login %s/%s ok (aliyun%s; device activated)" % (PK, dn, ", connwl" if variant == "regnwl" else "") in log
    issued = record.get("secret") or record["token"]
    assert_clean(out + log, (issued, PS), where="the SDK's output and the emulator's log")
