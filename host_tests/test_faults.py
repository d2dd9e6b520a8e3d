"""Faults: power cuts at every step of the boot flow, network failures, a rejected secret.

Power cuts come from the simulated board (the sim runner's --fault: nvs_write:N, nvs_commit:N) or from
host_tests/faultproxy.py, a byte-level proxy between board and emulator that cuts the board's power
(SIGUSR1 to the runner: SIGKILL of the running boot) at an exact point of a connection. Every case must
end registered and logged in, with the device's NVS and the emulator's devices.json agreeing on the
identity. Network faults must lead to capped, jittered exponential back-off and bounded waits.
Every run's output and the emulator's log are scanned for every secret in play.

Counts go to build/robustness/faults.json.
"""

import base64
import hashlib
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import time

import pytest

from host_tests.conftest import INTERPS, PYTHON, REPO, SIM_RUNNER, aliyun_settings, mqtt_settings, tencent_settings
from host_tests.faultproxy import CONNACK_UNAVAILABLE, HTTP_503, FaultProxy
from host_tests.mqttproxy import DOWN, UP, MqttProxy
from host_tests.secrets_scan import assert_clean, scan
from tools.cloud import registry as cloud_registry
from tools.cloud import tencent as cloud_tencent
from tools.factory import nvsformat

RESULTS = REPO / "build" / "robustness"
RETRY = {"retry_ms": 50, "retry_max_ms": 400}
CASES = []  # dicts: name, interp, faults (injected events), passed
LEAKS = []  # what the secret scan found in any run's output or emulator log (the test fails too)



@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if not CASES:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    passed = [c for c in CASES if c["passed"]]
    data = {"cases": len(CASES), "cases_passed": len(passed),
            "faults_injected": sum(c["faults"] for c in CASES),
            "secrets_leaked": len(LEAKS), "by_case": CASES}
    (RESULTS / "faults.json").write_text(json.dumps(data, indent=1))
    print("\nfaults: %d injected over %d cases, %d passed, %d secrets leaked (build/robustness/faults.json)"
          % (data["faults_injected"], data["cases"], data["cases_passed"], data["secrets_leaked"]))


def record(name, interp, faults):
    """Note a case as started; the returned dict is marked passed at the end of the test."""
    case = {"name": name, "interp": interp, "faults": faults, "passed": False}
    CASES.append(case)
    return case


class Board:
    """One board (state directory) run by the sim runner against the session's emulator."""

    def __init__(self, cloud, tmp_path, interp, settings):
        self.cloud, self.interp, self.settings = cloud, interp, settings
        self.dir = tmp_path / "board"
        self.proc = None

    def power_cut(self):
        """Pull the plug of the running boot (the runner kills it and boots again)."""
        os.kill(self.proc.pid, signal.SIGUSR1)

    def run(self, fresh=True, fault=None, cut_on=None, max_boots=5, timeout=90):
        path = self.dir.parent / "settings.json"
        path.write_text(json.dumps(self.settings))
        args = [PYTHON, str(SIM_RUNNER), "--settings", str(path), "--interp", self.interp,
                "--state", str(self.dir), "--cloud-state", str(self.cloud.state), "--max-boots", str(max_boots)]
        if fresh:
            args.append("--fresh")
        if fault:
            args += ["--fault", fault]
        if cut_on:
            args += ["--cut-on", cut_on]
        log_before = len(self.cloud.log())
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError("run not bounded by %s s:\n%s" % (timeout, out))
        self.rc, self.out = self.proc.returncode, out
        self.cloud_log = self.cloud.log()[log_before:]
        self.check_no_secrets()
        return self

    def nvs(self):
        """The board's NVS namespace "dynreg" as {key: value}."""
        content = nvsformat.parse((self.dir / "nvs.bin").read_bytes())
        return {k: v for k, (_, v) in content.get("dynreg", {}).items()}

    def secrets(self):
        found = set(self.cloud.secrets())
        found |= {str(v) for k, v in self.settings.items() if "secret" in k or "pass" in k}
        if (self.dir / "nvs.bin").exists():
            nvs = self.nvs()
            for key in ("dev_secret", "prod_secret", "wifi_pass"):
                if isinstance(nvs.get(key), bytes):
                    found.add(nvs[key].decode())
            if isinstance(nvs.get("dev_key"), bytes):  # the client key, as DER and as PEM base64 would show
                found.add(nvs["dev_key"].hex()[40:80])
                found.add(base64.b64encode(nvs["dev_key"]).decode()[20:60])
        return {s for s in found if s}

    def check_no_secrets(self):
        secrets = self.secrets()
        public = self.cloud.public() | {str(self.settings.get(k)) for k in ("prod_id", "dev_name")}
        found = (scan(self.out, secrets, public, derived=True, where="the board's output")
                 + scan(self.cloud_log, secrets, public, derived=True, where="the emulator's log"))
        LEAKS.extend(found)
        assert not found, "secret leak:\n" + "\n".join(found[:10])

    def backoffs(self):
        """[(attempt, wait ms)] from the board's "retrying in N ms" lines."""
        return [(int(a), int(w)) for a, w in re.findall(r"attempt (\d+) failed .*; retrying in (\d+) ms", self.out)]


