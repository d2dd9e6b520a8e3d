"""The cloud emulator's UCloud and Protco platforms (registration over MQTT) and its console login,
driven over raw MQTT sockets like a device would."""

import itertools
import json
import struct
import time
from types import SimpleNamespace

import pytest

from host_tests.conftest import REPO, start_cloud
from host_tests.secrets_scan import assert_clean
from test_cloud_tencent import Mqtt, _s, registered
from tools.cloud.protco import sign
from tools.cloud.registry import load_registry
from tools.cloud.state import read_console_password

REGISTRY = json.load(open(f"{REPO}/tools/cloud/registry.json", encoding="utf-8"))
SECRET = {pid: p["secret"] for platform in ("ucloud", "protco") for pid, p in REGISTRY[platform].items()}
CONSOLE = REGISTRY["console"]["username"]
UC, UC_WL, UC_OFF, UC_NUM, UC_RC7, UC_MUTE, UC_OTHER = REGISTRY["ucloud"]
PR, PR_ALT, PR_OFF, PR_NOCMD, PR_RES, PR_MUTE, PR_OTHER = REGISTRY["protco"]
PROBE_DELAY_MS = 100


# -- host-side device helpers ----------------------------------------------------------------

def collect(client, count, timeout=3.0):
    """PUBLISH payloads [(topic, bytes)] received until count arrived or timeout passed."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and (left := deadline - time.monotonic()) > 0:
        got += client.messages(min(left, 0.05))
    return got


def exchange(client, reply_topic, request_topic, request, wait_suback=False, count=1, timeout=3.0):
    """Subscribe and publish the request: back to back like the firmware (one round trip), or
    waiting for the SUBACK first like the C SDK (two). Returns the JSON replies."""
    if wait_suback:
        assert client.subscribe(reply_topic) == 0
    else:
        client.pid += 1
        client._send(0x82, struct.pack("!H", client.pid) + _s(reply_topic) + b"\x00")
    client.publish(request_topic, request if isinstance(request, bytes) else json.dumps(request).encode())
    return [json.loads(data) for _, data in collect(client, count, timeout)]


def ucloud_register(cloud, psn, dsn, request=None, **kw):
    """Registration login + request; returns the replies (asserting the CONNECT was accepted)."""
    client = Mqtt(cloud.ports)
    assert client.connect(f"{psn}.{dsn}", f"{psn}|{dsn}|2", SECRET[psn]) == 0
    base = f"/$system/{psn}/{dsn}/password"
    try:
        return exchange(client, base + "_reply", base, {"RequestID": "42"} if request is None else request, **kw)
    finally:
        client.close()


def ucloud_password(cloud, psn, dsn):
    (reply,) = ucloud_register(cloud, psn, dsn)
    assert reply["RetCode"] == "0" and reply["RequestID"] == "42", reply
    return reply["Password"]


def ucloud_login(cloud, psn, dsn, password):
    client = Mqtt(cloud.ports)
    return client, client.connect(f"{psn}.{dsn}", f"{psn}|{dsn}|1", password)


# a registration signature (pid, ts) belongs to the first device id registered with it: each
# CONNECT here signs a ts of its own, within the emulator's window (600 s)
_ts = itertools.count()  # makes each login's ts distinct (a signature is used once), whenever the test runs


def protco_connect(cloud, client_id, who, key, method="hmacSha256", ts=None):
    """A signed Protco CONNECT; returns (client, CONNACK code)."""
    ts = int(time.time()) - 500 + next(_ts) if ts is None else ts
    client = Mqtt(cloud.ports)
    return client, client.connect(client_id, f"{who}|signMethod={method},ts={ts}", sign(key, who, ts, method))


def protco_register(cloud, pid, unique, data=None, request=None, **kw):
    """Registration login + request; returns the replies (asserting the CONNECT was accepted)."""
    client, rc = protco_connect(cloud, f"register_{pid}_{unique}", pid, SECRET[pid])
    assert rc == 0
    if request is None:
        request = {"id": "m-1", "ts": int(time.time()), "code": "register", "ack": 1, "data": data or {}}
    base = f"register/v2/{pid}/{unique}/register"
    try:
        return exchange(client, base + "_response", base, request, **kw)
    finally:
        client.close()


def protco_registered(cloud, pid, unique, data=None):
    (reply,) = protco_register(cloud, pid, unique, data)
    assert reply["res"] == 0 and reply["msg"] == "success" and reply["id"] == "m-1", reply
    assert reply["code"] == "register" and abs(reply["ts"] - time.time()) < 5
    return reply["data"]


def protco_login(cloud, uuid, secret, **kw):
    return protco_connect(cloud, f"rlink_{uuid}_V2", uuid, secret, **kw)


def console(cloud, password=None):
    """A console login over plain TCP with the password the emulator made for its state directory."""
    client = Mqtt(cloud.ports)
    return client, client.connect("console-1", CONSOLE, password or read_console_password(cloud.state))


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    state = tmp_path_factory.mktemp("cloud")
    emu = start_cloud(state, "--probe-delay-ms", str(PROBE_DELAY_MS))
    emulator = SimpleNamespace(ports=emu.ports, state=state, records=lambda platform: json.loads(
        (state / "devices.json").read_text()).get(platform, {}), log=lambda: (state / "cloud.log").read_text())
    yield emulator
    assert emu.stop() == 0
    log = emulator.log()
    issued = [r["secret"] for p in ("ucloud", "protco") for r in emulator.records(p).values()]
    public = set(SECRET) | {k for p in ("ucloud", "protco") for k in emulator.records(p)}
    assert_clean(log, list(SECRET.values()) + [read_console_password(state)] + issued, public, derived=True,
                 where="the emulator's log")
    assert "Traceback" not in log


def wait_for(check, timeout=3.0):
    """Poll check() until it is true (the emulator writes state right after it answers)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# -- UCloud -----------------------------------------------------------------------------------

