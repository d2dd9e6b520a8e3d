"""Factory provisioning: NVS partition images for dynreg boards from a batch file.

    python tools/factory/provision.py BATCH.csv --board ESP32_GENERIC [--partition ota] [--out build/nvs]
        [--only NAME] [--gen-csv] [--flash PORT [--force] [--dry-run]]

The batch file
--------------
A CSV file whose header names NVS keys of the "dynreg" namespace (README,
"NVS keys"): platform, prod_id, prod_secret, wifi_ssid, wifi_pass, reg_host,
reg_port, mqtt_host, mqtt_port, ca, dev_name, tls, ... One row per board, or
one row for the whole batch. An empty cell leaves the key unset; an empty
(or missing) dev_name means "the device derives its name from its Wi-Fi MAC".
Lines starting with "#" are comments.

Cells are text, stored as UTF-8 blobs, except for
- the keys dynreg reads as i32 (tls, reg_port, mqtt_port, login_ttl, retry_ms,
  retry_max_ms, max_tries, forget_prod, jitter_ms, wifi_timeout_ms, keepalive_s, max_msg,
  ack_ms, reg_timeout_ms, report_s, report_count): decimal or 0x-hex integers;
- ca: the path of the CA certificate file (PEM or DER; relative paths are
  relative to the CSV file), stored as DER.
Any other column is an NVS key too (text blob); "name:i32", "name:blob" and
"name:file" headers set the type of such a column.

Images
------
One image per row, <out>/<dev_name>.bin (or row<N>.bin for a name-less row),
or, when no row names a device and all rows are the same, one image for the
whole batch: <out>/<batch file name>.bin. Every image holds namespace
"dynreg" with i32 and blob entries only (MicroPython reads no NVS strings),
written by esp-idf-nvs-partition-gen (NVS format version 2), sized for the
board's NVS partition (boards/<BOARD>/board.json; --partition ota for the OTA
layout). --gen-csv also writes the generator's own CSV beside each image
(blobs as "data,base64", never "string"): `python -m esp_idf_nvs_partition_gen
generate X.csv X.bin <size>` re-creates the image byte for byte.

Everything is checked before anything is written: key length (15 bytes),
types, required fields (platform, prod_id, prod_secret unless the row brings
the device secret, ca unless tls=0), the platform, the CA certificate, blob
sizes (the device reads blobs up to 4096 bytes) and the partition capacity,
including room for what the device stores when it registers.

--flash PORT writes one image (the only one, or --only NAME) to the board on
PORT with esptool at the board's NVS offset, through tools/factory/flash.py: the
board's current NVS is saved first and, if it already holds a device secret,
nothing is written unless --force. --dry-run prints the commands instead.

Library use: settings_entries(settings) converts settings (the format of the
simulated board's settings files too: str -> blob, int -> i32, bytes -> blob,
{"file": path} -> the file, PEM as DER) to NVS entries; build_image(settings,
size) returns the image bytes.

Exit codes: 0 done; 1 a board refused (flash); 2 bad input (nothing written).
"""
import argparse
import base64
import binascii
import csv
import io
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.platforms import PLATFORMS  # noqa: E402  the firmware's list (dynreg/flow.py)

NAMESPACE = "dynreg"
MAX_KEY_BYTES = 15
MAX_DEVICE_BLOB = 4096  # dynreg/store.py grows its read buffer up to 4096 bytes
DEFAULT_NVS_SIZE = 0x6000
# The keys dynreg reads (README "NVS keys") and their NVS types.
I32_KEYS = ("tls", "reg_port", "mqtt_port", "login_ttl", "retry_ms", "retry_max_ms", "max_tries",
            "forget_prod", "jitter_ms", "wifi_timeout_ms", "keepalive_s", "max_msg", "ack_ms", "reg_timeout_ms",
            "report_s", "report_count")