def record_of(cloud, platform, key):
    return cloud.devices().get(platform, {}).get(key)


def assert_consistent(board, platform, key):
    """Registered and logged in; the device's NVS and the emulator's record hold the same identity."""
    assert board.rc == 0, board.out
    assert "dynreg: mqtt: logged in" in board.out, board.out
    rec = record_of(board.cloud, platform, key)
    assert rec and rec["activated"] and rec["logins"] >= 1, rec
    nvs = board.nvs()
    if platform == "tencent" and "cert_fp" in rec:
        assert hashlib.sha256(nvs["dev_cert"]).hexdigest() == rec["cert_fp"]
        assert nvs.get("dev_key")
    elif platform == "tencent":
        assert nvs["dev_secret"].decode() == rec["psk"]
    elif platform == "aliyun" and "token" in rec:  # registration-free: the token and the clientId
        assert nvs["dev_secret"].decode() == rec["token"] and nvs["dev_client"].decode() == rec["client_id"]
    else:
        assert nvs["dev_secret"].decode() == rec["secret"]
        if platform == "protco":
            assert nvs["dev_uuid"].decode() == rec["uuid"]
    # the last successful login in the emulator's log is this device's
    assert re.search(r"cloud: mqtt login \S*%s\S* ok" % re.escape(key.split("/")[-1] if platform != "protco"
                                                                  else rec["uuid"]), board.cloud_log)
    return rec


def activated_once(cloud, platform, key, done):
    """Predicate for the proxy: true (once) when the emulator has just recorded a new login of `key`."""
    def pred():
        if done:
            return False
        rec = record_of(cloud, platform, key)
        if rec and rec.get("logins", 0) >= 1:
            done.append(True)
            return True
        return False
    return pred


# ------------------------------------------------------------------------------------------------ power cuts

PRODUCTS = {  # case -> (platform, pid, NVS writes of a registration)
    "tencent-psk": ("tencent", "SIMPSK0001", 1),
    "tencent-cert": ("tencent", "SIMCERT001", 2),
    "ucloud": ("ucloud", "simucloudkey0001", 1),
    "protco": ("protco", "simprotcokey01", 3),
    "aliyun-https": ("aliyun", "a1ExpAkj9Hi", 1),
    "aliyun-mqtt": ("aliyun", "a1ExpAkj9Hi", 1),
    "aliyun-nwl": ("aliyun", "a1ExpAkj9Hi", 2),
}


def settings_for(cloud, product, name, **extra):
    platform, pid, _ = PRODUCTS[product]
    extra = dict(dict(RETRY, max_tries=8), **extra)
    if platform == "tencent":
        return tencent_settings(cloud, pid, name, **extra)
    if platform == "aliyun":  # one report: the cuts are all before it
        variant = {"aliyun-nwl": "mqtt-nwl"}.get(product, product.split("-")[1])
        return aliyun_settings(cloud, pid, name, variant, report_count=1, **extra)
    return mqtt_settings(cloud, platform, pid, name, **extra)


def device_key(settings):
    return "%s/%s" % (settings["prod_id"], settings["dev_name"])


POWER_CASES = []
for _product, (_platform, _pid, _writes) in PRODUCTS.items():
    POWER_CASES.append((_product, "before-request"))
    for _n in range(1, _writes + 1):
        POWER_CASES.append((_product, "nvs_write:%d" % _n))
    POWER_CASES.append((_product, "nvs_commit:1"))
    POWER_CASES.append((_product, "first-login"))


