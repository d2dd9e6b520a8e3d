"""The tools around the device: no secret in their output, whatever the input; secret files 0600.

Shifted, swapped and garbled batch files and settings files go to every tool (provision, the sim
runner, flash choose-nvs and show); each run's output is scanned for every secret in play. Files
that hold secrets are checked under umask 022.
"""
import csv
import io
import json
import os
import random
import re
import stat
import subprocess
import sys

import pytest

from host_tests.conftest import PYTHON, REPO, SIM_RUNNER
from tools.factory import nvsformat, provision

PROVISION = REPO / "tools" / "factory" / "provision.py"
FLASH = REPO / "tools" / "factory" / "flash.py"
SECRETS = {"prod_secret": "DWHXR7Ik6m6IS6ifKTQMMZUA", "wifi_pass": "plant-wifi-pw-77", "replace_sec": "Zr8d2Kq0Lm5Tx"}
COLUMNS = ["platform", "prod_id", "prod_secret", "wifi_ssid", "wifi_pass", "reg_host", "reg_port", "mqtt_host",
           "mqtt_port", "ca", "dev_name"]
ROW = ["tencent", "SIMPSK0001", SECRETS["prod_secret"], "plant", SECRETS["wifi_pass"], "localhost", "8443",
       "localhost", "8883", "ca.pem", "lamp-0001"]


def clean(text):
    leaked = [name for name, secret in SECRETS.items() if secret in text]
    assert not leaked, "%s reached the output:\n%s" % (leaked, text)


def run(*argv, cwd=REPO):
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=60)
    clean(proc.stdout + proc.stderr)
    return proc


def csv_text(rows):
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def swapped(a, b):
    row = list(ROW)
    i, j = COLUMNS.index(a), COLUMNS.index(b)
    row[i], row[j] = row[j], row[i]
    return csv_text([COLUMNS, row])


# Every one of these is refused (exit 2), naming the row, column and key.
BAD_BATCHES = dict(
    [("missing cell %d" % i, csv_text([COLUMNS, ROW[:i] + ROW[i + 1:]])) for i in range(len(ROW))]
    + [("extra cell %d" % i, csv_text([COLUMNS, ROW[:i] + [""] + ROW[i:]])) for i in (0, 3, 6)]
    + [("swap %s/%s" % pair, swapped(*pair)) for pair in
       [("prod_secret", "reg_port"), ("prod_secret", "mqtt_port"), ("prod_secret", "platform"),
        ("prod_secret", "ca"), ("wifi_pass", "mqtt_port"), ("wifi_pass", "ca")]]
    + [("header lost", csv_text([ROW, ROW])),
       ("header shifted", csv_text([COLUMNS[1:], ROW])),
       ("unbalanced quote", csv_text([COLUMNS]) + ",".join(ROW[:2]) + ',"' + ",".join(ROW[2:]) + "\n"),
       ("secret as a header", csv_text([COLUMNS[:2] + [SECRETS["prod_secret"]] + COLUMNS[3:], ROW]))]
)
# Garbled beyond what a CSV can say: refused or not, never echoed.
GARBLED = {
    "not UTF-8": csv_text([COLUMNS]).encode() + b"\xff\xfe" + ",".join(ROW).encode() + b"\n",
    "NUL bytes": (csv_text([COLUMNS]) + ",".join(ROW).replace(SECRETS["wifi_pass"], "x\x00" +
                                                              SECRETS["wifi_pass"]) + "\n").encode(),
    "binary": bytes(random.Random(3).getrandbits(8) for _ in range(600)) + SECRETS["prod_secret"].encode(),
    "a JSON file": json.dumps(dict(zip(COLUMNS, ROW))).encode(),
}


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    from tools.cloud import certs

    d = tmp_path_factory.mktemp("ca")
    certs.Pki(str(d)).ensure()
    return d


def _provision(tmp_path, ca_dir, data, *extra):
    batch = tmp_path / "lot.csv"
    batch.write_bytes(data if isinstance(data, bytes) else data.encode())
    (tmp_path / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    return run(PYTHON, PROVISION, batch, "--board", "ESP32_GENERIC", "--out", tmp_path / "out", *extra)


def test_the_good_batch_works(tmp_path, ca_dir):
    """The base of every variant below is a valid batch: they fail for what was done to it."""
    proc = _provision(tmp_path, ca_dir, csv_text([COLUMNS, ROW]))
    assert proc.returncode == 0, proc.stderr
    # columns swapped between two text keys cannot be told from intent: built, and still never printed
    proc = _provision(tmp_path, ca_dir, swapped("prod_id", "prod_secret"))
    assert proc.returncode == 0 and "lamp-0001.bin" in proc.stdout


@pytest.mark.parametrize("name", sorted(BAD_BATCHES))
def test_bad_batch_is_refused_naming_where(tmp_path, ca_dir, name):
    proc = _provision(tmp_path, ca_dir, BAD_BATCHES[name])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("provision: error: lot.csv"), proc.stderr
    assert " row 1" in proc.stderr or "header, column" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(GARBLED))