def test_ucloud_register_login_and_activation(cloud):
    password = ucloud_password(cloud, UC, "dev-0001")
    assert len(password) == 16 and password.isalnum()
    record = cloud.records("ucloud")[f"{UC}/dev-0001"]
    assert record["activated"] is False and record["registrations"] == 1 and record["round_trips"] == 2
    assert f"cloud: ucloud registration {UC}/dev-0001 ok (2 round trips)" in cloud.log()

    assert ucloud_login(cloud, UC, "dev-0001", "x" * 16)[1] == 5
    client, rc = ucloud_login(cloud, UC, "dev-0001", password)
    assert rc == 0
    assert client.subscribe(f"/{UC}/dev-0001/set") == 0
    client.publish(f"/{UC}/dev-0001/upload", b'{"temp":1}')
    assert client.ping()
    client.close()
    assert cloud.records("ucloud")[f"{UC}/dev-0001"]["activated"] is True

    (reply,) = ucloud_register(cloud, UC, "dev-0001", {"RequestID": 7})
    assert reply == {"RetCode": "1", "RequestID": 7, "Message": "device already activated"}


def test_ucloud_reregistration_before_activation(cloud):
    first = ucloud_password(cloud, UC, "dev-0002")
    second = ucloud_password(cloud, UC, "dev-0002")
    assert first != second
    assert ucloud_login(cloud, UC, "dev-0002", first)[1] == 5
    client, rc = ucloud_login(cloud, UC, "dev-0002", second)
    assert rc == 0
    client.close()
    assert cloud.records("ucloud")[f"{UC}/dev-0002"]["registrations"] == 2


