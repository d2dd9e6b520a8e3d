"""Factory provisioning: NVS partition images for dynreg boards from a batch file.

    python tools/factory/provision.py BATCH.csv --board ESP32_GENERIC [--partition ota] [--out build/nvs]
        [--only NAME] [--gen-csv] [--flash PORT [--force] [--dry-run]]

The batch file
--------------
A CSV file whose header names NVS keys of the "dynreg" namespace
(docs/nvs-keys.md): platform, prod_id, prod_secret, wifi_ssid, wifi_pass, reg_host,
reg_port, mqtt_host, mqtt_port, ca, dev_name, tls, ... One row per board, or
one row for the whole batch. An empty cell leaves the key unset; an empty
(or missing) dev_name means "the device derives its name from its Wi-Fi MAC".
Lines starting with "#" are comments.

Each column's type comes from the NVS schema (tools/factory/nvs_schema.py,
docs/nvs-keys.md): text cells are stored as UTF-8 blobs, i32 keys take decimal
or 0x-hex integers, binary keys (ca) the path of a file (PEM or DER; relative
to the CSV file), stored as DER. A ca left empty is the platform's own CA
(tools/factory/ca/<platform>.pem) when TLS is on and the hosts are the
platform's. A column that is not a key dynreg reads is an error (a typo)
unless its header declares it: "name:i32", "name:blob" or "name:file".

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

Everything is checked before anything is written, and an error names the
row, column and key but never a cell's value (a shifted row puts a secret
under any column): the cell count of each row, key length (15 bytes),
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

Images and --gen-csv copies hold secrets: they are created 0600 whatever the umask.
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

from tools.factory import nvs_schema as schema  # noqa: E402
from tools.factory import private  # noqa: E402
from tools.factory.nvs_schema import (BINARY, I32, IDENTITY_KEYS, NAMESPACE, PARTITION_SIZE,  # noqa: E402
                                      PLATFORMS, SchemaError, is_null)

CA_DIR = REPO / "tools" / "factory" / "ca"  # the clouds' public CAs, one <platform>.pem each
# What each platform stores at registration, with generous sizes: the image must leave room for it.
# A platform not named here stores a device secret only.
REGISTRATION_RESERVE = {
    "tencent": {"dev_secret": 64, "dev_cert": 2048, "dev_key": 2048, "dev_id": 96},
    "protco": {"dev_secret": 64, "dev_uuid": 64, "dev_pid": 64, "dev_id": 96},
    "thingsboard": {"tb_pending": 32, "tb_client": 256, "tb_user": 256, "dev_secret": 64, "dev_id": 96},
    "aws": {"dev_cert": 1536, "dev_key": 1280, "thing_name": 128, "dev_id": 160},
}
DEFAULT_RESERVE = {"dev_secret": 64, "dev_id": 96}
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
# Errors never show a value (a shifted row puts a secret under any column); a file name is shown only
# when it looks like one of a certificate or key file.
_SHOWN_FILE = re.compile(r"[\w.@+-]+\.(pem|der|crt|cer|key)", re.I)


class ProvisionError(Exception):
    """Bad settings or batch input, found before anything is written.

    The message names the file, row, column and key; it never holds a value (safe to print).
    """


def _at(where, key, columns=None):
    """Where a key sits: "lot7.csv row 2, column 9" for a batch file (columns: key -> number), else `where`."""
    return "%s, column %d" % (where, columns[key]) if columns and key in columns else where


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


def file_label(path):
    """How errors name a file: its path if its name looks like a certificate file, else not at all."""
    return str(path) if _SHOWN_FILE.fullmatch(Path(path).name) else "the file it names"


def file_bytes(path, key):
    """A file's bytes for NVS key `key` (PEM converted to DER)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ProvisionError("%s: cannot read %s: %s" % (key, file_label(path), exc.strerror)) from None
    if data.lstrip().startswith(b"-----BEGIN"):
        data = pem_to_der(data, "%s (%s)" % (key, file_label(path)))
    return data


def resolve_file(spec, base_dir=None, cloud_state=None):
    """Path of a {"file": spec} reference: relative to base_dir; "@cloud/x" = x in the emulator's state dir."""
    if spec.startswith("@cloud/"):
        if cloud_state is None:
            raise ProvisionError("%s: no cloud emulator state directory given" % spec)
        return Path(cloud_state) / spec[len("@cloud/"):]
    return Path(base_dir or ".") / spec