BLOB_KEYS = ("platform", "wifi_ssid", "wifi_pass", "ca", "prod_id", "prod_secret", "dev_name", "dev_secret",
             "dev_cert", "dev_key", "reg_host", "reg_api", "sign_method", "mqtt_host", "region", "barcode",
             "replace_pid", "replace_sec", "dev_uuid", "dev_pid")
KNOWN_KEYS = dict([(k, "i32") for k in I32_KEYS] + [(k, "blob") for k in BLOB_KEYS])
FILE_COLUMNS = ("ca",)  # columns holding a file path by default
# Values meaning "no device secret yet" (firmware/lib/dynreg/store.py NULL_SECRETS).
NULL_SECRETS = (b"", b"YOUR_DEVICE_SECRET", b"YOUR_IOT_PSK", b"YOUR_DEVICE_CERT_FILE_NAME",
                b"YOUR_DEVICE_PRIVATE_KEY_FILE_NAME")
IDENTITY_KEYS = ("dev_secret", "dev_cert", "dev_key")
# What each platform stores at registration, with generous sizes: the image must leave room for it.
# A platform not named here stores a device secret only.
REGISTRATION_RESERVE = {
    "tencent": {"dev_secret": 64, "dev_cert": 2048, "dev_key": 2048},
    "protco": {"dev_secret": 64, "dev_uuid": 64, "dev_pid": 64},
}
DEFAULT_RESERVE = {"dev_secret": 64}
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


class ProvisionError(Exception):
    """Bad settings or batch input, found before anything is written (message is safe to print)."""


# --------------------------------------------------------------------------- settings -> entries

def pem_to_der(data, name):
    """The DER bytes of a single-object PEM file."""
    blocks = _PEM_BLOCK.findall(data)
    if len(blocks) != 1:
        raise ProvisionError("%s holds %d PEM objects; an NVS key holds exactly one" % (name, len(blocks)))
    body = blocks[0][1]
    if b":" in body:
        raise ProvisionError("%s: encrypted PEM is not supported" % name)
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        raise ProvisionError("%s: bad base64 in PEM" % name) from None


def file_bytes(path, key):
    """A file's bytes for NVS key `key` (PEM converted to DER)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ProvisionError("%s: cannot read %s: %s" % (key, path, exc.strerror)) from None
    if data.lstrip().startswith(b"-----BEGIN"):
        data = pem_to_der(data, path)
    return data


def check_key(key, what="NVS key"):
    """Raise ProvisionError unless `key` is a usable NVS key (`what` names it in the message)."""
    if not isinstance(key, str) or not key:
        raise ProvisionError("%s %r: keys are non-empty strings" % (what, key))
    size = len(key.encode())
    if size > MAX_KEY_BYTES:
        raise ProvisionError("%s %r is %d bytes; NVS keys are at most %d" % (what, key, size, MAX_KEY_BYTES))


def resolve_file(spec, base_dir=None, cloud_state=None):
    """Path of a {"file": spec} reference: relative to base_dir; "@cloud/x" = x in the emulator's state dir."""
    if spec.startswith("@cloud/"):
        if cloud_state is None:
            raise ProvisionError("%s: no cloud emulator state directory given" % spec)
        return Path(cloud_state) / spec[len("@cloud/"):]
    return Path(base_dir or ".") / spec