def test_garbled_batch_is_never_echoed(tmp_path, ca_dir, name):
    proc = _provision(tmp_path, ca_dir, GARBLED[name])
    assert proc.returncode in (0, 2), proc.stderr


SETTINGS = dict(zip(COLUMNS, ROW), reg_port=8443, mqtt_port=8883, ca={"file": "ca.pem"}, replace_sec=SECRETS[
    "replace_sec"])
BAD_SETTINGS = {
    "secret under an i32 key": (dict(SETTINGS, reg_port=SECRETS["prod_secret"]), r"reg_port must be an integer"),
    "port as a string": (dict(SETTINGS, reg_port="18443"), r"reg_port must be an integer \(dynreg reads it as "
                                                           r"i32\), not text"),
    "secret as a number": (dict(SETTINGS, prod_secret=12345678), r"prod_secret must be text .*, not a number"),
    "secret as the ca": (dict(SETTINGS, ca=SECRETS["wifi_pass"]), r'ca must be \{"file": "path"\}'),
    "secret as a key": (dict(SETTINGS, **{SECRETS["replace_sec"]: "x"}), r"key #\d+ is not one dynreg reads"),
    "misspelt key": (dict((("prod_secert" if k == "prod_secret" else k), v) for k, v in SETTINGS.items()),
                     r"key 'prod_secert' is not one dynreg reads \(did you mean 'prod_secret'\?\)"),
    "secret as a ca file": (dict(SETTINGS, ca={"file": SECRETS["wifi_pass"]}), r"ca: cannot read the file it names"),
}


@pytest.mark.parametrize("name", sorted(BAD_SETTINGS))
def test_sim_checks_settings_as_provision_does(tmp_path, ca_dir, name):
    settings, message = BAD_SETTINGS[name]
    (tmp_path / "ca.pem").write_bytes((ca_dir / "ca.pem").read_bytes())
    path = tmp_path / "board.json"
    path.write_text(json.dumps(settings))
    proc = run(PYTHON, SIM_RUNNER, "--settings", path, "--state", tmp_path / "s", "--fresh")
    assert proc.returncode == 2, proc.stdout
    assert "[sim] error: " in proc.stdout and "boot 1" not in proc.stdout
    assert re.search(message, proc.stdout), proc.stdout
    # the same settings as a library call, as provision reads them: the same error
    with pytest.raises(provision.ProvisionError, match=message):
        provision.settings_entries(provision.read_settings(path), base_dir=tmp_path)


def test_broken_settings_json_is_not_quoted(tmp_path):
    path = tmp_path / "board.json"
    path.write_text(json.dumps(SETTINGS)[:-40])
    proc = run(PYTHON, SIM_RUNNER, "--settings", path, "--state", tmp_path / "s")
    assert proc.returncode == 2 and "not JSON (line 1, column" in proc.stdout


@pytest.mark.parametrize("name", sorted(GARBLED) + ["batch", "settings"])
def test_flash_refuses_what_is_not_an_image(tmp_path, name):
    data = {"batch": csv_text([COLUMNS, ROW]).encode(), "settings": json.dumps(SETTINGS).encode()}.get(name) \
        or GARBLED[name]
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    shown = run(PYTHON, FLASH, "show", path)
    assert shown.returncode == 2 and "not an NVS partition image" in shown.stderr
    for board in ([], ["--board", "ESP32_GENERIC"]):
        chosen = run(PYTHON, FLASH, "choose-nvs", *board, "--backup", path, "--nvs", path, "--out", tmp_path / "o")
        assert chosen.returncode in (0, 2)


def test_flash_show_masks_every_secret_class_key(tmp_path):
    values = dict(platform="tencent", prod_id="P", prod_secret=SECRETS["prod_secret"], wifi_pass=SECRETS["wifi_pass"],
                  replace_sec=SECRETS["replace_sec"], dev_secret="cHNrLWRldmljZQ==", dev_name="lamp-0001")
    path = tmp_path / "x.bin"
    path.write_bytes(provision.build_image(values))
    shown = run(PYTHON, FLASH, "show", path)
    assert shown.returncode == 0 and "cHNrLWRldmljZQ==" not in shown.stdout
    assert shown.stdout.count("not shown>") == 4