@pytest.mark.parametrize("wait_suback, trips", [(False, 2), (True, 3)])
def test_round_trips_counted(cloud, wait_suback, trips):
    dsn = f"rt-{trips}"
    (reply,) = ucloud_register(cloud, UC, dsn, wait_suback=wait_suback)
    assert reply["RetCode"] == "0"
    assert cloud.records("ucloud")[f"{UC}/{dsn}"]["round_trips"] == trips
    assert f"ucloud registration {UC}/{dsn} ok ({trips} round trips)" in cloud.log()

    unique = f"rt{trips}"
    (reply,) = protco_register(cloud, PR, unique, wait_suback=wait_suback)
    assert reply["res"] == 0
    assert cloud.records("protco")[f"{PR}/{unique}"]["round_trips"] == trips


def test_http_registration_is_one_round_trip(cloud):
    registered(cloud.ports, "SIMPSK0001", "rt-http-1")
    assert cloud.records("tencent")["SIMPSK0001/rt-http-1"]["round_trips"] == 1


def test_kept_session_forgets_the_registration(cloud):
    """A non-clean CONNECT gets amqtt's stored session back; our login state must not come with it."""
    client = Mqtt(cloud.ports)
    assert client.connect(f"{UC}.kept-0001", f"{UC}|kept-0001|2", SECRET[UC], clean=False) == 0
    base = f"/$system/{UC}/kept-0001/password"
    (reply,) = exchange(client, base + "_reply", base, {"RequestID": "k"})
    client.close()
    device = Mqtt(cloud.ports)
    assert device.connect(f"{UC}.kept-0001", f"{UC}|kept-0001|1", reply["Password"], clean=False) == 0
    assert device.subscribe(f"/{UC}/kept-0001/set") == 0
    assert device.subscribe(base + "_reply") == 0x80
    device.close()


def test_ucloud_connect_refusals(cloud):
    def connect(client_id, username, password):
        return Mqtt(cloud.ports).connect(client_id, username, password)

    assert connect(f"{UC}.dev-9", f"{UC}|dev-9|2", "w" * 16) == 5               # wrong product secret
    assert connect(f"{UC}.dev-9", f"{UC}|dev-9|2", SECRET[UC_WL]) == 5          # another product's secret
    assert connect("nosuchproduct000.dev-9", "nosuchproduct000|dev-9|2", SECRET[UC]) == 5
    assert connect(f"{UC}.other", f"{UC}|dev-9|2", SECRET[UC]) == 5             # client id mismatch
    assert connect(f"{UC}.abc", f"{UC}|abc|2", SECRET[UC]) == 5                 # DeviceSN too short
    assert connect(f"{UC}.a/b+c", f"{UC}|a/b+c|2", SECRET[UC]) == 5             # characters outside the set
    assert connect(f"{UC_OFF}.dev-9", f"{UC_OFF}|dev-9|2", SECRET[UC_OFF]) == 5  # dynamic registration off
    assert connect(f"{UC_WL}.dev-9", f"{UC_WL}|dev-9|2", SECRET[UC_WL]) == 5    # not on the whitelist
    assert ucloud_login(cloud, UC, "never-registered", "x" * 16)[1] == 5
    assert ucloud_password(cloud, UC_WL, "wl-dev-0001")
    assert "not on the product's pre-authentication whitelist" in cloud.log()


def test_ucloud_registration_session_is_confined(cloud):
    client = Mqtt(cloud.ports)
    assert client.connect(f"{UC}.conf-1", f"{UC}|conf-1|2", SECRET[UC]) == 0
    for refused in (f"/{UC}/conf-1/set", "#", f"/$system/{UC}/conf-2/password_reply", "/$system/#"):
        assert client.subscribe(refused) == 0x80, refused
    assert client.subscribe(f"/$system/{UC}/conf-1/password_reply") == 0
    client.publish(f"/{UC}/conf-1/upload", b"{}")
    client.publish(f"/$system/{UC}/conf-2/password", b'{"RequestID":"1"}')
    assert collect(client, 1, 0.3) == [] and client.ping()
    client.close()
    assert f"{UC}/conf-2" not in cloud.records("ucloud")