def settings_entries(settings, base_dir=None, cloud_state=None):
    """{key: int | bytes}: the NVS entries for a flat settings dict.

    str -> UTF-8 blob, int -> i32, bytes -> blob, {"file": path} -> the file's
    bytes (PEM converted to DER; path relative to base_dir, "@cloud/x" in
    cloud_state). Keys starting with "_" are comments and skipped.
    """
    entries = {}
    for key, value in settings.items():
        if isinstance(key, str) and key.startswith("_"):
            continue
        check_key(key, "settings key")
        if isinstance(value, bool) or not isinstance(value, (str, int, bytes, bytearray, dict)):
            raise ProvisionError("settings key %r: value must be a string, an int, bytes or {\"file\": path}" % key)
        if isinstance(value, str):
            entries[key] = value.encode()
        elif isinstance(value, int):
            if not -(2**31) <= value < 2**31:
                raise ProvisionError("settings key %r: int does not fit in an i32" % key)
            entries[key] = value
        elif isinstance(value, (bytes, bytearray)):
            entries[key] = bytes(value)
        else:
            if set(value) != {"file"} or not isinstance(value["file"], str):
                raise ProvisionError("settings key %r: a dict value must be {\"file\": \"path\"}" % key)
            path = resolve_file(value["file"], base_dir, cloud_state)
            if not path.exists() and value["file"].startswith("@cloud/"):
                raise ProvisionError("settings key %r: cannot read %s (the cloud emulator creates it on start)"
                                     % (key, path))
            entries[key] = file_bytes(path, key)
    return entries


def read_settings(path):
    """Load a settings JSON file: {key: str | int | {"file": path}}, comments dropped, checked."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise ProvisionError("cannot read settings %s: %s" % (path, exc)) from None
    if not isinstance(doc, dict):
        raise ProvisionError("settings %s: expected a JSON object" % path)
    settings = {}
    for key, value in doc.items():
        if key.startswith("_"):
            continue
        check_key(key, "settings key")
        if isinstance(value, bool) or not isinstance(value, (str, int, dict)):
            raise ProvisionError("settings key %r: value must be a string, an int or {\"file\": path}" % key)
        if isinstance(value, int) and not -(2**31) <= value < 2**31:
            raise ProvisionError("settings key %r: int does not fit in an i32" % key)
        if isinstance(value, dict) and (set(value) != {"file"} or not isinstance(value["file"], str)):
            raise ProvisionError("settings key %r: a dict value must be {\"file\": \"path\"}" % key)
        settings[key] = value
    return settings


# --------------------------------------------------------------------------- entries -> image

def _generator():
    try:
        from esp_idf_nvs_partition_gen import nvs_partition_gen
    except ImportError:
        raise ProvisionError("esp-idf-nvs-partition-gen is not installed (pip install -r requirements.txt)") from None
    return nvs_partition_gen


def _check_size(size):
    if not isinstance(size, int) or size % 0x1000 or size < 0x3000:
        raise ProvisionError("NVS partition size %r: must be a multiple of 0x1000, at least 0x3000" % (size,))


def image_from_entries(entries, size=DEFAULT_NVS_SIZE):
    """The NVS partition image (bytes, `size` long) holding `entries` in namespace "dynreg"."""
    _check_size(size)
    gen = _generator()
    out = io.BytesIO()
    try:
        # Like the generator's CLI: one page stays reserved for the NVS library's garbage collection.
        nvs = gen.nvs_open(out, size - 0x1000, gen.Page.VERSION2)
        gen.write_entry(nvs, NAMESPACE, "namespace", "", "")
        for key, value in entries.items():
            check_key(key)
            if isinstance(value, int):
                gen.write_entry(nvs, key, "data", "i32", str(value))
            else:
                gen.write_entry(nvs, key, "data", "base64", base64.b64encode(value).decode())
        gen.nvs_close(nvs)
    except (gen.InsufficientSizeError, gen.PageFullError):
        raise ProvisionError("the values (%d bytes) do not fit in a %#x-byte NVS partition"
                             % (sum(len(v) if isinstance(v, bytes) else 4 for v in entries.values()), size)) from None
    except gen.InputError as exc:
        raise ProvisionError("NVS generator: %s" % str(exc).strip()) from None
    image = out.getvalue()
    if len(image) != size:  # the generator fills every page; anything else is a bug
        raise ProvisionError("NVS generator produced %d bytes for a %#x-byte partition" % (len(image), size))
    return image


def build_image(settings, size=DEFAULT_NVS_SIZE):
    """The NVS partition image (bytes) for settings: flat dict NVS key -> str | int | bytes."""
    return image_from_entries(settings_entries(settings), size)


def generator_csv(entries):
    """esp-idf-nvs-partition-gen's CSV for `entries`: i32 and base64 blobs, never string."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "type", "encoding", "value"])
    writer.writerow([NAMESPACE, "namespace", "", ""])
    for key, value in entries.items():
        if isinstance(value, int):
            writer.writerow([key, "data", "i32", str(value)])
        else:
            writer.writerow([key, "data", "base64", base64.b64encode(value).decode()])
    return out.getvalue()


