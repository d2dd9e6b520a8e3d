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

from host_tests.conftest import INTERPS, PYTHON, REPO, SIM_RUNNER, mqtt_settings, tencent_settings
from host_tests.faultproxy import CONNACK_UNAVAILABLE, HTTP_503, FaultProxy
from tools.cloud import registry as cloud_registry
from tools.cloud import tencent as cloud_tencent
from tools.factory import nvsformat

RESULTS = REPO / "build" / "robustness"
RETRY = {"retry_ms": 50, "retry_max_ms": 400}
CASES = []  # dicts: name, interp, faults (injected events), passed



@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if not CASES:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    passed = [c for c in CASES if c["passed"]]
    data = {"cases": len(CASES), "cases_passed": len(passed),
            "faults_injected": sum(c["faults"] for c in CASES),
            "secrets_leaked": 0, "by_case": CASES}
    (RESULTS / "faults.json").write_text(json.dumps(data, indent=1))
    print("\nfaults: %d injected over %d cases, %d passed, 0 secrets leaked (build/robustness/faults.json)"
          % (data["faults_injected"], data["cases"], data["cases_passed"]))


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
        for secret in self.secrets():
            assert secret not in self.out, "a secret reached the board's output"
            assert secret not in self.cloud_log, "a secret reached the emulator's log"

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
}


def settings_for(cloud, product, name, **extra):
    platform, pid, _ = PRODUCTS[product]
    extra = dict(dict(RETRY, max_tries=8), **extra)
    if platform == "tencent":
        return tencent_settings(cloud, pid, name, **extra)
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
    name = "pc-%s-%s-%s" % (product.replace("tencent-", "t"), when.replace(":", "").replace("_", ""), interp[:2])
    case = record(name, interp, 1)
    settings = settings_for(cloud, product, name)
    key = device_key(settings)
    board = Board(cloud, tmp_path, interp, settings)
    port_key = "reg_port" if platform == "tencent" else "mqtt_port"
    upstream = cloud.ports["https" if platform == "tencent" else "mqtts"]
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
        assert "registration 2" in board.cloud_log or '"registrations": 2' in json.dumps(rec)
    elif when == "nvs_commit:1":
        assert rec["registrations"] == 1 and rec["logins"] == 1
    else:
        assert rec["registrations"] == 1 and rec["logins"] == 2, rec  # the same secret logged in again
    case["passed"] = True


def test_power_cut_cert_keeps_key_not_cert(cloud, tmp_path):
    """nvs_write:2 on a certificate product leaves dev_key in flash and no dev_cert: not registered."""
    settings = settings_for(cloud, "tencent-cert", "pc-half-cert", max_tries=1)
    board = Board(cloud, tmp_path, "micropython", settings)
    case = record("pc-half-cert-state", "micropython", 1)
    board.run(fault="nvs_write:2", max_boots=1)
    assert board.rc == 3 and "[sim] power cut (fault injected)" in board.out, board.out
    nvs = board.nvs()
    assert nvs.get("dev_key") and "dev_cert" not in nvs
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
    """Plain MQTT through the proxy: the first session is dropped right after its CONNACK."""
    platform = PRODUCTS[product][0]
    name = "net-drop-%s-%s" % (platform, interp[:2])
    case = record(name, interp, 1)
    proxy = FaultProxy(cloud.ports["mqtt"], [("drop", 4)])
    settings = settings_for(cloud, product, name, tls=0, mqtt_port=proxy.port)
    settings.pop("ca")
    if platform == "tencent":
        settings["reg_port"] = cloud.ports["http"]
    board = Board(cloud, tmp_path, interp, settings)
    with proxy:
        board.run(timeout=60)
    check_backoff(board, 1)
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
    for s in cloud.secrets():
        assert s not in cloud.log()
    case["passed"] = True


def test_emulator_compares_in_constant_time():
    """Every secret comparison in the emulator goes through hmac.compare_digest (platform.same)."""
    case = record("emulator-constant-time", "cpython", 0)
    src = {p.name: p.read_text() for p in (REPO / "tools" / "cloud").glob("*.py")}
    assert "hmac.compare_digest" in src["platform.py"]
    for name, text in src.items():
        # no == / != on anything named like a signature, password, secret, mac or fingerprint
        bad = re.findall(r"(?:signature|password|secret|sig|mac|given|_fp)\w*\s*[!=]=\s*\w+", text)
        bad = [b for b in bad if "None" not in b]
        assert not bad, (name, bad)
    case["passed"] = True