def test_ucloud_bad_requests(cloud):
    (reply,) = ucloud_register(cloud, UC, "bad-0001", b"not json")
    assert reply["RetCode"] == "2" and reply["RequestID"] is None and reply["Message"]
    (reply,) = ucloud_register(cloud, UC, "bad-0001", {"RequestId": "1"})
    assert reply["RetCode"] == "2" and "RequestID" in reply["Message"]
    assert f"{UC}/bad-0001" not in cloud.records("ucloud")


def test_ucloud_test_knobs(cloud):
    (reply,) = ucloud_register(cloud, UC_NUM, "knob-0001")
    assert reply["RetCode"] == 0 and len(reply["Password"]) == 16
    assert ucloud_login(cloud, UC_NUM, "knob-0001", reply["Password"])[1] == 0

    (reply,) = ucloud_register(cloud, UC_RC7, "knob-0001")
    assert reply["RetCode"] == "7" and reply["RequestID"] == "42" and "Password" not in reply

    assert ucloud_register(cloud, UC_MUTE, "knob-0001", timeout=0.5) == []

    decoy, reply = ucloud_register(cloud, UC_OTHER, "knob-0001", count=2)
    assert decoy["RequestID"] != "42" and decoy["RetCode"] != "0"
    assert reply["RequestID"] == "42" and reply["RetCode"] == "0" and reply["Password"]


# -- Protco -----------------------------------------------------------------------------------

def test_protco_signature_vector():
    """docs/platforms/protco.md "Test vector"."""
    assert sign("ef958e891ffa4c72ba6c64e73c5dd422", "rn014ebe0C20E122", 1662544613, "hmacSha1") == \
        "ca4ff69d9408da837ed361bd5458b9c1f92c8cbb"


def test_protco_register_login_and_commands(cloud):
    data = protco_registered(cloud, PR, "240ac4000001", {"barcode": "BC-1"})
    assert data["pid"] == PR and data["mac"] == ""
    assert data["uuid"].startswith("rn01") and len(data["uuid"]) == 20
    assert len(data["secret"]) == 32 and int(data["secret"], 16) >= 0
    record = cloud.records("protco")[f"{PR}/240ac4000001"]
    assert record["uuid"] == data["uuid"] and record["barcode"] == "BC-1" and record["round_trips"] == 2
    assert f"cloud: protco registration {PR}/240ac4000001 ok (2 round trips)" in cloud.log()

    watcher, rc = console(cloud)
    assert rc == 0 and watcher.subscribe("rlink/#") == 0
    base = f"rlink/v2/{PR}/{data['uuid']}/"
    client, rc = protco_login(cloud, data["uuid"], data["secret"])
    assert rc == 0
    assert client.subscribe(base + "issue") == 0 and client.subscribe(base + "report_response") == 0
    report = {"id": "r1", "ts": int(time.time()), "code": "property_report", "data": {"properties": {"t": 1}},
              "ack": 1}
    client.publish(base + "report", json.dumps(report).encode())
    got = collect(client, 3)
    assert [t for t, _ in got] == [base + "report_response", base + "issue", base + "issue"]
    assert json.loads(got[0][1])["id"] == "r1" and json.loads(got[0][1])["res"] == 0
    commands = [json.loads(d) for _, d in got[1:]]
    assert [c["code"] for c in commands] == ["ping", "property_set"]
    assert commands[1]["data"] == {"properties": {"led": 1}}
    for command in commands:
        client.publish(base + "issue_response", json.dumps(
            {"id": command["id"], "ts": int(time.time()), "code": command["code"], "res": 0, "msg": "success",
             "data": {}}).encode())
    wait_for(lambda: cloud.records("protco")[f"{PR}/240ac4000001"].get("commands_answered") == 2)
    report["ack"] = 0
    client.publish(base + "report", json.dumps(report).encode())
    assert collect(client, 1, 0.3) == []  # commands only after the first report of a session
    seen = [t[len(base):] for t, _ in collect(watcher, 7, 1)]
    assert seen == ["report", "report_response", "issue", "issue", "issue_response", "issue_response", "report"]
    client.close()
    watcher.close()
    record = cloud.records("protco")[f"{PR}/240ac4000001"]
    assert record["activated"] is True and record["logins"] == 1
    assert f"protco {PR}/{data['uuid']} answered property_set: res 0" in cloud.log()