# --------------------------------------------------------------------------- files 0600

def private(path):
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600, "%s is %o" % (path, mode)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def registered_image():
    return provision.build_image(dict(platform="tencent", prod_id="P", prod_secret=SECRETS["prod_secret"],
                                      dev_secret="cHNrLWRldmljZQ==", dev_name="lamp-0001"))


def test_provision_images_and_csv_copies(tmp_path, ca_dir, umask022):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lamp-0001.bin").write_bytes(b"old")  # a stale image keeps no mode of its own
    os.chmod(out / "lamp-0001.bin", 0o644)
    proc = _provision(tmp_path, ca_dir, csv_text([COLUMNS, ROW]), "--gen-csv")
    assert proc.returncode == 0, proc.stderr
    for path in (out / "lamp-0001.bin", out / "lamp-0001.csv"):
        private(path)
    assert sorted(p.name for p in out.iterdir()) == ["lamp-0001.bin", "lamp-0001.csv"]  # no temporary left


def test_flash_copies_and_backups(tmp_path, umask022):
    backup = tmp_path / "nvs-backup" / "ttyUSB0.bin"
    backup.parent.mkdir()
    backup.write_bytes(registered_image())
    proc = run(PYTHON, FLASH, "choose-nvs", "--backup", backup, "--out", tmp_path / "nvs-backup" / "w.bin")
    assert proc.returncode == 0, proc.stderr
    private(tmp_path / "nvs-backup" / "w.bin")
    keep, = (tmp_path / "nvs-backup" / "keep").iterdir()
    private(keep)


def test_make_nvs_backup_writes_the_backup_0600(tmp_path, umask022):
    """`make nvs-backup` runs esptool read-flash into the backup (here a stand-in that writes the image the way
    esptool does: open "wb"), then flash.py show; new or existing, the file ends up 0600."""
    fake = tmp_path / "esptool.py"
    fake.write_text("import sys\nargs = sys.argv[1:]\ni = args.index('read-flash')\n"
                    "open(args[i + 3], 'wb').write(open(%r, 'rb').read())\n" % str(tmp_path / "image.bin"))
    (tmp_path / "image.bin").write_bytes(registered_image()[:0x6000])
    for existing in (False, True):
        target = tmp_path / ("backup-%s.bin" % existing)
        if existing:
            target.write_bytes(b"")
            os.chmod(target, 0o644)
        proc = run("make", "--no-print-directory", "-o", ".venv/.stamp", "-o", "build/deps/.stamp", "nvs-backup",
                   "BOARD=ESP32_GENERIC", "PORT=/dev/ttyFAKE0", "FILE=%s" % target,
                   "ESPTOOL=%s %s" % (sys.executable, fake))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "identity: dev_secret of device 'lamp-0001'" in proc.stdout
        private(target)


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
def test_sim_board_flash_file_under_both_interpreters(tmp_path, interp, umask022):
    """boards/sim's esp32.NVS writes the board's flash file 0600 without the runner's help (its umask 077)."""
    nvs = tmp_path / "nvs.bin"
    (tmp_path / "nvs.bin.tmp").write_bytes(b"stale")  # left by a power cut, with a wide mode
    os.chmod(tmp_path / "nvs.bin.tmp", 0o644)
    code = "import esp32\nn = esp32.NVS('dynreg')\nn.set_blob('dev_secret', b'x')\nn.commit()\n"
    script = tmp_path / "board.py"
    dirs = [str(REPO / "boards" / "sim" / "modules"), str(REPO / "tools" / "factory")]
    script.write_text("import sys\nsys.path[:0] = %r\n%s" % (dirs, code))
    exe = str(REPO / ".venv" / "bin" / "micropython") if interp == "micropython" else PYTHON
    proc = subprocess.run([exe, str(script)], env=dict(os.environ, DYNREG_SIM_NVS=str(nvs)), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    private(nvs)
    assert nvsformat.parse(nvs.read_bytes())["dynreg"]["dev_secret"] == ("blob", b"x")


def test_sim_runner_and_emulator_state(board, cloud, interp, tmp_path, umask022):
    """A whole registration under umask 022: the board's nvs.bin and the emulator's secret files are 0600."""
    from host_tests.conftest import tencent_settings

    result = board(tencent_settings(cloud, "SIMPSK0001", "umask-" + interp))
    assert result.rc == 0, result
    private(tmp_path / "board" / "nvs.bin")
    held = [p for p in cloud.state.iterdir() if p.suffix == ".key" or p.name == "devices.json"]
    assert len(held) >= 3
    for path in held:
        private(path)