@pytest.mark.parametrize("interp", INTERPS)
@pytest.mark.parametrize("product,when", POWER_CASES, ids=["%s-%s" % c for c in POWER_CASES])
def test_power_cut(cloud, tmp_path, interp, product, when):
    """A power cut at each step ends registered and logged in, device and emulator agreeing."""
    platform, pid, writes = PRODUCTS[product]
    name = "pc-%s-%s-%s" % (product.replace("tencent-", "t").replace("aliyun-", "a"), when.replace(":", "").replace("_", ""),
                            interp[:2])
    case = record(name, interp, 1)
    settings = settings_for(cloud, product, name)
    key = device_key(settings)
    board = Board(cloud, tmp_path, interp, settings)
    over_http = platform == "tencent" or product == "aliyun-https"
    port_key = "reg_port" if over_http else "mqtt_port"
    upstream = cloud.ports["https" if over_http else "mqtts"]
    proxy = None
    if when == "before-request":
        # the board's first bytes (its TLS ClientHello) never reach the cloud: the power goes first
        proxy = FaultProxy(upstream, [("cut_client", board.power_cut)])
    elif when == "first-login":
        # the emulator has checked the login and activated the device; the CONNACK never reaches it
        proxy = FaultProxy(cloud.ports["mqtts"])
        proxy.plan = [("cut_server", activated_once(cloud, platform, key, []), board.power_cut)] * 3
        port_key = "mqtt_port"
    if proxy:
        settings[port_key] = proxy.port
    try:
        board.run(fault=None if proxy else when)
    finally:
        if proxy:
            proxy.close()
    assert "[sim] power cut" in board.out, board.out
    rec = assert_consistent(board, platform, key)
    if when == "before-request":
        assert rec["registrations"] == 1
    elif when.startswith("nvs_write"):
        # the reply was lost with the power: the device registered again (allowed: not activated yet)
        assert rec["registrations"] == 2, rec
        # both registrations happened in this run (not one left over from another test)
        oks = re.findall(r"registration %s ok|%s ok \(\w+, registration" % (re.escape(key), re.escape(key)),
                         board.cloud_log)
        assert len(oks) == 2, board.cloud_log
    elif when == "nvs_commit:1":
        assert rec["registrations"] == 1 and rec["logins"] == 1
    else:
        assert rec["registrations"] == 1 and rec["logins"] == 2, rec  # the same secret logged in again
    case["passed"] = True


REGISTERED_KEY = {"tencent-psk": "dev_secret", "tencent-cert": "dev_cert", "ucloud": "dev_secret", "protco": "dev_secret",
                  "aliyun-https": "dev_secret", "aliyun-mqtt": "dev_secret", "aliyun-nwl": "dev_secret"}


@pytest.mark.parametrize("product", list(PRODUCTS))
def test_registered_key_is_written_last(cloud, tmp_path, product):
    """The key that means "registered" is the last item of a registration that NVS stores (only the identity
    marker follows it): a power cut at that write leaves every other item in flash and the board unregistered."""
    platform, pid, writes = PRODUCTS[product]
    name = "order-%s" % product.replace("tencent-", "t").replace("aliyun-", "a")
    settings = settings_for(cloud, product, name, max_tries=1)
    board = Board(cloud, tmp_path, "micropython", settings)
    case = record("registered-key-last-" + product, "micropython", 1)
    board.run(fault="nvs_write:%d" % writes, max_boots=1)
    assert board.rc == 3 and "[sim] power cut (fault injected)" in board.out, board.out
    nvs = board.nvs()
    stored = [k for k in ("dev_key", "dev_pid", "dev_uuid", "dev_client", "dev_secret", "dev_cert") if k in nvs]
    assert REGISTERED_KEY[product] not in stored and len(stored) == writes - 1, stored
    # After it comes only the identity marker (dev_id: a cut there leaves a registered board, which writes
    # its marker at its first login; test_nvs_damage.py), so two writes later no cut happens at all.
    board.run(fault="nvs_write:%d" % (writes + 2), max_boots=1)
    assert "[sim] power cut" not in board.out and "registered: stored" in board.out, board.out
    nvs = board.nvs()
    assert nvs.get(REGISTERED_KEY[product]) and nvs.get("dev_id"), sorted(nvs)
    case["passed"] = True


