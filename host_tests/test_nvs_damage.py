"""Damaged NVS is told apart from a board that never registered (the identity marker dev_id), and a
power cut during registration never looks like damage. The sim's NVS is corrupted between boots the
way flash goes bad; its reader skips what ESP-IDF skips (tools/factory/nvsformat.py)."""
import random
import subprocess

from host_tests.conftest import PYTHON, REPO, tencent_settings
from tools.factory import nvsformat

PID = "SIMPSK0001"
PAGE, ENTRY, FIRST_ENTRY = 4096, 32, 64


def registrations(cloud, name):
    record = cloud.devices().get("tencent", {}).get("%s/%s" % (PID, name))
    return record["registrations"] if record else 0


def registered_board(board, cloud, tmp_path, name):
    first = board(tencent_settings(cloud, PID, name))
    assert first.rc == 0 and "registering tencent device" in first.out and "mqtt: logged in" in first.out, first
    nvs = tmp_path / "board" / "nvs.bin"
    assert nvsformat.parse(nvs.read_bytes())["dynreg"]["dev_id"] == ("blob", ("tencent/" + name).encode())
    return nvs


def test_a_flipped_byte_in_the_secret_is_damage_not_a_new_board(board, cloud, interp, tmp_path):
    name = "damage-%s" % interp
    nvs = registered_board(board, cloud, tmp_path, name)
    image = bytearray(nvs.read_bytes())
    at = image.find(b"dev_secret\x00") - 8  # the key field of the secret's first item: its data chunk
    assert at > 0 and (at % PAGE - FIRST_ENTRY) % ENTRY == 0
    image[at + ENTRY] ^= 0x01  # one bit of the secret itself: the chunk's CRC no longer matches
    nvs.write_bytes(bytes(image))
    assert "dev_secret" not in nvsformat.parse(bytes(image))["dynreg"]  # unreadable, as on ESP-IDF
    before = registrations(cloud, name)
    second = board(tencent_settings(cloud, PID, name), fresh=False)
    assert second.rc == 1, second  # ConfigError: retrying cannot help, the REPL stays usable
    assert "NVS damaged: marker of tencent/%s, no secret; not registering: make nvs-restore" % name in second.out
    assert "make nvs-restore" in second.out and "registering tencent device" not in second.out
    assert registrations(cloud, name) == before  # no new registration, no identity replaced


def test_an_erased_or_garbled_partition_is_reported_as_such(board, cloud, interp, tmp_path):
    name = "erased-%s" % interp
    nvs = registered_board(board, cloud, tmp_path, name)
    size = len(nvs.read_bytes())
    garbage = bytes(random.Random(7).getrandbits(8) for _ in range(size))
    for image in (nvsformat.erased(size), garbage):
        nvs.write_bytes(image)
        run = board(tencent_settings(cloud, PID, name), fresh=False)
        assert run.rc == 1, run
        assert "NVS empty (erased or unreadable): flash an image or make nvs-restore" in run.out
        assert "make nvs-restore" in run.out and "NVS key 'platform' is None" not in run.out


def test_a_power_cut_before_the_marker_is_a_registered_board(board, cloud, interp, tmp_path):
    """Registration writes the secret, then the marker: cut between the two, the board is registered (its
    secret is whole) and gets its marker at its first login; it is never taken for damage."""
    name = "cut-%s" % interp
    run = board(tencent_settings(cloud, PID, name), extra=("--fault", "nvs_write:2"))
    assert run.rc == 0, run
    assert "power cut (fault injected)" in run.out and "NVS damaged" not in run.out
    assert run.out.count("registering tencent device") == 1 and "mqtt: logged in" in run.out
    keys = nvsformat.parse((tmp_path / "board" / "nvs.bin").read_bytes())["dynreg"]
    assert keys["dev_id"] == ("blob", ("tencent/" + name).encode()) and keys["dev_secret"][1]
    assert registrations(cloud, name) == 1


def test_a_refused_registration_says_what_may_be_wrong(board, cloud, interp, tmp_path):
    """Secret and marker both lost on an activated device: it registers again, the cloud refuses, and its
    failure line (each retry, the last one) says how to recover instead of looping silently."""
    name = "lost-%s" % interp
    nvs = registered_board(board, cloud, tmp_path, name)
    keys = nvsformat.parse(nvs.read_bytes())["dynreg"]
    kept = dict((k, v) for k, v in keys.items() if k not in ("dev_secret", "dev_id"))
    nvs.write_bytes(bytes(nvsformat.build({"dynreg": kept}, len(nvs.read_bytes()))))
    run = board(tencent_settings(cloud, PID, name), fresh=False)  # NVS kept: max_tries=1 from the factory
    assert run.rc == 1, run
    assert run.out.count("registration refused: FailedOperation.DeviceAlreadyActivated") == 1
    assert "giving up after 1 attempts; last: DynregError: tencent: registration refused: FailedOperation." \
           "DeviceAlreadyActivated" in run.out
    assert run.out.count("(NVS lost? make nvs-restore)") == 1


def test_flash_tools_name_a_damaged_backup(tmp_path):
    from tools.factory import provision

    image = tmp_path / "backup.bin"
    image.write_bytes(provision.build_image({"platform": "tencent", "prod_id": PID, "dev_id": "tencent/lamp-1"}))
    shown = subprocess.run([PYTHON, str(REPO / "tools" / "factory" / "flash.py"), "show", str(image)],
                           capture_output=True, text=True)
    assert "identity: DAMAGED: the board's NVS holds the marker of device tencent/lamp-1" in shown.stdout
    factory = tmp_path / "factory.bin"
    factory.write_bytes(provision.build_image({"platform": "tencent", "prod_id": PID}))
    chosen = subprocess.run([PYTHON, str(REPO / "tools" / "factory" / "flash.py"), "choose-nvs", "--backup",
                             str(image), "--nvs", str(factory), "--out", str(tmp_path / "w.bin")],
                            capture_output=True, text=True)
    assert chosen.returncode == 0 and "WARNING: the board's NVS holds the marker" in chosen.stderr
    assert "make nvs-restore" in chosen.stderr