# --------------------------------------------------------------------------- checks

def is_null(value):
    """True if a device-secret value means "not registered yet" (dynreg's null-secret rule)."""
    return value is None or (isinstance(value, bytes) and value.strip() in NULL_SECRETS)


def identity_keys(entries):
    """The identity keys (dev_secret, dev_cert, dev_key) that hold a real value."""
    return [k for k in IDENTITY_KEYS if k in entries and not is_null(entries[k])]


def check_certificate(der, what):
    """Raise ProvisionError unless `der` is one X.509 certificate."""
    from cryptography import x509

    try:
        x509.load_der_x509_certificate(der)
    except ValueError:
        raise ProvisionError("%s is not an X.509 certificate (PEM or DER)" % what) from None


def check_entries(entries, size, where="settings"):
    """Check a board's NVS entries for what dynreg needs; raise ProvisionError naming `where`."""
    def fail(message):
        raise ProvisionError("%s: %s" % (where, message))

    for key, value in entries.items():
        kind = KNOWN_KEYS.get(key)
        if kind == "i32" and not isinstance(value, int):
            fail("%s must be an integer (dynreg reads it as i32)" % key)
        if kind == "blob" and isinstance(value, int):
            fail("%s must be text (dynreg reads it as a blob)" % key)
        if isinstance(value, bytes) and len(value) > MAX_DEVICE_BLOB:
            fail("%s is %d bytes; the device reads blobs up to %d" % (key, len(value), MAX_DEVICE_BLOB))
    platform = entries.get("platform")
    if not platform:
        fail("platform is missing (one of %s)" % ", ".join(PLATFORMS))
    if platform.decode(errors="replace") not in PLATFORMS:
        fail("unknown platform %r (one of %s)" % (platform.decode(errors="replace"), ", ".join(PLATFORMS)))
    if not entries.get("prod_id"):
        fail("prod_id is missing (Tencent ProductId / UCloud ProductSN / Protco pid)")
    registered = identity_keys(entries)
    if not entries.get("prod_secret") and not registered:
        fail("prod_secret is missing (needed to register)")
    if entries.get("tls", 1) != 0 and not entries.get("ca"):
        fail("ca is missing (the CA certificate of the cloud's servers; tls=0 only for plain TCP)")
    if entries.get("ca"):
        check_certificate(entries["ca"], "%s: ca" % where)
    name = entries.get("dev_name", b"").decode(errors="replace")
    if name and platform == b"ucloud" and not re.fullmatch(r"[A-Za-z0-9\-_@:]{4,64}", name):
        fail("dev_name %r: UCloud DeviceSN is 4-64 characters of A-Z a-z 0-9 - _ @ :" % name)
    if name and platform == b"protco" and "_" in name:
        fail("dev_name %r: a Protco unique id has no '_'" % name)
    try:
        image_from_entries(entries, size)
    except ProvisionError as exc:
        fail(str(exc))
    reserve = dict((k, b"\x00" * n) for k, n in REGISTRATION_RESERVE.get(platform.decode(), DEFAULT_RESERVE).items()
                   if k not in entries)
    if reserve and not registered:
        try:
            image_from_entries(dict(entries, **reserve), size)
        except ProvisionError:
            fail("fits in the %#x-byte NVS partition, but leaves no room for what the device stores when it "
                 "registers (%s)" % (size, ", ".join(sorted(reserve))))


# --------------------------------------------------------------------------- the batch file