def test_forget_prod_waits_for_an_accepted_login(cloud, tmp_path):
    """forget_prod=1 erases the product secret only after the broker accepted the device secret: a power
    cut during the first login (the cloud activated the device, the CONNACK never arrived) and refused
    logins leave it in flash; the next accepted login erases it."""
    settings = settings_for(cloud, "tencent-psk", "forget-cut", forget_prod=1, max_tries=1)
    key = device_key(settings)
    board = Board(cloud, tmp_path, "micropython", settings)
    case = record("forget-prod-order", "micropython", 3)
    # connection 1: cut during the first login; 2: refused with CONNACK 3; then passed through
    proxy = FaultProxy(cloud.ports["mqtts"], certfile=str(cloud.state / "server.pem"),
                       keyfile=str(cloud.state / "server.key"))
    proxy.plan = [("cut_server", activated_once(cloud, "tencent", key, []), board.power_cut),
                  ("reply", CONNACK_UNAVAILABLE, True)]
    settings["mqtt_port"] = proxy.port
    with proxy:
        board.run(max_boots=2)  # boot 1 registers, boot 2 is cut during its first login
        assert "[sim] power cut" in board.out and record_of(cloud, "tencent", key)["activated"], board.out
        assert board.nvs().get("prod_secret") and board.nvs().get("dev_secret")
        board.run(fresh=False, max_boots=1)  # the broker refuses the login: still not erased
        assert board.rc == 1 and "return code 3" in board.out, board.out
        assert board.nvs().get("prod_secret")
        board.run(fresh=False)
    assert "product secret erased from NVS (forget_prod=1)" in board.out
    assert "prod_secret" not in board.nvs() and assert_consistent(board, "tencent", key)
    case["passed"] = True


# ------------------------------------------------------------------------------------------------ network


def check_backoff(board, attempts):
    """Each wait lies in [d/2, d], d = min(cap, base * 2^(n-1)): growing, jittered, capped."""
    got = board.backoffs()
    assert len(got) >= attempts, board.out
    for n, wait in got:
        d = min(RETRY["retry_max_ms"], RETRY["retry_ms"] << (n - 1))
        assert d // 2 <= wait <= d, (n, wait)
    assert max(w for _, w in got) <= RETRY["retry_max_ms"]
    return got


def tencent_board(cloud, tmp_path, interp, name, **extra):
    settings = settings_for(cloud, "tencent-psk", name, **extra)
    return Board(cloud, tmp_path, interp, settings), settings


@pytest.mark.parametrize("interp", INTERPS)
def test_wifi_fail_then_join(cloud, tmp_path, interp):
    board, s = tencent_board(cloud, tmp_path, interp, "net-wifi-fail-" + interp[:2])
    case = record("wifi-fail-2", interp, 2)
    board.run(fault="wifi:fail:2")
    assert board.out.count("wifi: no access point") == 2
    check_backoff(board, 2)
    assert_consistent(board, "tencent", device_key(s))
    case["passed"] = True


def test_wifi_timeout_bounded(cloud, tmp_path):
    """An association that never completes is given up after `wifi_timeout_ms`, then retried."""
    board, s = tencent_board(cloud, tmp_path, "micropython", "net-wifi-timeout", wifi_timeout_ms=2000)
    case = record("wifi-timeout-1", "micropython", 1)
    t0 = time.monotonic()
    board.run(fault="wifi:timeout:1", timeout=60)
    assert "wifi: no connection to 'sim-ap' after 2000 ms" in board.out, board.out
    assert time.monotonic() - t0 < 30
    check_backoff(board, 1)
    assert_consistent(board, "tencent", device_key(s))
    case["passed"] = True


@pytest.mark.parametrize("interp", INTERPS)
def test_ntp_fail_keeps_clock(cloud, tmp_path, interp):
    board, s = tencent_board(cloud, tmp_path, interp, "net-ntp-fail-" + interp[:2])
    case = record("ntp-fail", interp, 1)
    board.run(fault="ntp:fail")
    assert "time: NTP failed" in board.out and "keeping the current clock" in board.out
    assert_consistent(board, "tencent", device_key(s))
    case["passed"] = True