def platform_ca(settings):
    """{"file": tools/factory/ca/<platform>.pem} when `ca` is left empty, TLS is on and every host the
    device dials is the platform's own; else None (localhost, an emulator, a platform without a public CA)."""
    platform = settings.get("platform")
    if settings.get("ca") or settings.get("tls", 1) == 0 or platform not in PLATFORMS:
        return None
    path = CA_DIR / ("%s.pem" % platform)
    hosts = [settings.get(k) or None for k in ("reg_host", "mqtt_host")]
    if path.is_file() and all(isinstance(h, (str, type(None))) and schema.own_host(platform, h) for h in hosts):
        return {"file": str(path)}
    return None


def _kind(key, value):
    """The schema type of a key; a key dynreg does not read takes the type of its value (library use)."""
    if key in schema.BY_NAME:
        return schema.BY_NAME[key].kind
    if isinstance(value, int) and not isinstance(value, bool):
        return I32
    return BINARY if isinstance(value, dict) else schema.TEXT


def settings_entries(settings, base_dir=None, cloud_state=None, where="settings", columns=None):
    """{key: int | bytes}: the NVS entries for a flat settings dict, each value checked by the schema.

    str -> UTF-8 blob, int -> i32, bytes -> blob, {"file": path} -> the file's bytes (PEM converted
    to DER; path relative to base_dir, "@cloud/x" in cloud_state). Keys starting with "_" are
    comments and skipped; an empty binary value (ca "") is unset, and an unset ca is the platform's
    own CA where platform_ca() says so. Errors name `where` (and the column, for a batch file).
    """
    default_ca = platform_ca(settings)
    if default_ca:
        settings = dict(settings, ca=default_ca)
    entries = {}
    for key, value in settings.items():
        if isinstance(key, str) and key.startswith("_"):
            continue
        try:
            schema.check_name(key)
            kind = _kind(key, value)
            if kind == BINARY and value == "":
                continue
            schema.check_value(key, kind, value)
            if kind == I32:
                entries[key] = value
            elif isinstance(value, (bytes, bytearray)):
                entries[key] = bytes(value)
            elif kind == BINARY:
                path = resolve_file(value["file"], base_dir, cloud_state)
                if not path.exists() and value["file"].startswith("@cloud/"):
                    raise ProvisionError("%s: cannot read %s (the cloud emulator creates it on start)" % (key, path))
                entries[key] = file_bytes(path, key)
                if len(entries[key]) > schema.MAX_BLOB:
                    raise ProvisionError("%s is %d bytes; the device reads blobs up to %d"
                                         % (key, len(entries[key]), schema.MAX_BLOB))
                if key == "ca":
                    check_certificate(entries[key], "ca (%s)" % file_label(path))
            else:
                entries[key] = value.encode()
        except (SchemaError, ProvisionError) as exc:
            raise ProvisionError("%s: %s" % (_at(where, key, columns), exc)) from None
    return entries