def test_protco_no_probe_commands(cloud):
    data = protco_registered(cloud, PR_NOCMD, "nocmd1")
    client, rc = protco_login(cloud, data["uuid"], data["secret"])
    assert rc == 0
    base = f"rlink/v2/{PR_NOCMD}/{data['uuid']}/"
    assert client.subscribe(base + "issue") == 0
    client.publish(base + "report", b'{"id":"1","ts":1,"code":"property_report","data":{"properties":{}},"ack":0}')
    assert collect(client, 1, 0.3) == []
    client.close()


def test_protco_login_checks(cloud):
    data = protco_registered(cloud, PR, "login1")
    uuid, secret = data["uuid"], data["secret"]
    assert protco_login(cloud, uuid, "0" * 32)[1] == 5
    assert protco_login(cloud, uuid, secret, ts=int(time.time()) - 3600)[1] == 5  # outside --ts-window
    assert protco_login(cloud, "rn01ffffffffffffffff", secret)[1] == 5
    client, rc = protco_connect(cloud, f"rlink_{uuid}_V3", uuid, secret)
    assert rc == 5
    client = Mqtt(cloud.ports)
    ts = int(time.time())
    assert client.connect(f"rlink_{uuid}_V2", f"{uuid}|signMethod=md5,ts={ts}", sign(secret, uuid, ts)) == 5
    for method in ("hmacSha1", "HMACSHA256"):
        client, rc = protco_login(cloud, uuid, secret, method=method)
        assert rc == 0, method
        client.close()
    assert protco_connect(cloud, f"register_{PR}_a_b", PR, SECRET[PR])[1] == 5        # "_" in unique
    assert protco_connect(cloud, f"register_{PR}_x1", PR, SECRET[PR_ALT])[1] == 5      # wrong secret
    assert protco_connect(cloud, "register_nosuchpid_x1", "nosuchpid", SECRET[PR])[1] == 5
    assert protco_connect(cloud, f"register_{PR}_x1", PR, SECRET[PR], ts=int(time.time()) + 3600)[1] == 5


def test_protco_repeated_registration(cloud):
    first = protco_registered(cloud, PR, "again1")
    second = protco_registered(cloud, PR, "again1")
    assert first["uuid"] == second["uuid"] and first["secret"] != second["secret"]
    assert protco_login(cloud, first["uuid"], first["secret"])[1] == 5
    client, rc = protco_login(cloud, second["uuid"], second["secret"])
    assert rc == 0
    client.close()
    (reply,) = protco_register(cloud, PR, "again1")
    assert reply["res"] == 17032 and reply["id"] == "m-1" and reply["code"] == "register"


def test_protco_replace_pid(cloud):
    data = protco_registered(cloud, PR, "move1", {"replacePid": PR_ALT, "secret": SECRET[PR_ALT]})
    assert data["pid"] == PR_ALT
    client, rc = protco_login(cloud, data["uuid"], data["secret"])
    assert rc == 0
    assert client.subscribe(f"rlink/v2/{PR_ALT}/{data['uuid']}/issue") == 0
    assert client.subscribe(f"rlink/v2/{PR}/{data['uuid']}/issue") == 0x80
    client.close()
    for extra, res in (({"replacePid": "nosuchpid"}, 1005), ({"replacePid": PR_ALT}, 1002),
                       ({"replacePid": PR_ALT, "secret": SECRET[PR]}, 1002)):
        (reply,) = protco_register(cloud, PR, "move2", extra)
        assert reply["res"] == res, extra
    assert f"{PR}/move2" not in cloud.records("protco")