@pytest.mark.parametrize("interp", INTERPS)
def test_unset_clock_and_ntp_failing_sends_no_request(cloud, tmp_path, interp):
    """A board whose clock reads 2000 (no battery-backed RTC) and whose NTP fails must not sign a request
    with that time: no byte reaches the cloud. With NTP working the same board registers."""
    name = "net-noclock-" + interp[:2]
    board, s = tencent_board(cloud, tmp_path, interp, name, max_tries=2)
    case = record("unset-clock-ntp-fail", interp, 2)
    board.run(fault="clock:unset,ntp:fail", max_boots=1)
    assert board.rc == 1 and board.out.count("and the clock is not set") == 2, board.out
    assert "giving up after 2 attempts" in board.out and "tencent: POST" not in board.out, board.out
    assert name not in board.cloud_log and record_of(cloud, "tencent", device_key(s)) is None
    board.run(fault="clock:unset")
    assert "time: 20" in board.out and "time: 2000-" not in board.out, board.out  # NTP set the clock
    assert_consistent(board, "tencent", device_key(s))
    case["passed"] = True


@pytest.mark.parametrize("interp", INTERPS)
def test_dns_failure_backs_off_and_gives_up(cloud, tmp_path, interp):
    board, _ = tencent_board(cloud, tmp_path, interp, "net-dns-" + interp[:2], reg_host="nonexistent.invalid",
                             max_tries=4)
    case = record("dns-failure", interp, 4)
    t0 = time.monotonic()
    board.run(timeout=60)
    assert board.rc == 1 and "giving up after 4 attempts" in board.out, board.out
    assert time.monotonic() - t0 < 50
    check_backoff(board, 3)
    case["passed"] = True


# (proxy plan, events injected, what the board logs) -- each then recovers and registers
PROXY_CASES = {
    "refused": (["refuse"] * 6, 6, None),
    "http-503": ([("reply", HTTP_503, True)] * 2, 2, "HTTP status 503"),
    "never-answers": (["hang"], 1, None),
}


@pytest.mark.parametrize("interp", INTERPS)
@pytest.mark.parametrize("what", list(PROXY_CASES))
def test_registration_server_faults(cloud, tmp_path, interp, what):
    if what == "never-answers" and interp == "cpython":
        pytest.skip("the 10 s socket timeout is the same code under both; one run keeps the file fast")
    plan, events, expect = PROXY_CASES[what]
    name = "net-%s-%s" % (what, interp[:2])
    case = record(name, interp, events)
    proxy = FaultProxy(cloud.ports["https"], plan, certfile=str(cloud.state / "server.pem"),
                       keyfile=str(cloud.state / "server.key"))
    board, s = tencent_board(cloud, tmp_path, interp, name, reg_port=proxy.port)
    t0 = time.monotonic()
    with proxy:
        board.run(timeout=80)
    got = check_backoff(board, events)
    if what == "refused":
        assert [n for n, _ in got][:6] == [1, 2, 3, 4, 5, 6]
        assert sorted(w for _, w in got)[-1] >= 200  # the cap (400) was reached: waits in [200, 400]
    if expect:
        assert expect in board.out, board.out
    if what == "never-answers":
        assert time.monotonic() - t0 < 40  # the 10 s socket timeout bounds the wait
    assert_consistent(board, "tencent", device_key(s))
    case["passed"] = True


@pytest.mark.parametrize("interp", INTERPS)
@pytest.mark.parametrize("product", ["tencent-psk", "ucloud"])
def test_mqtt_dropped_mid_session(cloud, tmp_path, interp, product):
    """Plain MQTT through the proxy: the login session is cut right after the board's SUBSCRIBE went through
    (an exact point: connect() has returned). The board reconnects in place: no reboot, no back-off."""
    platform = PRODUCTS[product][0]
    name = "net-drop-%s-%s" % (platform, interp[:2])
    case = record(name, interp, 1)
    proxy = MqttProxy(cloud.ports["mqtt"])
    # The registration connection (UCloud) subscribes too; the login's CONNECT has the |1 / psk username.
    proxy.rule = (UP, lambda c, f, b: f & 0xF0 == 0x80 and c.packets and b"|2" not in c.packets[0][2], "cut_after")
    settings = settings_for(cloud, product, name, tls=0, mqtt_port=proxy.port)
    settings.pop("ca")
    if platform == "tencent":
        settings["reg_port"] = cloud.ports["http"]
    board = Board(cloud, tmp_path, interp, settings)
    try:
        board.run(timeout=60)
    finally:
        proxy.close()
    assert proxy.rule is None, "the SUBSCRIBE was never cut"
    assert board.out.count("dynreg: mqtt: connection lost") == 1 and "mqtt: online again" in board.out, board.out
    assert board.out.count("[sim] boot") == 2 and not board.backoffs(), board.out
    # Report 1 is acknowledged in the log or not, depending on whether the loss was seen before or during its
    # publish; either way nothing written after the cut reached the broker, so all three reports (report 1
    # first sent, or sent again with DUP) must be QoS 1 PUBLISHes of the new connection, each acknowledged.
    assert len(re.findall(r"report \d sent", board.out)) == 3, board.out
    last = proxy.conns[-1]
    reports = [b for f, b in last.sent(UP, 0x30) if f & 0x06 == 0x02]
    for n in (1, 2, 3):
        assert [b for b in reports if re.search(rb'"n": ?%d[,}]' % n, b)], (n, reports)
    assert len(last.sent(DOWN, 0x40)) >= 3, last.packets
    assert_consistent(board, platform, device_key(settings))
    case["passed"] = True