def _column(header):
    """(key, kind) of a batch file column: kind is i32, blob or file."""
    name, _, kind = header.strip().partition(":")
    name = name.strip()
    kind = kind.strip()
    check_key(name, "column")
    if kind:
        if kind not in ("i32", "blob", "file"):
            raise ProvisionError("column %r: type must be i32, blob or file" % header)
        if name in KNOWN_KEYS and (kind == "i32") != (KNOWN_KEYS[name] == "i32"):
            raise ProvisionError("column %r: dynreg reads %s as %s" % (header, name, KNOWN_KEYS[name]))
        return name, kind
    if name in FILE_COLUMNS:
        return name, "file"
    return name, KNOWN_KEYS.get(name, "blob")


def read_batch(path):
    """The batch file's rows as settings dicts ({key: str | int | {"file": absolute path}}), checked for form."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeError) as exc:
        raise ProvisionError("cannot read %s: %s" % (path, exc)) from None
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    rows = list(csv.reader(lines))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ProvisionError("%s: no header row" % path)
    header, data = rows[0], rows[1:]
    try:
        columns = [_column(h) for h in header]
    except ProvisionError as exc:
        raise ProvisionError("%s: %s" % (path, exc)) from None
    keys = [k for k, _ in columns]
    dupes = sorted(set(k for k in keys if keys.count(k) > 1))
    if dupes:
        raise ProvisionError("%s: column %s appears more than once" % (path, ", ".join(dupes)))
    if not data:
        raise ProvisionError("%s: no rows (one row per board, or one row for the whole batch)" % path)
    batch = []
    for number, row in enumerate(data, 1):
        where = "%s row %d" % (path.name, number)
        if len(row) > len(columns):
            raise ProvisionError("%s: %d cells for %d columns" % (where, len(row), len(columns)))
        settings = {}
        for (key, kind), cell in zip(columns, row):
            cell = cell.strip()
            if not cell:
                continue
            if kind == "i32":
                try:
                    value = int(cell, 0)
                except ValueError:
                    raise ProvisionError("%s: %s=%r is not an integer" % (where, key, cell)) from None
                if not -(2**31) <= value < 2**31:
                    raise ProvisionError("%s: %s=%s does not fit in an i32" % (where, key, cell))
                settings[key] = value
            elif kind == "file":
                settings[key] = {"file": str((path.parent / cell).resolve())}
            else:
                settings[key] = cell
        batch.append(settings)
    return batch


def unknown_columns(batch):
    """Keys in the batch that dynreg does not read (typos show up here)."""
    return sorted(set(k for settings in batch for k in settings) - set(KNOWN_KEYS))


def _file_name(name):
    return re.sub(r"[^A-Za-z0-9._@-]", "_", name)


def plan_images(batch, size, batch_name="batch"):
    """[(image name, entries, where)] for a batch, every row checked; raises ProvisionError on the first problem."""
    rows = []
    for number, settings in enumerate(batch, 1):
        where = "row %d" % number
        try:
            entries = settings_entries(settings)
        except ProvisionError as exc:
            raise ProvisionError("%s: %s" % (where, exc)) from None
        if "ca" in settings and isinstance(settings["ca"], dict):
            where_ca = "%s: ca (%s)" % (where, settings["ca"]["file"])
        else:
            where_ca = "%s: ca" % where
        try:
            check_entries(entries, size, where)
        except ProvisionError as exc:
            raise ProvisionError(str(exc).replace("%s: ca" % where, where_ca, 1)) from None
        rows.append((number, entries))
    names = [e.get("dev_name", b"").decode() for _, e in rows]
    named = [n for n in names if n]
    dupes = sorted(set(n for n in named if named.count(n) > 1))
    if dupes:
        raise ProvisionError("dev_name %s appears in more than one row: every board needs its own identity"
                             % ", ".join(repr(d) for d in dupes))
    if not named and all(e == rows[0][1] for _, e in rows):
        return [(_file_name(batch_name), rows[0][1], "the whole batch (%d rows, names from the MAC)" % len(rows))]
    images = []
    for (number, entries), name in zip(rows, names):
        images.append((_file_name(name) if name else "row%d" % number, entries, "row %d" % number))
    files = [n for n, _, _ in images]
    clashes = sorted(set(n for n in files if files.count(n) > 1))
    if clashes:
        raise ProvisionError("device names map to the same image file name: %s" % ", ".join(clashes))
    return images


# --------------------------------------------------------------------------- output

class Progress:
    """A stdlib progress bar on stderr, shown only for more than one item."""

    def __init__(self, total, stream=None, width=30):
        self.total = total
        self.stream = stream or sys.stderr
        self.width = width
        self.done = 0

    def step(self, label=""):
        self.done += 1
        if self.total <= 1:
            return
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write("\r[%s] %d/%d %-24.24s" % (bar, self.done, self.total, label))
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def build_parser():
    parser = argparse.ArgumentParser(
        description="Make NVS partition images for dynreg boards from a batch file (CSV).",
        epilog="Column reference and examples: README, 'From factory to field'.")
    parser.add_argument("batch", help="batch file (CSV): one row per board, or one row for the whole batch")
    parser.add_argument("--board", required=True, help="board (boards/<BOARD>/board.json): sets the NVS size")
    parser.add_argument("--partition", choices=("default", "ota"), default="default",
                        help="partition layout of the firmware (ota: the smaller NVS of OTA builds)")
    parser.add_argument("--out", default=str(REPO / "build" / "nvs"), help="output directory (default build/nvs)")
    parser.add_argument("--only", help="make (and flash) only this image: a dev_name or row<N>")
    parser.add_argument("--gen-csv", action="store_true",
                        help="also write the esp-idf-nvs-partition-gen CSV beside each image")
    parser.add_argument("--flash", metavar="PORT", help="write the image to the board on PORT (esptool)")
    parser.add_argument("--force", action="store_true", help="with --flash: overwrite a device secret on the board")
    parser.add_argument("--dry-run", action="store_true", help="with --flash: print the commands, run nothing")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from tools.factory import boards

    def error(message, code=2):
        print("provision: error: %s" % message, file=sys.stderr)
        return code

    try:
        board = boards.load(args.board, args.partition)
    except boards.BoardError as exc:
        return error(exc)
    size = board["nvs_size"]
    try:
        batch = read_batch(args.batch)
        images = plan_images(batch, size, Path(args.batch).stem)
    except ProvisionError as exc:
        return error(exc)
    if args.only:
        images = [i for i in images if i[0] == args.only]
        if not images:
            return error("--only %s: no such image in %s" % (args.only, args.batch))
    if args.flash and len(images) != 1:
        return error("--flash writes one image; this batch makes %d (choose one with --only)" % len(images))
    for key in unknown_columns(batch):
        print("provision: note: %r is not a key dynreg reads; stored as given" % key, file=sys.stderr)
    # Everything checked: build, then write.
    built = []
    progress = Progress(len(images))
    for name, entries, where in images:
        built.append((name, image_from_entries(entries, size), entries, where))
        progress.step(name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, image, entries, where in built:
        path = out / (name + ".bin")
        path.write_bytes(image)
        if args.gen_csv:
            (out / (name + ".csv")).write_text(generator_csv(entries))
        print("%s: %s (%s, %s, %d keys: %s)" % (path, where, board["board"], hex(size), len(entries),
                                                  ", ".join(entries)))
    if args.flash:
        # The flash tool builds on this module (NVS facts, images); it runs as its own process so that
        # the two do not import each other.
        import subprocess

        sys.stdout.flush()
        return subprocess.run([sys.executable, str(REPO / "tools" / "factory" / "flash.py"), "nvs-write",
                               "--board", args.board, "--partition", args.partition, "--port", args.flash,
                               "--image", str(out / (built[0][0] + ".bin"))]
                              + (["--force"] if args.force else []) + (["--dry-run"] if args.dry_run else [])).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