def read_settings(path):
    """Load a settings JSON file: {key: str | int | {"file": path}}, comments dropped, checked by the schema.

    Keys are those dynreg reads (docs/nvs-keys.md) or declared "name:blob" / "name:i32" /
    "name:file" for the application's own; a wrong type or an unknown key is an error naming it.
    """
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise ProvisionError("cannot read settings %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:  # the position only: the decoder's message may quote the text
        raise ProvisionError("settings %s: not JSON (line %s, column %s)"
                             % (path, getattr(exc, "lineno", "?"), getattr(exc, "colno", "?"))) from None
    if not isinstance(doc, dict):
        raise ProvisionError("settings %s: expected a JSON object" % path)
    settings = {}
    for position, (key, value) in enumerate(doc.items(), 1):
        if key.startswith("_"):
            continue
        try:
            name, kind = schema.declared(key, position)
            if not (kind == BINARY and value == ""):
                schema.check_value(name, kind, value)
        except SchemaError as exc:
            raise ProvisionError("settings %s: %s" % (path, exc)) from None
        settings[name] = value
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


def image_from_entries(entries, size=PARTITION_SIZE):
    """The NVS partition image (bytes, `size` long) holding `entries` in namespace "dynreg"."""
    _check_size(size)
    gen = _generator()
    out = io.BytesIO()
    try:
        # Like the generator's CLI: one page stays reserved for the NVS library's garbage collection.
        nvs = gen.nvs_open(out, size - 0x1000, gen.Page.VERSION2)
        gen.write_entry(nvs, NAMESPACE, "namespace", "", "")
        for key, value in entries.items():
            schema.check_name(key)
            if isinstance(value, int):
                gen.write_entry(nvs, key, "data", "i32", str(value))
            else:
                gen.write_entry(nvs, key, "data", "base64", base64.b64encode(value).decode())
        gen.nvs_close(nvs)
    except (gen.InsufficientSizeError, gen.PageFullError):
        raise ProvisionError("the values (%d bytes) do not fit in a %#x-byte NVS partition"
                             % (sum(len(v) if isinstance(v, bytes) else 4 for v in entries.values()), size)) from None
    except gen.InputError:  # its message quotes the value
        raise ProvisionError("the NVS generator refused an entry") from None
    except SchemaError as exc:
        raise ProvisionError(str(exc)) from None
    image = out.getvalue()
    if len(image) != size:  # the generator fills every page; anything else is a bug
        raise ProvisionError("NVS generator produced %d bytes for a %#x-byte partition" % (len(image), size))
    return image


def build_image(settings, size=PARTITION_SIZE):
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


def check_entries(entries, size, where="settings", columns=None):
    """Check a board's NVS entries for what dynreg needs; raise ProvisionError naming where, column and key."""
    def fail(key, message):
        raise ProvisionError("%s: %s" % (_at(where, key, columns), message))

    platform = entries.get("platform")
    if not platform:
        fail("platform", "platform is missing (one of %s)" % ", ".join(PLATFORMS))
    if platform.decode(errors="replace") not in PLATFORMS:
        fail("platform", "platform is not one of %s" % ", ".join(PLATFORMS))
    if not entries.get("prod_id"):
        fail("prod_id", "prod_id is missing (Tencent ProductId / UCloud ProductSN / Protco pid)")
    registered = identity_keys(entries)
    if platform == b"aws":  # the claim certificate is the product's credential
        if not (entries.get("claim_cert") and entries.get("claim_key")) and not registered:
            fail("claim_key", "claim_cert and claim_key are missing (the claim certificate registers the device)")
    elif not entries.get("prod_secret") and not registered:
        fail("prod_secret", "prod_secret is missing (needed to register)")
    if entries.get("tls", 1) != 0 and not entries.get("ca"):
        ours = (CA_DIR / ("%s.pem" % platform.decode())).is_file()
        fail("ca", "ca is missing (the CA certificate of the cloud's servers; %s; tls=0 only for plain TCP)"
             % ("left empty, it is the platform's own (tools/factory/ca/) only for the platform's own hosts" if ours
                else "this platform publishes none (tools/factory/ca/SOURCES.md)"))
    name = entries.get("dev_name", b"").decode(errors="replace")
    if name and platform == b"ucloud" and not re.fullmatch(r"[A-Za-z0-9\-_@:]{4,64}", name):
        fail("dev_name", "dev_name: UCloud DeviceSN is 4-64 characters of A-Z a-z 0-9 - _ @ :")
    if name and platform == b"protco" and "_" in name:
        fail("dev_name", "dev_name: a Protco unique id has no '_'")
    try:
        image_from_entries(entries, size)
    except ProvisionError as exc:
        raise ProvisionError("%s: %s" % (where, exc)) from None
    reserve = dict((k, b"\x00" * n) for k, n in REGISTRATION_RESERVE.get(platform.decode(), DEFAULT_RESERVE).items()
                   if k not in entries)
    if reserve and not registered:
        try:
            image_from_entries(dict(entries, **reserve), size)
        except ProvisionError:
            raise ProvisionError("%s: fits in the %#x-byte NVS partition, but leaves no room for what the device "
                                 "stores when it registers (%s)" % (where, size, ", ".join(sorted(reserve)))) from None


# --------------------------------------------------------------------------- the batch file

class Row(dict):
    """One board's settings from a batch file, with where it came from: `where` ("lot7.csv row 2") and
    `columns` (key -> column number) for error messages."""

    def __init__(self, where, columns):
        dict.__init__(self)
        self.where, self.columns = where, columns


def read_batch(path):
    """The batch file's rows as Rows ({key: str | int | {"file": absolute path}}), checked by the schema.

    Errors name the file, row, column and key, never a cell's value.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ProvisionError("cannot read %s: %s" % (path, exc.strerror)) from None
    except UnicodeDecodeError as exc:
        line = text_line(path.read_bytes(), exc.start)
        raise ProvisionError("%s line %d: not UTF-8 text (a spreadsheet export needs \"CSV UTF-8\")" % (path, line)) \
            from None
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    try:
        rows = [r for r in csv.reader(lines) if any(cell.strip() for cell in r)]
    except csv.Error as exc:
        raise ProvisionError("%s: not a CSV file (%s)" % (path, str(exc).split(":")[0])) from None
    if not rows:
        raise ProvisionError("%s: no header row" % path)
    header, data = rows[0], rows[1:]
    columns = []
    for number, cell in enumerate(header, 1):
        try:
            columns.append(schema.declared(cell, number))
        except SchemaError as exc:
            raise ProvisionError("%s header, column %d: %s" % (path.name, number, exc)) from None
    keys = [k for k, _ in columns]
    dupes = sorted(set(k for k in keys if keys.count(k) > 1))
    if dupes:
        raise ProvisionError("%s: column %s appears more than once" % (path, ", ".join(dupes)))
    if not data:
        raise ProvisionError("%s: no rows (one row per board, or one row for the whole batch)" % path)
    numbers = dict((k, n) for n, k in enumerate(keys, 1))
    batch = []
    for number, cells in enumerate(data, 1):
        settings = Row("%s row %d" % (path.name, number), numbers)
        if len(cells) != len(columns):
            raise ProvisionError("%s: %d cells for %d columns (a missing or extra comma shifts every cell after it; "
                                 "an empty value is an empty cell, a comma inside a value needs quotes)"
                                 % (settings.where, len(cells), len(columns)))
        for (key, kind), cell in zip(columns, cells):
            cell = cell.strip()
            if not cell:
                continue
            at = _at(settings.where, key, numbers)
            if kind == I32:
                try:
                    settings[key] = int(cell, 0)
                except ValueError:
                    raise ProvisionError("%s: %s is not an integer (dynreg reads it as i32)" % (at, key)) from None
            elif kind == BINARY:
                settings[key] = {"file": str((path.parent / cell).resolve())}
            else:
                settings[key] = cell
            try:
                schema.check_value(key, kind, settings[key])
            except SchemaError as exc:
                raise ProvisionError("%s: %s" % (at, exc)) from None
        batch.append(settings)
    return batch


def text_line(data, offset):
    """The 1-based line number of byte `offset` in data."""
    return data.count(b"\n", 0, offset) + 1


def _file_name(name):
    return re.sub(r"[^A-Za-z0-9._@-]", "_", name)


def plan_images(batch, size, batch_name="batch"):
    """[(image name, entries, where)] for a batch, every row checked; raises ProvisionError on the first problem."""
    rows = []
    for number, settings in enumerate(batch, 1):
        where = getattr(settings, "where", "row %d" % number)
        columns = getattr(settings, "columns", None)
        entries = settings_entries(settings, where=where, columns=columns)
        check_entries(entries, size, where, columns)
        rows.append((number, entries))
    names = [e.get("dev_name", b"").decode() for _, e in rows]
    named = [(n, number) for n, (number, _) in zip(names, rows) if n]
    for name, number in named:
        same = [str(other) for n, other in named if n == name]
        if len(same) > 1:
            raise ProvisionError("rows %s have the same dev_name: every board needs its own identity"
                                 % ", ".join(same))
    if not named and all(e == rows[0][1] for _, e in rows):
        return [(_file_name(batch_name), rows[0][1], "the whole batch (%d rows, names from the MAC)" % len(rows))]
    images = []
    for (number, entries), name in zip(rows, names):
        images.append((_file_name(name) if name else "row%d" % number, entries, "row %d" % number))
    files = [n for n, _, _ in images]
    clashes = sorted(set(n for n in files if files.count(n) > 1))
    if clashes:
        raise ProvisionError("device names of rows %s map to the same image file name"
                             % ", ".join(where for n, _, where in images if n in clashes))
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
        epilog="Column reference and examples: docs/factory.md and docs/nvs-keys.md.")
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
    shipped = sorted(set(platform_ca(r)["file"] for r in batch if platform_ca(r)))
    for path in shipped:
        print("provision: note: ca left empty: using the platform's own CA %s" % Path(path).relative_to(REPO),
              file=sys.stderr)
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
        private.write(path, image)
        if args.gen_csv:
            private.write(out / (name + ".csv"), generator_csv(entries).encode())
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
