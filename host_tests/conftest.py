"""Shared fixtures: one cloud emulator per test session and a runner for the simulated board."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from host_tests.secrets_scan import assert_clean  # noqa: E402
from tools.cloud.proc import EPHEMERAL, Emulator  # noqa: E402
from tools.cloud.state import read_console_password  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python")

INTERPS = ("micropython", "cpython")
SIM_RUNNER = REPO / "tools" / "sim" / "run.py"  # python -m tools.sim, by path (any cwd)


def board_path(interp):
    """The directories boards/sim/rom.py puts first on the board's sys.path (its shims and the NVS codec)."""
    dirs = [str(REPO / "boards" / "sim" / "modules"), str(REPO / "tools" / "factory")]
    if interp == "cpython":
        dirs.insert(0, str(REPO / "boards" / "sim" / "cpython"))
    return dirs
WIFI = {"wifi_ssid": "sim-ap", "wifi_pass": "sim-pass-123"}
RUN = {"report_s": 1, "report_count": 3}  # main.py: three reports a second apart, then it returns
# A test registry: the sim's products plus ones the tests need to themselves.
EXTRA_TENCENT = {
    "TSTPRE0001": {"secret": "Qm9vdFRlc3RQcmVDcmVhdGU1", "auto_create": False,
                   "devices": ["pre-micropython", "pre-cpython"]},
}


class Cloud:
    """The emulator as the tests see it: ports, state files, registry."""

    def __init__(self, state, ports, registry):
        self.state = Path(state)
        self.ports = ports
        self.registry = registry

    def devices(self):
        """The emulator's device records (devices.json)."""
        path = self.state / "devices.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def secret(self, platform, pid):
        return self.registry[platform][pid]["secret"]

    def log(self):
        return (self.state / "cloud.log").read_text(errors="replace")

    def secrets(self):
        """Every secret in play: product secrets and whatever the cloud issued."""
        found = {read_console_password(self.state)}
        for platform, products in self.registry.items():
            if isinstance(products, dict):
                for p in products.values():
                    if isinstance(p, dict) and "secret" in p:
                        found.add(p["secret"])
        for records in self.devices().values():
            for rec in records.values():
                for key in ("psk", "secret", "password", "token"):
                    if rec.get(key):
                        found.add(rec[key])
        return found

    def public(self):
        """Names that are no secret (product ids, device keys): a secret's window found in one is no leak."""
        names = {pid for products in self.registry.values() if isinstance(products, dict) for pid in products}
        for records in self.devices().values():
            names.update(records)
        return names


def start_cloud(state, *args):
    """The emulator (tools/cloud/proc.py) on ephemeral ports, its output appended to STATE/cloud.log."""
    return Emulator.start(state, EPHEMERAL + args, log=Path(state) / "cloud.log", python=PYTHON)


@pytest.fixture(scope="session")
def cloud(tmp_path_factory):
    state = tmp_path_factory.mktemp("cloud")
    registry = json.loads((REPO / "tools" / "cloud" / "registry.json").read_text())
    registry["tencent"].update(EXTRA_TENCENT)
    reg_path = state / "registry.json"
    reg_path.write_text(json.dumps(registry))
    emu = start_cloud(state, "--registry", reg_path)
    cloud = Cloud(state, emu.ports, registry)
    yield cloud
    rc = emu.stop()
    log = cloud.log()
    assert rc == 0, log[-3000:]
    assert "Traceback" not in log, log[log.find("Traceback") - 300:][:3000]
    assert_clean(log, cloud.secrets(), cloud.public(), derived=True, where="the emulator's log")


@pytest.fixture(params=INTERPS)
def interp(request):
    return request.param


class Run:
    """What one run of the sim runner (tools/sim) printed and returned."""

    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout

    @property
    def boots(self):
        return len(re.findall(r"^\[sim\] boot \d+", self.out, re.M))

    def __repr__(self):
        return "exit %s after %d boots:\n%s" % (self.rc, self.boots, self.out)


