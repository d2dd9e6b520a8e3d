"""Product registry (read from a JSON file) and device state (kept on disk).

Registry file: {"<platform>": {"<ProductId>": {product options}}, "console": {"username": ..}};
platforms are those of tools/platforms.py, each with its own options (OPTIONS in its module
tools/cloud/<platform>.py; the meaning of each is in tools/cloud/__init__.py). Keys starting with
"_" are comments, at any level.

Device state file: {"<platform>": {"<key>": {record}}}; a record holds what the platform issued
("psk", "cert_fp" or "secret"), "activated" and counters. Keys: "<ProductId>/<DeviceName>"
(Tencent), "<ProductSN>/<DeviceSN>" (UCloud), "<pid>/<unique>" (Protco), "<provision key>/<device
name>" (ThingsBoard).
"""

import json
import os
import re
import threading
from dataclasses import dataclass

REPLY_KNOBS = ("normal", "none", "other_id")
# MQTT-registration product ids end up in topics and client ids: keep them plain
MQTT_PID = re.compile(r"[A-Za-z0-9-]{1,64}")


@dataclass(frozen=True)
class Product:
    """One product line as configured in the console (options a platform does not use keep defaults)."""

    pid: str
    secret: str
    dynreg: bool = True
    auto_create: bool = True      # tencent; thingsboard: "allow to create new devices" (else pre-provisioned)
    auth: str = "psk"             # tencent
    devices: tuple = ()           # tencent: pre-created device names; thingsboard: pre-provisioned ones
    whitelist: tuple = None       # ucloud: DeviceSNs allowed to register (None = any)
    probe_commands: bool = True   # protco, thingsboard: command a device after its first report
    forced_code: object = None    # test knob: ucloud "retcode", protco "res"
    reply: str = "normal"         # test knob: "normal", "none" or "other_id"
    options: dict = None          # every option as given: what only its platform reads (aws, azure), checked there


@dataclass(frozen=True)
class Console:
    """The console login: may use any topic."""

    username: str
    password: str


@dataclass(frozen=True)
class Registry:
    """The registry file's content."""

    products: dict        # {platform: {pid: Product}}
    console: str = None   # the console login's username (its password is per state dir: state.py)


def platform_options():
    """{platform: the product options it understands}: each emulator module's OPTIONS (tools/cloud/<platform>.py)."""
    import importlib

    from ..platforms import PLATFORMS

    return dict((p, importlib.import_module(__package__ + "." + p).OPTIONS) for p in PLATFORMS)


def load_registry(path):
    """Read the registry file. Raises ValueError when malformed."""
    options = platform_options()
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError("registry: top level must be an object")
    platforms, console = {}, None
    for platform, products in raw.items():
        if platform.startswith("_"):
            continue
        if platform == "console":
            console = _console(products)
            continue
        if platform not in options:
            raise ValueError(f"registry: unknown platform {platform!r} (known: {', '.join(options)}, console)")
        if not isinstance(products, dict):
            raise ValueError(f"registry: {platform} must map product ids to products")
        platforms[platform] = {pid: _product(platform, pid, spec, options[platform])
                               for pid, spec in products.items() if not pid.startswith("_")}
    return Registry(platforms, console)


def _console(spec):
    fields = {k: v for k, v in spec.items() if not k.startswith("_")} if isinstance(spec, dict) else {}
    if "password" in fields:
        raise ValueError("registry: console takes no password: it is generated per state directory "
                         "(console.password) or given with --console-password")
    if set(fields) != {"username"} or not isinstance(fields["username"], str) or not fields["username"]:
        raise ValueError("registry: console must be {\"username\": \"..\"}")
    return fields["username"]


def _product(platform, pid, spec, options):
    where = f"registry: {platform}/{pid}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be an object")
    fields = {k: v for k, v in spec.items() if not k.startswith("_")}
    unknown = set(fields) - options
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    secret = fields.get("secret")
    # Tencent's payload key is the first 16 characters of the secret; the others use 16 or more too
    # (AWS templates have none: a claim certificate is the product's credential)
    if "secret" in options and (not isinstance(secret, str) or len(secret) < 16 or not secret.isascii()):
        raise ValueError(f"{where}: secret must be an ASCII string of at least 16 characters")
    if platform != "tencent" and not MQTT_PID.fullmatch(pid):
        raise ValueError(f"{where}: product id must be 1-64 characters of A-Z a-z 0-9 -")
    if fields.get("auth", "psk") not in ("psk", "cert"):
        raise ValueError(f"{where}: auth must be \"psk\" or \"cert\"")
    devices, whitelist = fields.get("devices", []), fields.get("whitelist")
    for name, names in (("devices", devices), ("whitelist", whitelist or [])):
        if not isinstance(names, list) or not all(isinstance(d, str) for d in names):
            raise ValueError(f"{where}: {name} must be a list of names")
    forced = fields.get("retcode", fields.get("res"))
    if forced is not None and (isinstance(forced, bool) or not isinstance(forced, (int, str))
                               or (platform == "protco" and not isinstance(forced, int))):
        raise ValueError(f"{where}: retcode must be a string or integer, res an integer")
    if fields.get("reply", "normal") not in REPLY_KNOBS:
        raise ValueError(f"{where}: reply must be one of {', '.join(REPLY_KNOBS)}")
    return Product(pid=pid, secret=secret, dynreg=bool(fields.get("dynreg", True)),
                   auto_create=bool(fields.get("auto_create", True)), auth=fields.get("auth", "psk"),
                   devices=tuple(devices), whitelist=None if whitelist is None else tuple(whitelist),
                   probe_commands=bool(fields.get("probe_commands", True)), forced_code=forced,
                   reply=fields.get("reply", "normal"), options=fields)


class DeviceStore:
    """Device records shared by the HTTP threads and the broker; every change is written at once.

    Hold `lock` around a get .. put sequence that must not interleave with another one.
    The file is the console: when something else replaces it while the emulator runs (e.g.
    forget_device() below, "the device was deleted in the console"), the next access reads it again.
    """

    def __init__(self, path):
        self.path = path
        self.lock = threading.RLock()
        self._data = {}
        self._seen = None
        self._refresh()

    def _stamp(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _refresh(self):
        """Re-read the file if it changed behind our back (an edit while the emulator runs)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return
        data = {}
        if stamp is not None:
            try:
                with open(self.path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError):
                return  # half-written by an editor: keep what we have, try again next time
        self._data, self._seen = data, stamp

    def get(self, platform, key):
        """A copy of the record, or None."""
        with self.lock:
            self._refresh()
            record = self._data.get(platform, {}).get(key)
            return dict(record) if record is not None else None

    def find(self, platform, field, value):
        """(key, copy of the record) of the first record whose field equals value, or (None, None)."""
        with self.lock:
            self._refresh()
            for key, record in self._data.get(platform, {}).items():
                if record.get(field) == value:
                    return key, dict(record)
        return None, None

    def put(self, platform, key, record):
        """Store the record and write the file (atomically: temp file + rename)."""
        with self.lock:
            self._refresh()
            self._data.setdefault(platform, {})[key] = dict(record)
            tmp = self.path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
            self._seen = self._stamp()


def forget_device(path, platform, key):
    """Delete a device record from a devices.json (running emulator or not), as the console's "delete
    device" does: the device's credentials stop working and it may register again. True if it existed."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    found = data.get(platform, {}).pop(key, None) is not None
    tmp = path + ".forget.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return found