@pytest.mark.parametrize("interp", INTERPS)
def test_broker_unavailable(cloud, tmp_path, interp):
    """UCloud over TLS: the broker answers CONNACK 3 (server unavailable) twice, then works."""
    name = "net-connack3-" + interp[:2]
    case = record(name, interp, 2)
    proxy = FaultProxy(cloud.ports["mqtts"], [("reply", CONNACK_UNAVAILABLE, True)] * 2,
                       certfile=str(cloud.state / "server.pem"), keyfile=str(cloud.state / "server.key"))
    settings = settings_for(cloud, "ucloud", name, mqtt_port=proxy.port)
    board = Board(cloud, tmp_path, interp, settings)
    with proxy:
        board.run(timeout=60)
    assert "return code 3" in board.out, board.out
    check_backoff(board, 2)
    assert_consistent(board, "ucloud", device_key(settings))
    case["passed"] = True


# ------------------------------------------------------------------------------------------------ rejected secret


@pytest.mark.parametrize("interp", INTERPS)
def test_rejected_secret_is_kept(cloud, tmp_path, interp):
    """The device was deleted in the console: the broker refuses its secret (CONNACK 5). The device keeps
    the secret (a refusal may be transient or the broker's mistake; an activated device cannot get a new
    one anyway) and retries with back-off; with max_tries it gives up, secret intact."""
    board, s = tencent_board(cloud, tmp_path, interp, "rej-" + interp[:2], max_tries=3)
    case = record("rejected-secret", interp, 3)
    board.run()
    assert_consistent(board, "tencent", device_key(s))
    secret = board.nvs()["dev_secret"]
    assert cloud_registry.forget_device(str(cloud.state / "devices.json"), "tencent", device_key(s))
    board.run(fresh=False, timeout=60)
    assert board.rc == 1 and board.out.count("CONNACK return code 5") == 3, board.out
    assert "giving up after 3 attempts" in board.out
    check_backoff(board, 2)
    assert board.nvs()["dev_secret"] == secret
    assert "registering" not in board.out
    case["passed"] = True


# ------------------------------------------------------------------------------------------------ emulator


def _post(cloud, path, headers, body):
    ctx = ssl.create_default_context(cafile=str(cloud.state / "ca.pem"))
    conn = http.client.HTTPSConnection("localhost", cloud.ports["https"], context=ctx, timeout=10)
    conn.request("POST", path, body=body, headers=headers)
    reply = json.loads(conn.getresponse().read())
    conn.close()
    return reply


