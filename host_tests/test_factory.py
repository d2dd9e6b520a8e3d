"""From factory to field: board descriptions, provisioning images, flashing decisions, packaging.

No ESP32 here: hardware paths are checked as a user runs them, through `make -n`, the tools'
--dry-run and the images themselves; the simulated board boots the factory image byte for byte.
"""
import base64
import csv
import json
import re
import shlex
import subprocess
import sys

import pytest

from host_tests.conftest import PYTHON, REPO, SIM_RUNNER, WIFI
from host_tests.secrets_scan import assert_clean
from tools.factory import boards, nvsformat, provision
from tools.sim import run as sim

REAL_BOARDS = {  # board -> (chip, firmware offset)
    "ESP32_GENERIC": ("esp32", "0x1000"),
    "ESP32_GENERIC_S3": ("esp32s3", "0x0"),
    "ESP32_GENERIC_C3": ("esp32c3", "0x0"),
}
COLUMNS = ["platform", "prod_id", "prod_secret", "wifi_ssid", "wifi_pass", "reg_host", "reg_port", "mqtt_host",
           "mqtt_port", "ca", "dev_name"]
SECRET = "DWHXR7Ik6m6IS6ifKTQMMZUA"
TOOL_SECRETS = (SECRET, "sim-pass-123", "c2VjcmV0LXBzaw==", "cHNr")  # every secret the tests give the tools