def test_protco_bad_requests(cloud):
    (reply,) = protco_register(cloud, PR, "bad1", request=b"{not json")
    assert reply["res"] == 1003 and reply["id"] is None
    (reply,) = protco_register(cloud, PR, "bad1", request={"ts": 1, "code": "register", "data": {}})
    assert reply["res"] == 1002 and reply["id"] is None
    (reply,) = protco_register(cloud, PR, "bad1", request={"id": "b", "ts": 1, "code": "hello", "data": {}})
    assert reply["res"] == 1002 and reply["id"] == "b"
    (reply,) = protco_register(cloud, PR, "bad1", request={"id": "c", "code": "register", "data": "x"})
    assert reply["res"] == 1002
    (reply,) = protco_register(cloud, PR_OFF, "bad1")
    assert reply["res"] == 1006
    assert f"{PR}/bad1" not in cloud.records("protco")


def test_protco_test_knobs(cloud):
    (reply,) = protco_register(cloud, PR_RES, "knob1")
    assert reply["res"] == 4242 and reply["id"] == "m-1"
    assert protco_register(cloud, PR_MUTE, "knob1", timeout=0.5) == []
    decoy, reply = protco_register(cloud, PR_OTHER, "knob1", count=2)
    assert decoy["id"] != "m-1" and decoy["res"] != 0
    assert reply["id"] == "m-1" and reply["res"] == 0 and reply["data"]["secret"]


def test_protco_registration_session_is_confined(cloud):
    client, rc = protco_connect(cloud, f"register_{PR}_conf1", PR, SECRET[PR])
    assert rc == 0
    for refused in (f"register/v2/{PR}/conf2/register_response", "register/#", f"rlink/v2/{PR}/conf1/issue"):
        assert client.subscribe(refused) == 0x80, refused
    client.publish(f"register/v2/{PR}/conf2/register", b'{"id":"1","code":"register","data":{}}')
    assert client.ping()
    client.close()
    assert f"{PR}/conf2" not in cloud.records("protco")


# -- console ----------------------------------------------------------------------------------

def test_console_watches_and_commands(cloud):
    assert console(cloud, "wrong-password")[1] == 5
    watcher, rc = console(cloud)
    assert rc == 0 and watcher.subscribe("#") == 0
    password = ucloud_password(cloud, UC, "con-0001")
    device, rc = ucloud_login(cloud, UC, "con-0001", password)
    assert rc == 0 and device.subscribe(f"/{UC}/con-0001/set") == 0
    device.publish(f"/{UC}/con-0001/upload", b'{"t":2}')
    assert (f"/{UC}/con-0001/upload", b'{"t":2}') in collect(watcher, 3, 1)
    watcher.publish(f"/{UC}/con-0001/set", b'{"led":0}')
    assert collect(device, 1) == [(f"/{UC}/con-0001/set", b'{"led":0}')]
    device.close()
    watcher.close()


# -- registry file ----------------------------------------------------------------------------

@pytest.mark.parametrize("content, complaint", [
    ({"nosuch": {}}, "unknown platform"),
    ({"protco": {"p1": {"secret": "s" * 32, "retcode": "7"}}}, "unknown keys"),
    ({"protco": {"p1": {"secret": "s" * 32, "res": "7"}}}, "res an integer"),
    ({"ucloud": {"p1": {"secret": "s" * 16, "reply": "later"}}}, "reply must be"),
    ({"ucloud": {"p1": {"secret": "s" * 16, "whitelist": "dev1"}}}, "whitelist must be"),
    ({"ucloud": {"p|1": {"secret": "s" * 16}}}, "product id"),
    ({"console": {"username": ""}}, "console must be"),
    ({"console": {"username": "c", "password": "fixed-in-the-repository"}}, "console takes no password"),
])
def test_registry_rejects_malformed(tmp_path, content, complaint):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=complaint):
        load_registry(path)
