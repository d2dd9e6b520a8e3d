"""`make hil`: a board from blank to logged in against the emulator on this PC.

No ESP32 here: the Makefile target is checked with `make -n`, and the orchestrator (tools/hil) runs
for real with the simulated board in place of the serial port. The "LAN address" is 127.0.0.1
(--lan-ip): everything stays on loopback.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from test_factory import make_n
from tools.cloud.state import read_console_password

REPO = Path(__file__).resolve().parent.parent
WIFI = {"WIFI_SSID": "sim-ap", "WIFI_PASS": "sim-pass-123"}
REGISTRY = json.loads((REPO / "tools" / "cloud" / "registry.json").read_text())


def hil(state, *args, env=WIFI, timeout=120):
    """python -m tools.hil with the simulated board on loopback; returns (exit code, output)."""
    command = [sys.executable, "-m", "tools.hil", "--board", "sim", "--lan-ip", "127.0.0.1", "--state", str(state),
               "--timeout", str(timeout)] + list(args)
    clean = {k: v for k, v in os.environ.items() if k not in ("WIFI_SSID", "WIFI_PASS")}
    proc = subprocess.run(command, cwd=REPO, env=dict(clean, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout + 60)
    return proc.returncode, proc.stdout


def secrets_in_play(state):
    found = {p["secret"] for products in REGISTRY.values() if isinstance(products, dict)
             for p in products.values() if isinstance(p, dict) and "secret" in p}
    found |= {WIFI["WIFI_PASS"], read_console_password(state / "cloud")}
    devices = state / "cloud" / "devices.json"
    for records in (json.loads(devices.read_text()) if devices.exists() else {}).values():
        found |= {r[k] for r in records.values() for k in ("psk", "secret") if r.get(k)}
    return {s for s in found if s}


def assert_private(*paths):
    for path in paths:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


# -- the Makefile target ---------------------------------------------------------------------------

def test_make_n_hil(tmp_path):
    firmware = tmp_path / "ESP32_GENERIC.bin"
    firmware.write_bytes(b"\xe9" + b"\0" * 15)
    proc = make_n("hil", "BOARD=ESP32_GENERIC", "PORT=/dev/ttyUSB0", "PLATFORM=ucloud", "FIRMWARE=%s" % firmware,
                  "FORCE=1", "WIFI_SSID=home", "WIFI_PASS=not-on-a-command-line")
    assert proc.returncode == 0, proc.stderr
    assert (".venv/bin/python -m tools.hil --board ESP32_GENERIC --partition default --platform ucloud "
            "--port /dev/ttyUSB0 --firmware %s --force" % firmware) in proc.stdout.splitlines()
    assert "not-on-a-command-line" not in proc.stdout + proc.stderr
    proc = make_n("hil", "BOARD=ESP32_GENERIC", rc=2)
    assert "PORT= is required" in proc.stderr
    proc = make_n("hil", "BOARD=ESP32_GENERIC", "PORT=/dev/ttyUSB0", "FIRMWARE=%s" % (tmp_path / "none.bin"), rc=2)
    assert "not found" in proc.stderr
    proc = make_n("hil", "BOARD=sim")
    assert proc.returncode == 0 and "-m tools.hil --board sim --partition default --platform tencent" in proc.stdout


# -- the orchestration, on the simulated board -----------------------------------------------------

@pytest.mark.parametrize("platform", ["tencent", "ucloud", "protco", "aliyun"])
def test_hil_blank_board_to_logged_in(tmp_path, platform):
    rc, out = hil(tmp_path, "--platform", platform, "--reg-port", "0", "--mqtt-port", "0")
    assert rc == 0 and "hil: PASS: the simulated board" in out, out
    steps = [line.split(":")[1].strip() for line in out.splitlines()
             if line.startswith("hil: ") and line.split(":")[1].strip() in
             ("LAN address", "cloud emulator", "settings", "provision", "boot and login")]
    assert steps == ["LAN address", "cloud emulator", "settings", "provision", "boot and login"], out
    assert "hil: LAN address: 127.0.0.1" in out and "no device secret on the board: writing the factory image" in out
    assert_private(tmp_path / "settings.json", tmp_path / "nvs.bin", tmp_path / "cloud" / "console.password")
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["mqtt_host"] == "127.0.0.1" and settings["platform"] == platform
    records = json.loads((tmp_path / "cloud" / "devices.json").read_text())[platform]
    assert [r["activated"] for r in records.values()] == [True]
    for secret in secrets_in_play(tmp_path):
        assert secret not in out, "a secret reached the output"


def test_hil_keeps_the_identity_unless_forced(tmp_path):
    rc, out = hil(tmp_path, "--reg-port", "0", "--mqtt-port", "0")
    assert rc == 0, out
    settings = json.loads((tmp_path / "settings.json").read_text())
    # the board keeps all of its NVS, so the emulator comes back where it pointed the board
    same_ports = ["--reg-port", str(settings["reg_port"]), "--mqtt-port", str(settings["mqtt_port"])]
    rc, out = hil(tmp_path, *same_ports)
    assert rc == 0 and "keeping its NVS" in out and "registering" not in out, out
    (record,) = json.loads((tmp_path / "cloud" / "devices.json").read_text())["tencent"].values()
    assert record["registrations"] == 1 and record["logins"] == 2
    rc, out = hil(tmp_path, "--force", "--reg-port", "0", "--mqtt-port", "0")
    assert rc == 0 and "writing the factory image" in out and "registering tencent device" in out, out
    (record,) = json.loads((tmp_path / "cloud" / "devices.json").read_text())["tencent"].values()
    assert record["registrations"] == 1 and record["logins"] == 1  # the emulator forgot the device


def test_hil_fail_names_the_step_and_shows_the_console(tmp_path):
    rc, out = hil(tmp_path, "--reg-port", "0", "--mqtt-port", "0")
    assert rc == 0, out
    old_port = json.loads((tmp_path / "settings.json").read_text())["mqtt_port"]
    # the board keeps its identity and so its settings, which point at the first emulator's ports
    rc, out = hil(tmp_path, "--reg-port", "0", "--mqtt-port", "0", timeout=8)
    assert rc == 1 and "hil: FAIL at step 6/6 (boot and login): no login within 8 s" in out, out
    tail = out[out.index("hil: last console lines:"):]
    assert "mqtt: connecting to mqtts://127.0.0.1:%d" % old_port in tail and "hil: the emulator's log:" in tail
    rc, out = hil(tmp_path, env={})
    assert rc == 1 and "hil: FAIL at step 3/6 (settings): no Wi-Fi network" in out, out