def tool(name, *args, cwd=REPO, timeout=60, rc=0):
    """Run tools/factory/<name>.py; its exit code must be `rc` (None: the caller checks); no secret in its output."""
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "factory" / (name + ".py"))] + [str(a) for a in args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert rc is None or proc.returncode == rc, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert_clean(proc.stdout + proc.stderr, TOOL_SECRETS, ("SIMPSK0001", "dev-0001"), where="tools/%s.py" % name)
    return proc


def make_n(*args, rc=0):
    proc = subprocess.run(["make", "-n", "--no-print-directory"] + list(args), cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert rc is None or proc.returncode == rc, (proc.returncode, proc.stderr[-2000:])
    return proc


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory):
    """A self-signed CA certificate (PEM), as a factory gets it from the cloud vendor."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "factory test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("ca")
    (d / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "ca.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "ca.pem"


def row(**over):
    r = {"platform": "tencent", "prod_id": "SIMPSK0001", "prod_secret": SECRET, "wifi_ssid": "sim-ap",
         "wifi_pass": "sim-pass-123", "reg_host": "localhost", "reg_port": "8443", "mqtt_host": "localhost",
         "mqtt_port": "8883", "ca": "ca.pem", "dev_name": ""}
    r.update(over)
    return r


def write_batch(path, rows, columns=None, ca=None):
    """A batch CSV beside a copy of the CA (the 'ca' column is relative to the CSV)."""
    columns = columns or list(rows[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    if ca is not None:
        (path.parent / "ca.pem").write_bytes(ca.read_bytes())
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])
    return path


def entries_of(image):
    return nvsformat.parse(image)


# --------------------------------------------------------------------------- boards

@pytest.mark.parametrize("name", sorted(REAL_BOARDS))
def test_board_facts(name):
    chip, fw = REAL_BOARDS[name]
    b = boards.load(name)
    assert (b["chip"], hex(b["firmware_offset"]), b["nvs_offset"], b["nvs_size"]) == (chip, fw, 0x9000, 0x6000)
    ota = boards.load(name, "ota")
    assert (ota["nvs_offset"], ota["nvs_size"]) == (0x9000, 0x4000)
    otadata = [r for r in ota["table"] if r[0] == "otadata"]
    assert otadata == [["otadata", "data", "ota", "0xd000", "0x2000"]]  # right after the smaller NVS
    for layout in (b, ota):  # partitions in order, none overlapping, all above the partition table
        end = 0x9000
        for r in layout["table"]:
            assert int(r[3], 16) >= end, r
            end = int(r[3], 16) + int(r[4], 16)
    proc = subprocess.run([sys.executable, "tools/factory/boards.py", name, "firmware_offset"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == fw, proc.stderr


def test_sim_board_and_errors():
    assert boards.load("sim")["chip"] == "sim" and boards.load("sim")["nvs_size"] == 0x6000
    assert boards.load("sim")["firmware_offset"] is None
    with pytest.raises(boards.BoardError, match="unknown board"):
        boards.load("ESP32_NOPE")
    proc = subprocess.run([sys.executable, "tools/factory/boards.py", "ESP32_NOPE", "chip"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown board" in proc.stderr


# --------------------------------------------------------------------------- images

def test_batch_one_image_per_device(tmp_path, ca_pem):
    batch = write_batch(tmp_path / "in" / "lot7.csv",
                        [row(dev_name="dev-0001"), row(dev_name="dev-0002"), row(dev_name="", wifi_ssid="other-ap")],
                        ca=ca_pem)
    out = tmp_path / "out"
    proc = tool("provision", batch, "--board", "ESP32_GENERIC", "--out", out, "--gen-csv")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("*.bin")) == ["dev-0001.bin", "dev-0002.bin", "row3.bin"]
    ca_der = (ca_pem.parent / "ca.der").read_bytes()
    for name in ("dev-0001", "dev-0002", "row3"):
        image = (out / (name + ".bin")).read_bytes()
        assert len(image) == 0x6000
        contents = entries_of(image)
        assert list(contents) == ["dynreg"]
        keys = contents["dynreg"]
        assert {kind for kind, _ in keys.values()} == {"i32", "blob"}  # never a string entry
        assert keys["platform"] == ("blob", b"tencent") and keys["prod_secret"] == ("blob", SECRET.encode())
        assert keys["reg_port"] == ("i32", 8443) and keys["mqtt_port"] == ("i32", 8883)
        assert keys["ca"] == ("blob", ca_der)  # PEM converted to DER
        assert "dev_secret" not in keys
        if name == "row3":
            assert "dev_name" not in keys and keys["wifi_ssid"] == ("blob", b"other-ap")
        else:
            assert keys["dev_name"] == ("blob", name.encode())
        # the generator's own CSV: blobs as data,base64 (never string); the CLI makes the same bytes
        gen_csv = (out / (name + ".csv")).read_text()
        rows = list(csv.DictReader(gen_csv.splitlines()))
        assert {r["encoding"] for r in rows[1:]} == {"base64", "i32"}
        cli = subprocess.run([PYTHON, "-m", "esp_idf_nvs_partition_gen", "generate", name + ".csv", "cli.bin",
                              "0x6000"], cwd=out, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert (out / "cli.bin").read_bytes() == image
    # a progress bar on stderr for a batch; the output names every image; no secret printed
    assert "3/3" in proc.stderr and "[" in proc.stderr
    assert_clean(proc.stdout + proc.stderr, TOOL_SECRETS)


def test_one_image_for_a_nameless_batch(tmp_path, ca_pem):
    rows = [row(), row(), row()]
    batch = write_batch(tmp_path / "lot8.csv", rows, ca=ca_pem)
    proc = tool("provision", batch, "--board", "ESP32_GENERIC_C3", "--partition", "ota", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["lot8.bin"]
    assert len((tmp_path / "o" / "lot8.bin").read_bytes()) == 0x4000  # the OTA layout's NVS
    assert "whole batch" in proc.stdout and "/" not in proc.stderr  # one image: no progress bar
    single = write_batch(tmp_path / "one.csv", [row()], ca=ca_pem)
    proc = tool("provision", single, "--board", "sim", "--out", tmp_path / "p")
    assert proc.returncode == 0 and [p.name for p in (tmp_path / "p").iterdir()] == ["one.bin"]


def test_build_image_api_and_shared_settings(tmp_path, ca_pem):
    image = provision.build_image({"platform": "ucloud", "tls": 0, "raw": b"\x00\xff", "n": -7}, size=0x6000)
    assert entries_of(image) == {"dynreg": {"platform": ("blob", b"ucloud"), "tls": ("i32", 0),
                                            "raw": ("blob", b"\x00\xff"), "n": ("i32", -7)}}
    assert image == provision.build_image({"platform": "ucloud", "tls": 0, "raw": b"\x00\xff", "n": -7})
    assert len(provision.build_image({}, size=0x4000)) == 0x4000
    # the simulated board's settings files go through the same conversion
    (tmp_path / "ca.pem").write_bytes(ca_pem.read_bytes())
    settings = {"platform": "tencent", "reg_port": 1, "ca": {"file": "ca.pem"}}
    assert sim.nvs_values(settings, tmp_path, tmp_path) == provision.settings_entries(settings, base_dir=tmp_path)
    assert provision.settings_entries(settings, base_dir=tmp_path)["ca"] == (ca_pem.parent / "ca.der").read_bytes()


# --------------------------------------------------------------------------- validation errors

def _fails(tmp_path, rows, expect, board="ESP32_GENERIC", columns=None, extra=(), ca=None):
    batch = write_batch(tmp_path / "in" / "b.csv", rows, columns=columns, ca=ca)
    out = tmp_path / "out"
    proc = tool("provision", batch, "--board", board, "--out", out, *extra, rc=2)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.search(expect, proc.stderr), proc.stderr
    assert not out.exists(), "nothing may be written when the batch has an error"
    assert SECRET not in proc.stderr
    return proc.stderr


def test_error_key_over_15_bytes(tmp_path, ca_pem):
    r = row(dev_name="a", application_keys="x")
    _fails(tmp_path, [r], r"'application_keys' is 16 bytes; NVS keys are at most 15", ca=ca_pem)


def test_error_value_too_large(tmp_path, ca_pem):
    big = ["blob%d:blob" % i for i in range(4)]  # keys of the application's own, declared
    r = row(dev_name="a", **{k: "x" * 4000 for k in big})
    _fails(tmp_path, [r], r"do not fit in a 0x4000-byte NVS partition", extra=("--partition", "ota"), ca=ca_pem)
    # fits the default partition, but the device could not store its certificate and key at registration
    r = row(dev_name="a", **{k: "x" * 3900 for k in big})
    _fails(tmp_path, [r], r"leaves no room for what the device stores when it registers \(dev_cert, dev_id, dev_key, "
                          r"dev_secret\)", ca=ca_pem)
    # one blob over what the device reads
    _fails(tmp_path, [row(dev_name="a", barcode="x" * 4097)], r"barcode is 4097 bytes; the device reads blobs "
                                                             r"up to 4096", ca=ca_pem)


@pytest.mark.parametrize("missing, expect", [
    ("platform", r"platform is missing"),
    ("prod_id", r"prod_id is missing"),
    ("prod_secret", r"prod_secret is missing \(needed to register\)"),
    ("ca", r"ca is missing"),
])
def test_error_missing_field(tmp_path, ca_pem, missing, expect):
    _fails(tmp_path, [row(dev_name="a", **{missing: ""})], r"b.csv row 1, column %d: " % (COLUMNS.index(missing) + 1)
           + expect, ca=ca_pem)


def test_no_ca_needed_without_tls_nor_prod_secret_with_a_device_secret(tmp_path, ca_pem):
    batch = write_batch(tmp_path / "b.csv", [row(ca="", tls="0", dev_name="a"),
                                             row(prod_secret="", dev_secret="cHNr", dev_name="b")],
                        columns=COLUMNS + ["tls", "dev_secret"], ca=ca_pem)
    proc = tool("provision", batch, "--board", "sim", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    assert entries_of((tmp_path / "o" / "a.bin").read_bytes())["dynreg"]["tls"] == ("i32", 0)


def test_error_unknown_platform(tmp_path, ca_pem):
    _fails(tmp_path, [row(platform="nosuchcloud")], r"row 1, column 1: platform is not one of tencent, ucloud, protco, aliyun",
           ca=ca_pem)


def test_error_ca_not_a_certificate(tmp_path, ca_pem):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "key.pem").write_bytes((ca_pem.parent / "key.pem").read_bytes())  # a key, not a certificate
    (tmp_path / "in" / "notes.txt").write_text("not a certificate at all")
    _fails(tmp_path, [row(ca="key.pem")], r"row 1, column 10: ca \(.*key.pem\) is not an X.509 certificate")
    # a file name that does not look like a certificate's is not shown (it may be a shifted secret)
    _fails(tmp_path, [row(ca="notes.txt")], r"row 1, column 10: ca \(the file it names\) is not an X.509 certificate")
    _fails(tmp_path, [row(ca="missing.pem")], r"row 1, column 10: ca: cannot read .*missing.pem")
    # checked whenever given, also for plain TCP
    _fails(tmp_path, [row(ca="notes.txt", tls="0")], r"is not an X.509 certificate",
           columns=COLUMNS + ["tls"])


def test_error_other_input(tmp_path, ca_pem):
    _fails(tmp_path, [row(reg_port="https")], r"b.csv row 1, column 7: reg_port is not an integer", ca=ca_pem)
    _fails(tmp_path, [row(dev_name="x"), row(dev_name="x")], r"rows 1, 2 have the same dev_name", ca=ca_pem)
    _fails(tmp_path, [row(platform="ucloud", dev_name="ab")], r"UCloud DeviceSN is 4-64 characters", ca=ca_pem)
    _fails(tmp_path, [row(dev_name="a")], r"unknown board", board="ESP32_NOPE", ca=ca_pem)
    _fails(tmp_path, [row(dev_name="a"), row(dev_name="b")], r"--flash writes one image; this batch makes 2",
           extra=("--flash", "/dev/null", "--dry-run"), ca=ca_pem)


# --------------------------------------------------------------------------- make flash = the flash tool

def _steps(text):
    """The board-touching commands of a dry run, in order, without the interpreter path."""
    return [" ".join(m.groups()) for m in re.finditer(r"-m (esptool|mpremote) (.*)$", text, re.M)]


def _flash_dry_run(*make_args):
    """`make -n flash ARGS`: the one command it runs (the flash tool), then that command with --dry-run."""
    proc = make_n("flash", *make_args)
    assert proc.returncode == 0, proc.stderr
    assert "esptool" not in proc.stdout and "mpremote" not in proc.stdout  # no sequence of its own
    lines = [line for line in proc.stdout.splitlines() if "tools/factory/flash.py flash " in line]
    assert len(lines) == 1, proc.stdout
    command = shlex.split(lines[0])
    assert command[0].endswith("/python") and command[1] == "tools/factory/flash.py"
    dry = subprocess.run([PYTHON] + command[1:] + ["--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    return command[2:], dry


@pytest.mark.parametrize("name", sorted(REAL_BOARDS))
def test_make_flash_runs_the_flash_tool(tmp_path, name):
    chip, fw = REAL_BOARDS[name]
    firmware = tmp_path / "micropython.bin"
    firmware.write_bytes(b"\xe9")
    factory = tmp_path / "dev-0001.bin"
    factory.write_bytes(provision.build_image({"platform": "tencent"}))
    args, dry = _flash_dry_run("BOARD=" + name, "PORT=/dev/ttyUSB0", "FIRMWARE=%s" % firmware, "NVS=%s" % factory)
    assert args == ["flash", "--board", name, "--partition", "default", "--port", "/dev/ttyUSB0", "--baud", "460800",
                    "--backup", "build/nvs-backup/ttyUSB0.bin", "--firmware", str(firmware), "--nvs", str(factory)]
    esp = "esptool --chip %s --port /dev/ttyUSB0 --baud 460800" % chip
    assert [re.sub(r"\S*(build/deploy/lib|firmware/(boot|main)\.py)", r"\1", s) for s in _steps(dry.stdout)] == [
        "%s --after no-reset read-flash 0x9000 0x6000 build/nvs-backup/ttyUSB0.bin" % esp,          # (a)
        "%s --after no-reset write-flash %s %s" % (esp, fw, firmware),                                # (c)
        "%s write-flash 0x9000 build/nvs-backup/ttyUSB0.write.bin" % esp,                              # (d)
        "mpremote connect /dev/ttyUSB0 cp -r build/deploy/lib : + cp firmware/boot.py firmware/main.py :",  # (e)
    ]
    assert "# (d) will write %s" % factory in dry.stdout  # (b): no backup yet, a blank board takes the factory image
    # the OTA layout: NVS still at 0x9000, 0x4000 long; FORCE=1 and BAUD= reach the tool; no FIRMWARE=: kept
    args, dry = _flash_dry_run("BOARD=" + name, "PARTITION=ota", "PORT=/dev/ttyUSB0", "FORCE=1", "BAUD=115200")
    assert args[args.index("--partition") + 1] == "ota" and args[-1] == "--force" and "115200" in args
    steps = _steps(dry.stdout)
    assert steps[0].endswith("--baud 115200 --after no-reset read-flash 0x9000 0x4000 build/nvs-backup/ttyUSB0.bin")
    assert not [s for s in steps if re.search(r"write-flash 0x(1000|0) ", s)]
    assert steps[1].endswith("write-flash 0x9000 build/nvs-backup/ttyUSB0.write.bin")
    assert "no firmware given: the board keeps its MicroPython" in dry.stderr


def test_make_n_other_targets(tmp_path):
    proc = make_n("nvs-backup", "BOARD=ESP32_GENERIC_S3", "PORT=/dev/ttyACM0")
    assert "esptool --chip esp32s3 --port /dev/ttyACM0 --baud 460800 read-flash 0x9000 0x6000 " \
           "build/nvs-backup/ttyACM0.bin" in proc.stdout
    proc = make_n("nvs-restore", "BOARD=ESP32_GENERIC", "PARTITION=ota", "PORT=/dev/ttyUSB1", "FILE=saved.bin")
    assert "flash.py show --board ESP32_GENERIC --partition ota saved.bin" in proc.stdout  # size checked first
    assert "esptool --chip esp32 --port /dev/ttyUSB1 --baud 460800 write-flash 0x9000 saved.bin" in proc.stdout
    proc = make_n("deploy", "PORT=/dev/ttyUSB0")
    assert "tools/factory/flash.py stage" in proc.stdout
    assert "-m mpremote connect /dev/ttyUSB0 cp -r build/deploy/lib : + cp firmware/boot.py firmware/main.py :" \
           in proc.stdout
    proc = make_n("provision", "CSV=lot.csv", "BOARD=ESP32_GENERIC_C3", "PARTITION=ota")
    assert "tools/factory/provision.py lot.csv --board ESP32_GENERIC_C3 --partition ota --out build/nvs" in proc.stdout
    for args, expect in ((["flash", "PORT=/dev/ttyUSB0"], "BOARD= is required"),
                         (["flash", "BOARD=ESP32_GENERIC"], "PORT= is required"),
                         (["flash", "BOARD=ESP32_NOPE", "PORT=x"], "BOARD=ESP32_NOPE PARTITION=default: no chip"),
                         (["flash", "BOARD=ESP32_GENERIC", "PORT=x", "FIRMWARE=nope.bin"], "FIRMWARE=nope.bin not found"),
                         (["flash", "BOARD=sim", "PORT=x"], "BOARD=sim has no serial port"),
                         (["nvs-restore", "BOARD=sim", "PORT=x"], "BOARD=sim has no serial port"),
                         (["deploy"], "PORT= is required")):
        proc = make_n(*args, rc=None)
        assert proc.returncode != 0 and expect in proc.stderr, (args, proc.stderr)
        assert "esptool" not in proc.stdout


# --------------------------------------------------------------------------- keeping the identity

REGISTERED = {"platform": "tencent", "prod_id": "SIMPSK0001", "dev_name": "dev-0001", "dev_secret": "c2VjcmV0LXBzaw=="}


@pytest.mark.parametrize("backup, force, keeps", [
    ("registered", False, True),
    ("registered", True, False),
    ("cert", False, True),
    ("placeholder", False, False),   # YOUR_IOT_PSK: the null value, nothing to keep
    ("factory-only", False, False),  # settings but no secret yet
    ("blank", False, False),         # erased flash
])
def test_flash_dry_run_keeps_a_device_secret(tmp_path, backup, force, keeps):
    images = {
        "registered": provision.build_image(REGISTERED),
        "cert": provision.build_image({"platform": "tencent", "dev_cert": b"\x30\x82" * 100, "dev_key": b"\x30" * 50}),
        "placeholder": provision.build_image(dict(REGISTERED, dev_secret="YOUR_IOT_PSK")),
        "factory-only": provision.build_image({"platform": "tencent", "prod_secret": SECRET}),
        "blank": b"\xff" * 0x6000,
    }
    path = tmp_path / "ttyUSB0.bin"
    path.write_bytes(images[backup])
    factory = tmp_path / "factory.bin"
    factory.write_bytes(provision.build_image({"platform": "tencent", "prod_id": "SIMPSK0001", "prod_secret": SECRET}))
    args = ["flash", "--board", "ESP32_GENERIC", "--port", "/dev/ttyUSB0", "--firmware", "fw.bin", "--nvs", factory,
            "--backup", path, "--dry-run"] + (["--force"] if force else [])
    proc = tool("flash", *args)
    assert proc.returncode == 0, proc.stderr
    chosen = re.search(r"^# \(d\) will write (\S+)$", proc.stdout, re.M).group(1)
    assert chosen == str(path if keeps else factory)
    if keeps:
        assert "WARNING: the board already holds a dynreg dev_" in proc.stderr and "NOT written" in proc.stderr
    if backup == "registered" and force:
        assert "FORCE: writing the factory image" in proc.stderr
    assert_clean(proc.stdout + proc.stderr, TOOL_SECRETS)
    assert not (tmp_path / "keep").exists()  # a dry run writes nothing
    assert path.read_bytes() == images[backup]


def test_choose_nvs_keeps_and_archives(tmp_path):
    backup = tmp_path / "ttyUSB0.bin"
    backup.write_bytes(provision.build_image(REGISTERED))
    factory = tmp_path / "factory.bin"
    factory.write_bytes(provision.build_image({"platform": "tencent", "prod_secret": SECRET}))
    out = tmp_path / "ttyUSB0.write.bin"
    proc = tool("flash", "choose-nvs", "--board", "ESP32_GENERIC", "--backup", backup, "--nvs", factory, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == backup.read_bytes()
    kept = list((tmp_path / "keep").glob("dev-0001-*.bin"))
    assert len(kept) == 1 and kept[0].read_bytes() == backup.read_bytes()
    proc = tool("flash", "choose-nvs", "--backup", backup, "--nvs", factory, "--force", "--out", out)
    assert proc.returncode == 0 and out.read_bytes() == factory.read_bytes()
    assert len(list((tmp_path / "keep").glob("dev-0001-*.bin"))) == 2  # every run keeps its own copy
    proc = tool("flash", "choose-nvs", "--backup", backup, "--out", out)  # no factory image: firmware upgrade
    assert out.read_bytes() == backup.read_bytes()
    # an image of the wrong size never reaches the board: 0x6000 bytes at 0x9000 would overwrite otadata
    proc = tool("flash", "choose-nvs", "--board", "ESP32_GENERIC", "--partition", "ota", "--backup", tmp_path / "x",
                "--nvs", factory, "--out", out, rc=2)
    assert proc.returncode == 2 and "would overwrite the next partition" in proc.stderr


def test_provision_flash_refuses_to_overwrite_a_secret(tmp_path, ca_pem):
    batch = write_batch(tmp_path / "b.csv", [row(dev_name="dev-0002")], ca=ca_pem)
    backup = tmp_path / "ttyUSB0.bin"
    base = ["--board", "ESP32_GENERIC_S3", "--out", tmp_path / "o", "--flash", "/dev/ttyUSB0", "--dry-run"]
    proc = tool("provision", batch, *base)  # no backup read (dry run): the commands
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"-m esptool --chip esp32s3 --port /dev/ttyUSB0 --baud 460800 write-flash 0x9000 \S+dev-0002.bin",
                     proc.stdout)
    backup.write_bytes(provision.build_image(REGISTERED))
    proc = tool("flash", "nvs-write", "--board", "ESP32_GENERIC_S3", "--port", "/dev/ttyUSB0", "--image",
                tmp_path / "o" / "dev-0002.bin", "--backup", backup, "--dry-run", rc=1)
    assert proc.returncode == 1 and "refused" in proc.stderr and "write-flash" not in proc.stdout
    proc = tool("flash", "nvs-write", "--board", "ESP32_GENERIC_S3", "--port", "/dev/ttyUSB0", "--image",
                tmp_path / "o" / "dev-0002.bin", "--backup", backup, "--dry-run", "--force")
    assert proc.returncode == 0 and "write-flash 0x9000" in proc.stdout


def test_show_masks_secrets(tmp_path):
    image = tmp_path / "x.bin"
    image.write_bytes(provision.build_image(dict(REGISTERED, prod_secret=SECRET, wifi_pass="sim-pass-123", tls=1)))
    proc = tool("flash", "show", image)
    assert proc.returncode == 0, proc.stderr
    assert "dev_secret      blob <16 bytes, not shown>" in proc.stdout
    assert "tls             i32  1" in proc.stdout and "dev_name        blob 'dev-0001'" in proc.stdout
    assert "identity: dev_secret of device 'dev-0001'" in proc.stdout
    assert_clean(proc.stdout, (SECRET, "sim-pass-123", "c2VjcmV0LXBzaw=="))


# --------------------------------------------------------------------------- the round trip

@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_factory_image_boots_registers_and_reads_back(tmp_path, cloud, interp):
    """provision (one image for a name-less batch) -> two simulated boards boot that image byte for byte,
    register under their MACs -> each board's image read back shows its own secret; flashing the factory
    image again would keep it."""
    ca = tmp_path / "ca-src" / "ca.pem"
    ca.parent.mkdir()
    ca.write_bytes((cloud.state / "ca.pem").read_bytes())
    secret = cloud.secret("tencent", "SIMPSK0001")
    rows = [row(prod_secret=secret, reg_port=str(cloud.ports["https"]), mqtt_port=str(cloud.ports["mqtts"]),
                retry_ms="100", max_tries="1", report_count="1")] * 2
    batch = write_batch(tmp_path / "factory" / "lot9.csv", rows,
                        columns=COLUMNS + ["retry_ms", "max_tries", "report_count"], ca=ca)
    proc = tool("provision", batch, "--board", "sim", "--out", tmp_path / "images")
    assert proc.returncode == 0, proc.stderr
    factory = tmp_path / "images" / "lot9.bin"
    factory_bytes = factory.read_bytes()
    settings = tmp_path / "wifi.json"
    settings.write_text(json.dumps(WIFI))  # the runner's access point; NVS comes from the image
    macs = {"micropython": ("fa0001000001", "fa0001000002"), "cpython": ("fa0002000001", "fa0002000002")}[interp]
    for mac in macs:
        state = tmp_path / ("board-" + mac)
        run = subprocess.run([PYTHON, str(SIM_RUNNER), "--settings", str(settings), "--nvs", str(factory),
                              "--interp", interp, "--state", str(state), "--cloud-state", str(cloud.state),
                              "--mac", mac, "--max-boots", "4"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=180)
        assert run.returncode == 0, run.stdout
        assert "registering tencent device '%s'" % mac in run.stdout and "mqtt: logged in" in run.stdout
        assert_clean(run.stdout, cloud.secrets() | {secret, "sim-pass-123"}, cloud.public() | {mac}, derived=True,
                     where="the board's output")
        image = (state / "nvs.bin").read_bytes()
        assert len(image) == len(factory_bytes)
        keys = entries_of(image)["dynreg"]
        record = cloud.devices()["tencent"]["SIMPSK0001/" + mac]
        assert record["registrations"] == 1 and record["activated"]
        assert keys["dev_secret"] == ("blob", record["psk"].encode())  # what the cloud issued, stored in NVS
        factory_keys = entries_of(factory_bytes)["dynreg"]
        assert keys["dev_id"] == ("blob", b"tencent/" + mac.encode())  # the identity marker, written after it
        assert {k: v for k, v in keys.items() if k not in ("dev_secret", "dev_id")} == factory_keys  # untouched
        # read back as the flash tool reads a board's backup: the identity is there, the secret is not shown
        shown = tool("flash", "show", state / "nvs.bin")
        assert "identity: dev_secret" in shown.stdout and keys["dev_secret"][1].decode() not in shown.stdout
        dry = tool("flash", "flash", "--board", "ESP32_GENERIC", "--port", "/dev/ttyUSB0", "--nvs", factory,
                   "--backup", state / "nvs.bin", "--dry-run")
        assert "# (d) will write %s" % (state / "nvs.bin") in dry.stdout


# --------------------------------------------------------------------------- packaging

def test_package_json_lists_exactly_the_dynreg_files():
    doc = json.loads((REPO / "package.json").read_text())
    files = sorted(p.name for p in (REPO / "firmware" / "lib" / "dynreg").glob("*.py"))
    targets = [t for t, _ in doc["urls"]]
    assert sorted(targets) == ["dynreg/" + f for f in files] and len(set(targets)) == len(targets)
    for target, url in doc["urls"]:  # relative to package.json: mip resolves them wherever the repository lives
        assert url == "firmware/lib/" + target and (REPO / url).is_file()
    assert doc["deps"] == [["umqtt.simple", "latest"]] and re.fullmatch(r"\d+\.\d+\.\d+", doc["version"])
    assert set(doc) == {"urls", "deps", "version"}


def test_manifest_freezes_the_dynreg_package(tmp_path):
    calls = []
    env = {"include": lambda *a, **k: calls.append(("include",) + a),
           "package": lambda *a, **k: calls.append(("package",) + a + tuple(sorted(k.items()))),
           "require": lambda *a, **k: calls.append(("require",) + a)}
    exec(compile((REPO / "manifest.py").read_text(), "manifest.py", "exec"), env)
    assert ("include", "$(PORT_DIR)/boards/manifest.py") in calls
    assert ("require", "umqtt.simple") in calls
    pkg = [c for c in calls if c[0] == "package"]
    assert pkg == [("package", "dynreg", ("base_path", "firmware/lib"), ("opt", 3))]
    # relative to the manifest's directory (manifestfile.py chdirs there): the package the tests run
    frozen = sorted(p.name for p in (REPO / pkg[0][2][1] / "dynreg").glob("*.py"))
    urls = json.loads((REPO / "package.json").read_text())["urls"]
    assert "__init__.py" in frozen and ["dynreg/" + f for f in frozen] == sorted(t for t, _ in urls)
