"""python -m tools.hil: a board from blank to logged in against the emulator on this PC (tools/hil/__init__.py)."""

import argparse
import collections
import getpass
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.factory import boards, provision  # noqa: E402
from tools.cloud.proc import Emulator, EmulatorError  # noqa: E402
from tools.cloud.registry import load_registry  # noqa: E402
from tools.cloud.state import CONSOLE_FILE, read_console_password, write_private  # noqa: E402
from tools.hil.targets import HilError, SerialBoard, SimBoard  # noqa: E402

REGISTRY = REPO / "tools" / "cloud" / "registry.json"
LOGGED_IN = "mqtt: logged in"        # the device's line (firmware/lib/dynreg/flow.py)
CLOUD_LOGIN = re.compile(r"^cloud: mqtt login \S+ ok")  # the emulator's line for the same login
STEPS = ("LAN address", "cloud emulator", "settings", "provision", "flash", "boot and login")
KEEP_LINES = 25


def say(message):
    print("hil: " + message, flush=True)


def lan_address():
    """The source address of this PC's default route: connect() on a UDP socket picks it and sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never reached, only routed
            address = probe.getsockname()[0]
        except OSError as exc:
            raise HilError("no route to a LAN (%s); give --lan-ip" % exc.strerror) from None
    if address.startswith("127.") or address == "0.0.0.0":
        raise HilError("this PC has no LAN address (%s); give --lan-ip" % address)
    return address


class Cloud:
    """python -m tools.cloud on the LAN address; its log goes to STATE/cloud.log."""

    def __init__(self, state, host, reg_port, mqtt_port, forget_devices=False):
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.log_path = self.state / "cloud.log"
        self.new_password = read_console_password(self.state) is None
        devices = self.state / "devices.json"
        if forget_devices and devices.exists():
            # --force writes a factory image: the device registers again, which an emulator that saw it
            # activated would refuse; the check starts from a cloud that knows no device (CA kept)
            devices.unlink()
        args = ["--host", host, "--cert-name", host, "--https-port", reg_port, "--mqtts-port", mqtt_port,
                "--http-port", 0, "--mqtt-port", 0]
        say("-m tools.cloud --state %s %s" % (self.state, " ".join(str(a) for a in args)))
        self.log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self.emulator = Emulator.start(self.state, args, log=self.log_path)
        except EmulatorError as exc:
            raise HilError(str(exc)) from None
        self.ports = self.emulator.ports

    def log_lines(self):
        """The emulator's log lines of this run."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode("utf-8", "replace").splitlines()

    def logged_in(self):
        return any(CLOUD_LOGIN.match(line) for line in self.log_lines())

    def stop(self):
        self.emulator.stop()


def board_settings(platform, host, ports, ca, wifi_ssid, wifi_pass):
    """Factory settings of a board of `platform` pointed at the emulator (TLS), its key product's."""
    products = load_registry(REGISTRY).products.get(platform)
    if not products:
        raise HilError("the registry has no %s product" % platform)
    product = next(iter(products.values()))  # the first product of a platform is its key product
    settings = {"platform": platform, "prod_id": product.pid, "prod_secret": product.secret,
                "wifi_ssid": wifi_ssid, "wifi_pass": wifi_pass, "mqtt_host": host, "mqtt_port": ports["mqtts"],
                "ca": {"file": str(ca)}}
    if platform == "tencent":
        settings.update(reg_host=host, reg_port=ports["https"])
    if platform == "aliyun":  # the board's name (its MAC) is unknown here: registration-free needs no pre-registration
        settings["ali_reg"] = "mqtt-nwl"
    return settings


def wifi(args):
    """(ssid, password) the board joins: --wifi-ssid / $WIFI_SSID, $WIFI_PASS (or asked on a terminal)."""
    ssid = args.wifi_ssid or os.environ.get("WIFI_SSID")
    password = os.environ.get("WIFI_PASS")
    if not ssid:
        raise HilError("no Wi-Fi network: give WIFI_SSID= (and WIFI_PASS=) for the network of %s" % args.lan_ip)
    if password is None and sys.stdin.isatty():
        password = getpass.getpass("hil: Wi-Fi password of %r: " % ssid)
    return ssid, password or ""


def target(args, state, cloud_state, settings_path):
    if args.board == "sim":
        return SimBoard(state / "sim", cloud_state, settings_path, args.interp)
    if not args.port:
        raise HilError("--port is required for board %s (e.g. /dev/ttyUSB0)" % args.board)
    return SerialBoard(args.board, args.port, args.partition, args.firmware)