def test_nonce_replay_refused(cloud):
    """The same signed /device/register request (same nonce, timestamp, product, device) twice within the
    timestamp window: the second is refused with AuthFailure.SignatureFailure (replay)."""
    case = record("emulator-nonce-replay", "cpython", 2)
    pid, secret = "SIMPSK0001", cloud.secret("tencent", "SIMPSK0001")
    body = json.dumps({"ProductId": pid, "DeviceName": "replay-1"}).encode()
    ts, nonce = int(time.time()), 123456
    sig = cloud_tencent.register_signature(secret, "localhost", "/device/register", "hmacsha256", ts, nonce, body)
    headers = {"Content-Type": "application/json", "X-TC-Algorithm": "hmacsha256", "X-TC-Timestamp": str(ts),
               "X-TC-Nonce": str(nonce), "X-TC-Signature": sig}
    first = _post(cloud, "/device/register", headers, body)
    assert "Payload" in first["Response"], first
    again = _post(cloud, "/device/register", headers, body)
    assert again["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert "replay" in again["Response"]["Error"]["Message"]
    # a fresh nonce is fine (the device may register again until activated)
    headers["X-TC-Nonce"] = str(nonce + 1)
    headers["X-TC-Signature"] = cloud_tencent.register_signature(secret, "localhost", "/device/register",
                                                                 "hmacsha256", ts, nonce + 1, body)
    assert "Payload" in _post(cloud, "/device/register", headers, body)["Response"]
    # the legacy API too
    legacy = {"deviceName": "replay-2", "nonce": 777, "productId": pid, "timestamp": ts,
              "signature": cloud_tencent.legacy_signature(secret, "replay-2", 777, pid, ts)}
    lb = json.dumps(legacy).encode()
    assert _post(cloud, "/register/dev", {"Content-Type": "application/json"}, lb)["code"] == 0
    assert _post(cloud, "/register/dev", {"Content-Type": "application/json"}, lb)["code"] == 1003
    assert_clean(cloud.log(), cloud.secrets(), cloud.public(), derived=True, where="the emulator's log")
    case["passed"] = True


def test_emulator_compares_in_constant_time(tmp_path, monkeypatch):
    """Every credential check of the emulator goes through hmac.compare_digest: each path is called in
    process with a wrong credential, and the refusal must come from compare_digest seeing what was sent."""
    import hmac
    from types import SimpleNamespace

    from tools.cloud.protco import ProtcoPlatform
    from tools.cloud.registry import DeviceStore, load_registry
    from tools.cloud.state import SeenOnce
    from tools.cloud.tencent import TencentPlatform
    from tools.cloud.ucloud import UCloudPlatform

    case = record("emulator-constant-time", "cpython", 0)
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append({a, b})  # which side is the given value differs between call sites
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    reg = load_registry(REPO / "tools" / "cloud" / "registry.json").products
    store = DeviceStore(str(tmp_path / "devices.json"))
    tencent = TencentPlatform(reg["tencent"], store, None, 300, SeenOnce(str(tmp_path / "seen-tencent.json"), 600))
    ts = int(time.time())

    def post(path, headers, body):
        return SimpleNamespace(method="POST", path=path, host="localhost", headers=headers,
                               body=json.dumps(body).encode())

    def session(client_id, username, password):
        return SimpleNamespace(client_id=client_id, username=username, password=password, attributes={},
                               ssl_object=None, keep_alive=60, will_flag=False)

    wrong = "WrongCredential0123456789abcdef"
    checks = {
        "tencent /device/register": lambda: tencent._device_register(post("/device/register", {
            "X-TC-Algorithm": "hmacsha256", "X-TC-Timestamp": str(ts), "X-TC-Nonce": "5", "X-TC-Signature": wrong},
            {"ProductId": "SIMPSK0001", "DeviceName": "ct-1"}))[1]["Response"]["Error"]["Code"],
        "tencent /register/dev": lambda: tencent._register_dev(post("/register/dev", {}, {
            "productId": "SIMPSK0001", "deviceName": "ct-1", "nonce": 5, "timestamp": ts,
            "signature": wrong}))[1]["code"],
        "ucloud registration login": lambda: UCloudPlatform(reg["ucloud"], store).mqtt_authenticate(
            session("simucloudkey0001.ct-dev1", "simucloudkey0001|ct-dev1|2", wrong)),
        "protco registration login": lambda: ProtcoPlatform(reg["protco"], store, 300, SeenOnce(str(tmp_path / "seen-protco.json"), 600)).mqtt_authenticate(
            session("register_simprotcokey01_ct1", "simprotcokey01|signMethod=hmacSha256,ts=%d" % ts, wrong)),
    }
    for what, check in checks.items():
        seen.clear()
        outcome = check()
        assert outcome is False or outcome not in (True, 0), (what, outcome)  # refused (False == 0)
        assert seen and {wrong.encode(), wrong.lower().encode()} & seen[-1], what  # (no secret in the message)
    # and the Tencent psk login of a registered device
    store.put("tencent", "SIMPSK0001/ct-2", {"psk": base64.b64encode(b"k" * 16).decode(), "registrations": 1})
    user = "SIMPSK0001ct-2;12010126;abcde;%d" % (ts + 600)
    seen.clear()
    assert tencent.mqtt_authenticate(session("SIMPSK0001ct-2", user, wrong + ";hmacsha256")) is False
    assert len(seen) == 1 and (wrong.lower() + ";hmacsha256").encode() in seen[0]
    case["passed"] = True