@pytest.fixture
def board(tmp_path, cloud, interp):
    """board(settings, fresh=True, **runner options) -> Run; checks no secret reached the output."""

    def run(settings, fresh=True, max_boots=4, umqtt="frozen", timeout=120, state=None, mac=None, firmware=None,
            extra=()):
        path = tmp_path / "settings.json"
        path.write_text(json.dumps(settings))
        args = [PYTHON, str(SIM_RUNNER), "--settings", str(path), "--interp", interp,
                "--state", str(state or tmp_path / "board"), "--cloud-state", str(cloud.state),
                "--max-boots", str(max_boots), "--umqtt", umqtt]
        if fresh:
            args.append("--fresh")
        if mac:
            args += ["--mac", mac]
        if firmware:
            args += ["--firmware", str(firmware)]
        args += list(extra)  # more runner options, e.g. ("--fault", "nvs_write:2")
        proc = subprocess.run(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        result = Run(proc)
        secrets = cloud.secrets() | {str(v) for k, v in settings.items() if "secret" in k or "pass" in k}
        public = cloud.public() | {str(v) for k, v in settings.items() if k in ("prod_id", "dev_name")}
        assert_clean(result.out, secrets, public, derived=True, where="the board's output")
        return result

    return run


def tencent_settings(cloud, pid, name, **extra):
    """Factory settings of a Tencent board pointed at the emulator over TLS."""
    s = dict(WIFI, **RUN, platform="tencent", prod_id=pid, prod_secret=cloud.secret("tencent", pid), dev_name=name,
             reg_host="localhost", reg_port=cloud.ports["https"], mqtt_host="localhost",
             mqtt_port=cloud.ports["mqtts"], ca={"file": "@cloud/ca.pem"}, retry_ms=100, max_tries=1)
    s.update(extra)
    return s


def run_on_device(interp, tmp_path, code, timeout=60, nvs=None):
    """Run `code` as the board's main.py (firmware/lib on the path, the board's shims loaded); return stdout.

    For unit-level checks of device code under both interpreters without a boot flow; `nvs` names
    the NVS file to boot with (e.g. a board's state after a run).
    """
    fw = tmp_path / ("fw-" + interp)
    fw.mkdir(exist_ok=True)
    if not (fw / "lib").exists():
        (fw / "lib").symlink_to(REPO / "firmware" / "lib")
    (fw / "main.py").write_text(code)
    exe = str(REPO / ".venv" / "bin" / "micropython") if interp == "micropython" else PYTHON
    env = dict(os.environ, DYNREG_SIM_FIRMWARE=str(fw), DYNREG_SIM_PATH=str(REPO / "build" / "deps" / "frozen"),
               DYNREG_SIM_NVS=str(nvs or tmp_path / "nvs.bin"))
    proc = subprocess.run([exe, str(REPO / "boards" / "sim" / "rom.py")], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def mqtt_settings(cloud, platform, pid, name, **extra):
    """Factory settings of a UCloud or Protco board pointed at the emulator's TLS broker."""
    s = dict(WIFI, **RUN, platform=platform, prod_id=pid, prod_secret=cloud.secret(platform, pid), dev_name=name,
             mqtt_host="localhost", mqtt_port=cloud.ports["mqtts"], ca={"file": "@cloud/ca.pem"}, retry_ms=100,
             max_tries=1)
    s.update(extra)
    return s


def aliyun_settings(cloud, pid, name, variant="https", **extra):
    """Factory settings of an Aliyun board (ali_reg `variant`) pointed at the emulator over TLS, its
    DeviceName pre-registered in the emulator's console (devices.json)."""
    from tools.cloud.aliyun import create_device

    create_device(str(cloud.state / "devices.json"), pid, name)
    s = mqtt_settings(cloud, "aliyun", pid, name, ali_reg=variant, reg_host="localhost",
                      reg_port=cloud.ports["https"])
    s.update(extra)
    return s


def pytest_terminal_summary(terminalreporter):
    """Print the robustness counts (docs/failure-and-security.md) that the fault and hostile tests wrote."""
    for name in ("faults.json", "hostile.json"):
        path = REPO / "build" / "robustness" / name
        if path.exists():
            data = json.loads(path.read_text())
            summary = {k: v for k, v in data.items() if k not in ("by_case", "hostile_runs")}
            terminalreporter.write_line("robustness %s: %s" % (name, json.dumps(summary, sort_keys=True)))