def watch(board, cloud, timeout, tail):
    """Step 6: PASS (None) once the device and the emulator both report the login, else why not."""
    deadline = time.monotonic() + timeout
    device_ok = False
    for line in board.lines(deadline):
        print("  | " + line, flush=True)
        tail.append(line)
        device_ok = device_ok or LOGGED_IN in line
        if device_ok and cloud.logged_in():
            return None
    if device_ok:
        return "the device logged in, but the emulator logged no login from it"
    return "no login within %d s" % timeout if time.monotonic() >= deadline else "the board stopped before logging in"


def run(args):
    state = Path(args.state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    tail = collections.deque(maxlen=KEEP_LINES)
    cloud = None
    step = STEPS[0]
    try:
        size = boards.load(args.board, args.partition)["nvs_size"]
        args.lan_ip = args.lan_ip or lan_address()
        say("%s: %s" % (step, args.lan_ip))
        step = STEPS[1]
        cloud = Cloud(state / "cloud", args.lan_ip, args.reg_port, args.mqtt_port, forget_devices=args.force)
        password_file = cloud.state / CONSOLE_FILE
        if cloud.new_password and sys.stdout.isatty():
            say("console login 'console', password %s (shown once; kept in %s)"
                % (read_console_password(cloud.state), password_file))
        say("%s: registration https://%s:%d, MQTT mqtts://%s:%d; console password in %s"
            % (step, args.lan_ip, cloud.ports["https"], args.lan_ip, cloud.ports["mqtts"], password_file))
        step = STEPS[2]
        ssid, password = wifi(args)
        settings = board_settings(args.platform, args.lan_ip, cloud.ports, cloud.state / "ca.pem", ssid, password)
        settings_path = state / "settings.json"
        write_private(str(settings_path), json.dumps(settings, indent=1))
        say("%s: %s (%s, product %s, Wi-Fi %r)" % (step, settings_path, args.platform, settings["prod_id"], ssid))
        step = STEPS[3]
        entries = provision.settings_entries(settings)
        provision.check_entries(entries, size, where=str(settings_path))
        image = state / "nvs.bin"
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(provision.image_from_entries(entries, size))
        say("%s: %s (%d bytes)" % (step, image, size))
        step = STEPS[4]
        board = target(args, state, cloud.state, settings_path)
        board.install(image, args.force)
        step = STEPS[5]
        say("%s: watching %s for up to %d s" % (step, board.name, args.timeout))
        why = watch(board, cloud, args.timeout, tail)
        if why is None:
            say("PASS: %s registered and logged in to the emulator at %s (%s)" % (board.name, args.lan_ip,
                                                                                args.platform))
            return 0
        raise HilError(why)
    except (HilError, boards.BoardError, provision.ProvisionError, OSError) as exc:
        say("FAIL at step %d/%d (%s): %s" % (STEPS.index(step) + 1, len(STEPS), step, exc))
        if tail:
            say("last console lines:")
            for line in tail:
                print("  | " + line, flush=True)
        if cloud is not None:
            say("the emulator's log: %s" % cloud.log_path)
        return 1
    finally:
        if cloud is not None:
            cloud.stop()


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.hil", description=__doc__)
    p.add_argument("--board", required=True, help="a directory of boards/ (ESP32_GENERIC, ...), or sim")
    p.add_argument("--port", help="the board's serial port, e.g. /dev/ttyUSB0 (not for sim)")
    p.add_argument("--platform", default="tencent", choices=provision.PLATFORMS)
    p.add_argument("--firmware", help="MicroPython .bin to flash first (else the board keeps its MicroPython)")
    p.add_argument("--force", action="store_true", help="write the factory NVS over an identity on the board; "
                   "the emulator forgets its devices, so the board registers afresh")
    p.add_argument("--partition", default="default", choices=boards.PARTITIONS)
    p.add_argument("--lan-ip", help="this PC's address the board reaches (default: the default route's)")
    p.add_argument("--wifi-ssid", help="the network the board joins (default $WIFI_SSID; password: $WIFI_PASS)")
    p.add_argument("--reg-port", type=int, default=8443, help="the emulator's HTTPS registration port")
    p.add_argument("--mqtt-port", type=int, default=8883, help="the emulator's MQTT-over-TLS port")
    p.add_argument("--timeout", type=int, default=180, help="seconds from boot to login")
    p.add_argument("--state", default=str(REPO / "build" / "hil"), help="settings, image, emulator state")
    p.add_argument("--interp", default="micropython", choices=("micropython", "cpython"), help="sim only")
    return p


def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
