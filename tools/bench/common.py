"""What every bench measurement shares: paths, products, device settings, timed runs of the simulated board."""
import base64
import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from tools.cloud import proc
from tools.platforms import PLATFORMS
from tools.cloud.state import read_console_password
from tools.factory.provision import pem_to_der

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
SIM = REPO / "boards" / "sim"
UMQTT_SRC = REPO / "build" / "deps" / "frozen" / "umqtt" / "simple.py"  # what the sim runner's --umqtt frozen uses
REGISTRY = REPO / "tools" / "cloud" / "registry.json"

# Each platform's product: the one its simulated board's settings name (boards/sim/settings/<platform>.json).
PRODUCTS = dict((p, json.loads((SIM / "settings" / (p + ".json")).read_text())["prod_id"]) for p in PLATFORMS)
WIFI = {"wifi_ssid": "sim-ap", "wifi_pass": "sim-pass-123"}
SUCCESS = "report 1 sent"

_names = iter(range(1, 1 << 30))
_names_lock = threading.Lock()
TAG = "%06x" % random.getrandbits(24)


def say(msg):
    """One progress line on stderr (the table goes to stdout)."""
    print("[bench] " + msg, file=sys.stderr, flush=True)

def fresh_name(platform):
    """A device name no board has used: valid for Tencent, UCloud (4-64, no '_') and Protco."""
    with _names_lock:
        n = next(_names)
    return "bn-%s-%s%04d" % (TAG, platform[0], n)

def venv_tool(name):
    """A console script beside this interpreter (the venv's), else on PATH."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise SystemExit("bench: %s not found (make setup installs it)" % name)
    return found


# -- the emulator ------------------------------------------------------------------------------

class Emulator(proc.Emulator):
    """The cloud emulator (tools/cloud/proc.py) with the registry the bench's products and secrets come from."""

    registry = json.loads(REGISTRY.read_text())

    def secret(self, platform, pid):
        return self.registry[platform][pid]["secret"]


def start_emulator(state, cert_names=()):
    """An emulator on ephemeral ports with a fresh state directory (its log: STATE/cloud.log)."""
    state = Path(state)
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    args = list(proc.EPHEMERAL)
    for name in cert_names:
        args += ["--cert-name", name]
    try:
        return Emulator.start(state, args, log=state / "cloud.log", timeout=60)
    except proc.EmulatorError as exc:
        raise SystemExit("bench: %s" % exc) from None


def device_settings(emu, platform, name, wifi=True):
    """Factory NVS of a board of `platform` pointed at the emulator over TLS; one attempt only, and main.py
    returns after its first report."""
    pid = PRODUCTS[platform]
    s = {"platform": platform, "prod_id": pid, "dev_name": name,
         "mqtt_host": "localhost", "mqtt_port": emu.ports["mqtts"], "ca": {"file": "@cloud/ca.pem"},
         "max_tries": 1, "retry_ms": 100, "report_count": 1}
    if platform == "aws":  # the claim certificate (the emulator's, made at its start) instead of a product secret
        s.update(claim_cert={"file": "@cloud/aws-claim.pem"}, claim_key={"file": "@cloud/aws-claim.key"})
    else:
        s["prod_secret"] = emu.secret(platform, pid)
    if platform in ("tencent", "aliyun"):  # registration over HTTPS
        s.update(reg_host="localhost", reg_port=emu.ports["https"])
    if platform == "aliyun":  # its HTTPS registration needs the name created in the console first
        from tools.cloud.aliyun import create_device

        create_device(str(Path(emu.state) / "devices.json"), pid, name)
    if wifi:
        s.update(WIFI)
    return s


def floor_settings(emu, name):
    return dict(WIFI, dev_name=name, mqtt_host="localhost", mqtt_port=emu.ports["mqtts"], ca={"file": "@cloud/ca.pem"},
                **{"floor_user:blob": emu.registry["console"]["username"], "floor_pass:blob": read_console_password(emu.state)})  # bench's own keys


# -- running things and timing their output --------------------------------------------------------

class Run:
    """A finished process: exit code, output lines with arrival times (s after start)."""

    def __init__(self, rc, lines):
        self.rc = rc
        self.lines = lines

    @property
    def out(self):
        return "\n".join(text for _, text in self.lines)

    def at(self, pattern, after=0.0):
        """Arrival time of the first line matching the regex (at or after `after` s), or None."""
        for t, text in self.lines:
            if t >= after and re.search(pattern, text):
                return t
        return None

    @property
    def ok(self):
        return self.rc == 0 and self.at(re.escape(SUCCESS)) is not None

def run_timed(cmd, timeout=180, env=None):
    """Run cmd, timestamping each output line as it arrives (stdout and stderr together)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    fd, buf, lines = proc.stdout.fileno(), b"", []
    deadline = t0 + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                lines.append((time.monotonic() - t0, "[bench] killed after %d s" % timeout))
                break
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            data = os.read(fd, 65536)
            now = time.monotonic() - t0
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                lines.append((now, line.decode(errors="replace")))
        if buf:
            lines.append((time.monotonic() - t0, buf.decode(errors="replace")))
    finally:
        proc.stdout.close()
        rc = proc.wait()
    return Run(rc, lines)

def run_board(out, emu, settings, firmware, heapsize=None, timeout=120):
    """One simulated board from factory state through the sim runner's command line (python -m tools.sim)."""
    state = out / "boards" / settings["dev_name"]
    state.mkdir(parents=True, exist_ok=True)
    path = state / "settings.json"
    path.write_text(json.dumps(settings))
    nvs = state / "bench-nvs.json"
    nvs.write_text(json.dumps({"dynreg": {key.partition(":")[0]: bench_nvs_value(value, emu)  # "name:type" -> name
                                          for key, value in settings.items()}}))
    cmd = [sys.executable, "-m", "tools.sim", "--settings", str(path), "--firmware", str(firmware),
           "--state", str(state), "--fresh", "--cloud-state", str(emu.state), "--max-boots", "3",
           "--boot-timeout", "30"]
    if heapsize:
        cmd += ["--heapsize", str(heapsize)]
    run = run_timed(cmd, timeout, env=dict(os.environ, DYNREG_BENCH_NVS=str(nvs)))
    (state / "output.txt").write_text("".join("%8.3f %s\n" % line for line in run.lines))
    return run

def bench_nvs_value(value, emu):
    """A settings value as BENCH_ESP32 stores it (the sim's rules: str -> blob, int -> i32, file -> bytes)."""
    if isinstance(value, int):
        return ["i32", value]
    if isinstance(value, dict):
        if not value["file"].startswith("@cloud/"):
            raise ValueError("bench settings name only the emulator's files")
        data = (emu.state / value["file"][len("@cloud/"):]).read_bytes()
        if data.lstrip().startswith(b"-----BEGIN"):
            data = pem_to_der(data, value["file"])
    else:
        data = value.encode()
    return ["blob", base64.b64encode(data).decode()]
