"""Tests of the simulated ESP32 board (boards/sim), its runner (tools/sim)
and tools/fetch_deps.py.

Shim tests run the same snippet under the MicroPython unix port and CPython:
under MicroPython the real ssl/cryptolib/socket are used, so agreement of the
two runs checks the CPython stand-ins against the real thing.
"""
import datetime
import importlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from host_tests.conftest import SIM_RUNNER, board_path

REPO = Path(__file__).resolve().parent.parent
SIM = REPO / "boards" / "sim"
INTERPS = ["micropython", "cpython"]
MICROPYTHON = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")


fetch_deps = importlib.import_module("tools.fetch_deps")
sim = importlib.import_module("tools.sim.run")
nvsformat = importlib.import_module("tools.factory.nvsformat")


def run_board(interp, code, tmp_path, env=None, extra_path=(), timeout=30):
    """Run a snippet with the board's shims on sys.path; return CompletedProcess."""
    dirs = board_path(interp) + [str(p) for p in extra_path]
    header = "import sys\nsys.path[:0] = %r\n" % dirs
    script = tmp_path / ("snippet_%s.py" % interp)
    script.write_text(header + textwrap.dedent(code))
    command = [MICROPYTHON if interp == "micropython" else sys.executable, str(script)]
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    full_env.update(env or {})
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# --------------------------------------------------------------------------- NVS

NVS_RULES = """
import esp32

def code(func, *args):
    try:
        func(*args)
    except OSError as e:
        return e.args[0]
    return 0

n = esp32.NVS("dynreg")
assert code(n.get_i32, "missing") == -4354
assert code(n.get_blob, "missing", bytearray(4)) == -4354
n.set_i32("num", -5)
assert n.get_i32("num") == -5
assert code(n.get_blob, "num", bytearray(8)) == -4354      # wrong type
n.set_blob("text", b"hello")
assert code(n.get_i32, "text") == -4354                     # wrong type
buf = bytearray(16)
assert n.get_blob("text", buf) == 5 and bytes(buf[:5]) == b"hello"
assert code(n.get_blob, "text", bytearray(4)) == -4364      # short buffer
n.set_blob("s", "str is a buffer")
assert n.get_blob("s", buf) == 15
assert code(n.set_i32, "k" * 16, 1) == -4361                # 16-byte key
assert code(n.get_i32, "k" * 16) == -4361
n.set_i32("k" * 15, 1)
assert code(esp32.NVS, "n" * 16) == -4361
assert code(n.erase_key, "missing") == -4354
n.erase_key("num")
assert code(n.get_i32, "num") == -4354
try:
    n.set_i32("big", 2 ** 31)
    raise AssertionError("no overflow")
except OverflowError:
    pass
assert code(n.set_blob, "huge", bytes(20001)) == -4366      # over (6 - 1) pages x 4000 bytes
# capacity, exactly as nvsformat lays the 0x6000 partition out (5 usable pages of 126
# entries): "dynreg" fills entries 0-7 of page 0 (namespace, text 3, s 3, k..k 1);
# "cap" has its namespace item at 8, then each 4000-byte blob takes the rest of a page
# and 9 + 2k entries of the next: b3 ends at entry 17 of page 4 (the last usable one)
c = esp32.NVS("cap")
for i in range(4):
    c.set_blob("b%d" % i, bytes(4000))
assert code(c.set_blob, "b4", bytes(4000)) == -4357
assert code(c.set_blob, "b0", bytes(4000)) == 0             # unchanged value: nothing written
assert code(c.set_blob, "b0", b"\x01" * 4000) == 0         # replacing: same layout, fits
# 109 entries left: chunk header + 107 data entries + blob index = 3424 bytes at most
assert code(c.set_blob, "last", bytes(3425)) == -4357
c.set_blob("last", bytes(3424))
assert code(c.set_i32, "one", 1) == -4357                   # page 4 is full now
c.erase_key("last")
c.set_i32("one", 1)
print("OK")
"""


@pytest.mark.parametrize("interp", INTERPS)
def test_nvs_rules(interp, tmp_path):
    out = ok(run_board(interp, NVS_RULES, tmp_path, {"DYNREG_SIM_NVS": str(tmp_path / "nvs.bin")}))
    assert out.strip() == "OK"


WRITE = """
import esp32
n = esp32.NVS("dynreg")
n.set_i32("a", 1)
n.set_blob("b", b"\\x00\\xff")
if COMMIT:
    n.commit()
n.set_i32("late", 2)  # after the commit: never durable
"""
READ = """
import esp32
n = esp32.NVS("dynreg")
buf = bytearray(8)
for key in ("a", "late"):
    try:
        print(key, n.get_i32(key))
    except OSError as e:
        print(key, e.args[0])
try:
    print("b", list(buf[: n.get_blob("b", buf)]))
except OSError as e:
    print("b", e.args[0])
"""


@pytest.mark.parametrize("writer", INTERPS)
@pytest.mark.parametrize("reader", INTERPS)
def test_nvs_durable_only_after_commit(writer, reader, tmp_path):
    env = {"DYNREG_SIM_NVS": str(tmp_path / "nvs.bin")}
    ok(run_board(writer, "COMMIT = False\n" + WRITE, tmp_path, env))
    assert not (tmp_path / "nvs.bin").exists()  # nothing committed: the flash stays erased
    assert ok(run_board(reader, READ, tmp_path, env)).split("\n")[:3] == ["a -4354", "late -4354", "b -4354"]
    ok(run_board(writer, "COMMIT = True\n" + WRITE, tmp_path, env))
    assert ok(run_board(reader, READ, tmp_path, env)).split("\n")[:3] == ["a 1", "late -4354", "b [0, 255]"]
    image = (tmp_path / "nvs.bin").read_bytes()
    assert len(image) == 0x6000  # DYNREG_SIM_NVS_SIZE unset: the default partition
    assert nvsformat.parse(image) == {"dynreg": {"a": ("i32", 1), "b": ("blob", b"\x00\xff")}}


# --------------------------------------------------------------------------- machine

@pytest.mark.parametrize("interp", INTERPS)
def test_machine_reset_exits_86_and_keeps_committed_nvs(interp, tmp_path):
    env = {"DYNREG_SIM_NVS": str(tmp_path / "nvs.bin"), "DYNREG_SIM_MAC": "a0b1c2d3e4f5"}
    code = """
    import esp32, machine
    assert machine.unique_id() == b"\\xa0\\xb1\\xc2\\xd3\\xe4\\xf5"
    n = esp32.NVS("dynreg")
    n.set_i32("kept", 7)
    n.commit()
    n.set_i32("lost", 8)
    print("before reset")
    machine.reset()
    print("after reset")
    """
    result = run_board(interp, code, tmp_path, env)
    assert result.returncode == 86, result.stderr
    assert result.stdout == "before reset\n"
    assert nvsformat.parse((tmp_path / "nvs.bin").read_bytes()) == {"dynreg": {"kept": ("i32", 7)}}


# --------------------------------------------------------------------------- network

WLAN = """
import network, ntptime, time
w = network.WLAN(network.STA_IF)
assert network.WLAN(network.STA_IF).active() is False
try:
    w.connect("sim-ap", "secret")
    raise AssertionError("connected while inactive")
except OSError as e:
    assert e.args[0] == "Wifi Not Started"
w.active(True)
assert w.config("mac") == b"\\x24\\x0a\\xc4\\x12\\x34\\x56"
assert network.WLAN(network.AP_IF).config("mac") == b"\\x24\\x0a\\xc4\\x12\\x34\\x57"

def attempt(ssid, key):
    w.connect(ssid, key)
    first = (w.status(), w.isconnected())
    time.sleep(0.1)
    return first, w.status(), w.isconnected()

print(attempt("sim-ap", "wrong"))
print(attempt("other", "secret"))
try:
    ntptime.settime()
except OSError as e:
    print("ntp", e.args[0])
print(attempt("sim-ap", "secret"))
print(w.ifconfig()[0])
ntptime.settime()
w.disconnect()
print(w.status(), w.isconnected())
"""


@pytest.mark.parametrize("interp", INTERPS)
def test_wlan(interp, tmp_path):
    out = ok(run_board(interp, WLAN, tmp_path, {"DYNREG_SIM_WIFI": "sim-ap\nsecret"}))
    assert out.split("\n")[:-1] == [
        "((1001, False), 202, False)",
        "((1001, False), 201, False)",
        "ntp 110",
        "((1001, False), 1010, True)",
        "192.168.4.2",
        "1000 False",
    ]


@pytest.mark.parametrize("interp", INTERPS)
def test_wlan_without_access_point(interp, tmp_path):
    code = """
    import network, time
    w = network.WLAN(network.STA_IF)
    w.active(True)
    w.connect("sim-ap", "secret")
    time.sleep(0.1)
    print(w.status(), w.ifconfig()[0])
    """
    assert ok(run_board(interp, code, tmp_path)) == "201 0.0.0.0\n"


# --------------------------------------------------------------------------- cryptolib

CRYPTOLIB = """
import cryptolib, binascii
# NIST SP 800-38A F.2.1 (CBC-AES128.Encrypt)
key = binascii.unhexlify("2b7e151628aed2a6abf7158809cf4f3c")
iv = binascii.unhexlify("000102030405060708090a0b0c0d0e0f")
pt = binascii.unhexlify("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
whole = cryptolib.aes(key, 2, iv).encrypt(pt)
enc = cryptolib.aes(key, 2, iv)
parts = enc.encrypt(pt[:16]) + enc.encrypt(pt[16:])   # CBC chains across calls
print(binascii.hexlify(whole).decode(), whole == parts)
print(cryptolib.aes(key, 2, iv).decrypt(whole) == pt)
out = bytearray(32)
print(cryptolib.aes(key, 1).encrypt(pt, out) is out, binascii.hexlify(out).decode())

def error(func):
    try:
        func()
    except ValueError as e:
        return e.args[0]

print(error(lambda: enc.decrypt(whole)))
print(error(lambda: cryptolib.aes(key, 2, iv).encrypt(pt[:15])))
print(error(lambda: cryptolib.aes(key, 2)), error(lambda: cryptolib.aes(key[:15], 1)), error(lambda: cryptolib.aes(key, 6, iv)))
"""


def test_cryptolib_stand_in_matches_micropython(tmp_path):
    real = ok(run_board("micropython", CRYPTOLIB, tmp_path))
    stand_in = ok(run_board("cpython", CRYPTOLIB, tmp_path))
    assert stand_in == real
    lines = real.split("\n")
    assert lines[0] == "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2 True"
    assert lines[3:6] == ["can't encrypt & decrypt", "blksize % 16", "IV key mode"]


# --------------------------------------------------------------------------- TLS

def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_cert(common_name, issuer=None, ca=False, sans=None):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer[1].subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(issuer[0] if issuer else key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server cert for localhost/127.0.0.1, a client cert, a stranger CA."""
    out = tmp_path_factory.mktemp("pki")
    ca = _make_cert("Sim Test CA", ca=True)
    other = _make_cert("Other CA", ca=True)
    server = _make_cert(
        "localhost",
        issuer=ca,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _make_cert("SIMPSK0001/dev1", issuer=ca)
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    for name, (key, cert) in {"ca": ca, "other": other, "server": server, "client": client}.items():
        (out / (name + ".pem")).write_bytes(cert.public_bytes(pem))
        (out / (name + ".der")).write_bytes(cert.public_bytes(der))
        (out / (name + ".key")).write_bytes(key.private_bytes(pem, pkcs8, none))
        (out / (name + ".key.der")).write_bytes(key.private_bytes(der, pkcs8, none))
    return out


def _serve(pki, handler):
    """Start a threaded TLS server on 127.0.0.1 calling handler(tls_socket)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    ctx.load_verify_locations(pki / "ca.pem")
    ctx.verify_mode = ssl.CERT_OPTIONAL
    listener = socket.create_server(("127.0.0.1", 0))

    def connection(conn):
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                handler(tls)
        except (OSError, ssl.SSLError):
            pass  # refused handshakes are part of the tests

    def accept_loop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return listener


@pytest.fixture(scope="module")
def echo_server(pki):
    """TLS echo server; greets with whether the client presented a certificate."""

    def echo(tls):
        tls.sendall(b"hello peer=%d\n" % (tls.getpeercert(binary_form=True) is not None))
        while True:
            data = tls.recv(1024)
            if not data:
                return
            if data == b"slow":
                threading.Event().wait(1.0)
            tls.sendall(data)

    listener = _serve(pki, echo)
    yield listener.getsockname()[1]
    listener.close()


TLS_CLIENT = """
import usocket as socket
import ssl

def connect(host, ca, cert=False, timeout=None):
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", PORT)[0][-1])
    if timeout:
        s.settimeout(timeout)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=open(PKI + ca, "rb").read())
    if cert:
        ctx.load_cert_chain(open(PKI + "client.der", "rb").read(), open(PKI + "client.key.der", "rb").read())
    return ctx.wrap_socket(s, server_hostname=host)

def outcome(*args):
    try:
        t = connect(*args)
    except ValueError as e:
        return "ValueError"
    line = t.readline()
    t.close()
    return line

print(outcome("localhost", "ca.der"))
print(outcome("wrong.example", "ca.der"))
print(outcome("localhost", "other.der"))
print(outcome("localhost", "ca.der", True))
t = connect("127.0.0.1", "ca.der", True, 0.3)
print(t.readline())
print(t.write(b"abcdef", 3), t.read(3))
t.setblocking(False)
print(t.read(1))
t.setblocking(True)
t.write(b"slow")
try:
    t.read(4)
except OSError as e:
    print("timeout", e.args[0])
t.close()
s = socket.socket()
s.connect(socket.getaddrinfo("localhost", PORT)[0][-1])
t = ssl.wrap_socket(s, server_hostname="localhost", cert_reqs=ssl.CERT_REQUIRED, cadata=open(PKI + "ca.der", "rb").read())
buf = bytearray(20)
print(t.readinto(buf, 13), bytes(buf[:13]))
t.close()
"""


@pytest.mark.parametrize("interp", INTERPS)
def test_tls_client(interp, tmp_path, pki, echo_server):
    code = "PORT = %d\nPKI = %r\n" % (echo_server, str(pki) + "/") + TLS_CLIENT
    out = ok(run_board(interp, code, tmp_path))
    assert out.split("\n")[:-1] == [
        "b'hello peer=0\\n'",
        "ValueError",
        "ValueError",
        "b'hello peer=1\\n'",
        "b'hello peer=1\\n'",
        "3 b'abc'",
        "None",
        "timeout 110",
        "13 b'hello peer=0\\n'",
    ]


def test_tls_pem_accepted_on_cpython(tmp_path, pki, echo_server):
    code = """
    import usocket as socket, ssl
    s = socket.socket()
    s.connect(("127.0.0.1", PORT))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=PKI + "ca.pem")
    ctx.load_cert_chain(PKI + "client.pem", PKI + "client.key")
    print(ctx.wrap_socket(s, server_hostname="localhost").readline())
    """
    code = "PORT = %d\nPKI = %r\n" % (echo_server, str(pki) + "/") + textwrap.dedent(code)
    assert ok(run_board("cpython", code, tmp_path)) == "b'hello peer=1\\n'\n"


# --------------------------------------------------------------------------- umqtt over TLS

@pytest.fixture(scope="module")
def deps(tmp_path_factory):
    """build/deps-like directory with both umqtt variants, or skip."""
    cached = REPO / "build" / "deps" / fetch_deps.SDIST_NAME
    dest = tmp_path_factory.mktemp("deps")
    try:
        fetch_deps.fetch(dest, str(cached) if cached.exists() else None)
    except (OSError, fetch_deps.FetchError) as exc:
        pytest.skip("umqtt.simple sdist unavailable (no network, no cache): %s" % exc)
    return dest


@pytest.fixture(scope="module")
def mqtt_server(pki):
    """Minimal MQTT over TLS: CONNACK, then echo every PUBLISH back."""

    def read_packet(tls):
        header = tls.recv(1)
        if not header:
            return None, b""
        length, shift = 0, 0
        while True:
            byte = tls.recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            body += tls.recv(length - len(body))
        return header[0], body

    def broker(tls):
        while True:
            kind, body = read_packet(tls)
            if kind is None or kind == 0xE0:
                return
            if kind == 0x10:
                tls.sendall(b"\x20\x02\x00\x00")
            elif kind & 0xF0 == 0x30:
                tls.sendall(bytes([kind, len(body)]) + body)

    listener = _serve(pki, broker)
    yield listener.getsockname()[1]
    listener.close()


UMQTT = """
from umqtt.simple import MQTTClient
import ssl
cadata = open(PKI + "ca.der", "rb").read()
if VARIANT == "frozen":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cadata)
    c = MQTTClient("dev", "localhost", PORT, user="u", password="p", ssl=ctx)
else:
    params = {"cert_reqs": ssl.CERT_REQUIRED, "cadata": cadata, "server_hostname": "localhost"}
    c = MQTTClient("dev", "localhost", PORT, user="u", password="p", ssl=True, ssl_params=params)
got = []
c.set_callback(lambda topic, msg: got.append((topic, msg)))
print(c.connect())
c.publish(b"t/1", b"payload")
c.wait_msg()
print(got, c.check_msg())
c.disconnect()
"""


@pytest.mark.parametrize("variant", ["frozen", "legacy"])
@pytest.mark.parametrize("interp", INTERPS)
def test_umqtt_over_tls(interp, variant, tmp_path, pki, deps, mqtt_server):
    code = "PORT = %d\nPKI = %r\nVARIANT = %r\n" % (mqtt_server, str(pki) + "/", variant) + UMQTT
    out = ok(run_board(interp, code, tmp_path, extra_path=[deps / variant]))
    assert out == "0\n[(b't/1', b'payload')] None\n"


# --------------------------------------------------------------------------- runner

COUNTER_MAIN = """
import esp32, machine
nvs = esp32.NVS("dynreg")
try:
    n = nvs.get_i32("boots")
except OSError:
    n = 0
n += 1
nvs.set_i32("boots", n)
nvs.commit()
print("count", n)
if n < 3:
    machine.reset()
"""


def make_firmware(tmp_path, main, boot=None):
    firmware = tmp_path / "firmware"
    (firmware / "lib").mkdir(parents=True)
    (firmware / "main.py").write_text(textwrap.dedent(main))
    if boot:
        (firmware / "boot.py").write_text(textwrap.dedent(boot))
    return firmware


def write_settings(tmp_path, settings):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    return path


def run_sim(*args, timeout=60):
    command = [sys.executable, str(SIM_RUNNER)] + [str(a) for a in args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("interp", INTERPS)
def test_runner_boots_until_main_returns(interp, tmp_path):
    firmware = make_firmware(tmp_path, COUNTER_MAIN, boot="print('boot.py', 'ran')\n")
    settings = write_settings(tmp_path, {"platform": "tencent", "wifi_ssid": "ap", "wifi_pass": "pw"})
    state = tmp_path / "state"
    result = run_sim("--settings", settings, "--firmware", firmware, "--state", state, "--interp", interp)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:] == [
        "[sim] boot 1 (%s)" % interp, "boot.py ran", "count 1",
        "[sim] machine.reset(): rebooting, RAM cleared, NVS kept",
        "[sim] boot 2 (%s)" % interp, "boot.py ran", "count 2",
        "[sim] machine.reset(): rebooting, RAM cleared, NVS kept",
        "[sim] boot 3 (%s)" % interp, "boot.py ran", "count 3",
        "[sim] main.py returned",
    ]
    assert lines[0].startswith("[sim] NVS provisioned from ")
    # NVS survives runs; --fresh provisions again
    again = run_sim("--settings", settings, "--firmware", firmware, "--state", state, "--interp", interp)
    assert again.returncode == 0 and "count 4" in again.stdout and "[sim] NVS kept" in again.stdout
    fresh = run_sim("--settings", settings, "--firmware", firmware, "--state", state, "--interp", interp, "--fresh")
    assert fresh.returncode == 0 and "count 3" in fresh.stdout and "[sim] boot 3" in fresh.stdout


def test_runner_gives_up_after_max_boots(tmp_path):
    firmware = make_firmware(tmp_path, "import machine\nmachine.reset()\n")
    settings = write_settings(tmp_path, {})
    result = run_sim("--settings", settings, "--firmware", firmware, "--state", tmp_path / "s", "--max-boots", "2")
    assert result.returncode == 3
    assert result.stdout.splitlines()[-2:] == [
        "[sim] machine.reset(): rebooting, RAM cleared, NVS kept",
        "[sim] more than 2 boots: giving up",
    ]
    assert "[sim] boot 3" not in result.stdout


@pytest.mark.parametrize("interp", INTERPS)
def test_runner_passes_exception_exit_code(interp, tmp_path):
    firmware = make_firmware(tmp_path, "def f():\n    raise RuntimeError('boom')\nf()\n")
    settings = write_settings(tmp_path, {})
    result = run_sim("--settings", settings, "--firmware", firmware, "--state", tmp_path / "s", "--interp", interp)
    assert result.returncode == 1
    assert "RuntimeError: boom" in result.stdout + result.stderr
    assert 'File "main.py", line 2' in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "[sim] board stopped with exit code 1"


def test_runner_boot_timeout(tmp_path):
    firmware = make_firmware(tmp_path, "import time\ntime.sleep(30)\n")
    settings = write_settings(tmp_path, {})
    result = run_sim("--settings", settings, "--firmware", firmware, "--state", tmp_path / "s", "--boot-timeout", "0.5")
    assert result.returncode == 4
    assert "[sim] boot 1 still running after 0.5 s: stopped" in result.stdout


def test_runner_rejects_long_key_before_booting(tmp_path):
    firmware = make_firmware(tmp_path, "print('booted')\n")
    settings = write_settings(tmp_path, {"platform": "tencent", "registration_host": "x"})
    result = run_sim("--settings", settings, "--firmware", firmware, "--state", tmp_path / "s")
    assert result.returncode == 2
    assert result.stdout == "[sim] error: settings %s: key 'registration_host' is 17 bytes; NVS keys are at most 15\n" \
        % settings
    assert not (tmp_path / "s" / "nvs.bin").exists()


def test_runner_reports_missing_cloud_file(tmp_path):
    firmware = make_firmware(tmp_path, "print('booted')\n")
    settings = write_settings(tmp_path, {"ca": {"file": "@cloud/ca.pem"}})
    result = run_sim("--settings", settings, "--firmware", firmware, "--state", tmp_path / "s", "--cloud-state", tmp_path / "nocloud")
    assert result.returncode == 2
    assert "cloud emulator creates it" in result.stdout and "booted" not in result.stdout


READ_SETTINGS_MAIN = """
import esp32, network, time, binascii
nvs = esp32.NVS("dynreg")
buf = bytearray(1024)
for key in ("platform", "ca", "dev_cert", "dev_key", "prod_secret"):
    n = nvs.get_blob(key, buf)
    print(key, binascii.hexlify(buf[:n]).decode())
print("reg_port", nvs.get_i32("reg_port"))
try:
    nvs.get_blob("_comment", buf)
except OSError as e:
    print("_comment", e.args[0])
w = network.WLAN(network.STA_IF)
w.active(True)
ssid = bytes(buf[: nvs.get_blob("wifi_ssid", buf)]).decode()
password = bytes(buf[: nvs.get_blob("wifi_pass", buf)]).decode()
w.connect(ssid, password)
time.sleep(0.1)
print("wifi", w.isconnected())
"""


@pytest.mark.parametrize("interp", INTERPS)
def test_runner_provisions_settings(interp, tmp_path, pki):
    cloud = tmp_path / "cloud"
    cloud.mkdir()
    shutil.copy(pki / "ca.pem", cloud / "ca.pem")
    (tmp_path / "certs").mkdir()
    shutil.copy(pki / "client.pem", tmp_path / "certs" / "dev.pem")
    shutil.copy(pki / "client.key.der", tmp_path / "certs" / "dev.key.der")
    settings = write_settings(tmp_path, {
        "_comment": "ignored",
        "platform": "tencent",
        "wifi_ssid": "sim-ap",
        "wifi_pass": "sim-pass-123",
        "prod_secret": "s3cr3t-value-xyz",
        "reg_port": 8443,
        "ca": {"file": "@cloud/ca.pem"},
        "dev_cert": {"file": "certs/dev.pem"},
        "dev_key": {"file": "certs/dev.key.der"},
    })
    firmware = make_firmware(tmp_path, READ_SETTINGS_MAIN)
    result = run_sim("--settings", settings, "--firmware", firmware, "--state", tmp_path / "s",
                     "--cloud-state", cloud, "--interp", interp)
    assert result.returncode == 0, result.stdout + result.stderr
    values = dict(line.split(" ", 1) for line in result.stdout.splitlines() if not line.startswith("[sim]"))
    assert values["platform"] == b"tencent".hex()
    assert values["ca"] == (pki / "ca.der").read_bytes().hex()
    assert values["dev_cert"] == (pki / "client.der").read_bytes().hex()
    assert values["dev_key"] == (pki / "client.key.der").read_bytes().hex()
    assert values["reg_port"] == "8443"
    assert values["_comment"] == "-4354"
    assert values["wifi"] == "True"  # the settings' Wi-Fi is the access point in range
    assert "s3cr3t" not in "\n".join(l for l in result.stdout.splitlines() if l.startswith("[sim]"))


def test_runner_wifi_override(tmp_path):
    main = """
    import network, time, binascii
    w = network.WLAN(network.STA_IF)
    w.active(True)
    w.connect("sim-ap", "sim-pass-123")
    time.sleep(0.1)
    print("status", w.status(), binascii.hexlify(w.config("mac")).decode())
    """
    firmware = make_firmware(tmp_path, main)
    settings = write_settings(tmp_path, {"wifi_ssid": "sim-ap", "wifi_pass": "sim-pass-123"})
    for wifi, status in (("", 201), ("sim-ap:other", 202), ("sim-ap:sim-pass-123", 1010)):
        result = run_sim("--settings", settings, "--firmware", firmware, "--state", tmp_path / "s",
                         "--wifi", wifi, "--mac", "0011AABBCCDD")
        assert result.returncode == 0 and "status %d 0011aabbccdd" % status in result.stdout, \
            result.stdout + result.stderr


CLOUD_MAIN = """
import esp32, ssl, usocket as socket
nvs = esp32.NVS("dynreg")
buf = bytearray(2048)
ca = bytes(buf[: nvs.get_blob("ca", buf)])
port = nvs.get_i32("reg_port")
s = socket.socket()
s.connect(socket.getaddrinfo("localhost", port)[0][-1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(cadata=ca)
tls = ctx.wrap_socket(s, server_hostname="localhost")
tls.write(b"GET / HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n")
print("reply", tls.readline()[:8])
tls.close()
"""


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not (REPO / "tools" / "cloud" / "__main__.py").exists(), reason="no cloud emulator")
def test_runner_starts_cloud(tmp_path):
    firmware = make_firmware(tmp_path, CLOUD_MAIN)
    settings = write_settings(tmp_path, {"tls": 1, "reg_port": _free_port(), "mqtt_port": _free_port(),
                                         "ca": {"file": "@cloud/ca.pem"}})
    cloud = tmp_path / "cloud"
    result = run_sim("--settings", settings, "--firmware", firmware, "--state", tmp_path / "s",
                     "--cloud", "--cloud-state", cloud, "--fresh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reply b'HTTP/1." in result.stdout
    assert not (cloud / "ports.json").exists()  # the emulator was stopped


def test_settings_helpers(tmp_path):
    with pytest.raises(sim.SetupError, match="exactly one"):
        sim.pem_to_der(b"no pem here", "x.pem")
    with pytest.raises(sim.SetupError, match="i32"):
        sim.read_settings(write_settings(tmp_path, {"reg_port": 2**31}))
    with pytest.raises(sim.SetupError, match="tls must be an integer"):
        sim.read_settings(write_settings(tmp_path, {"tls": True}))
    big = {"k%d" % i: "x" * 4000 for i in range(6)}
    with pytest.raises(sim.SetupError, match="NOT_ENOUGH_SPACE"):
        sim.provision(sim.nvs_values(big, tmp_path, tmp_path), tmp_path / "nvs.bin")


# --------------------------------------------------------------------------- fetch_deps

@pytest.fixture(scope="module")
def sdist(deps):
    return deps / fetch_deps.SDIST_NAME


def test_fetch_deps_variants(deps, sdist):
    with tarfile.open(sdist) as tar:
        upstream = tar.extractfile(fetch_deps.MEMBER).read().decode()
    assert (deps / "legacy" / "umqtt" / "simple.py").read_text() == upstream
    frozen = (deps / "frozen" / "umqtt" / "simple.py").read_text()
    assert "ssl_params" not in frozen and "ussl" not in frozen
    assert "self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)\n" in frozen
    assert frozen.count("        if self.user:\n") == 2
    assert "ssl=None):\n" in frozen


def test_fetch_deps_derivation_fails_loudly_on_other_source(sdist):
    source = fetch_deps.extract_simple(sdist)
    with pytest.raises(fetch_deps.FetchError, match="ssl_params"):
        fetch_deps.derive_frozen(source.replace("        self.ssl_params = ssl_params\n", ""))


def test_fetch_deps_checks_hash_and_is_idempotent(tmp_path, sdist, monkeypatch):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(sdist.read_bytes() + b"\0")
    assert fetch_deps.main(["--dest", str(tmp_path / "out"), "--sdist", str(bad)]) == 1
    assert not (tmp_path / "out" / fetch_deps.SDIST_NAME).exists()
    assert fetch_deps.main(["--dest", str(tmp_path / "out"), "--sdist", str(sdist)]) == 0

    def no_network(*args, **kwargs):
        raise AssertionError("downloaded although the cache is valid")

    monkeypatch.setattr(fetch_deps, "download", no_network)
    assert fetch_deps.main(["--dest", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "frozen" / "umqtt" / "simple.py").exists()


def test_fetch_deps_uses_pips_package_index(tmp_path, sdist):
    """A mirror configured for pip (here PIP_INDEX_URL, a PEP 503 index on loopback) is where the sdist comes from."""
    from host_tests.httpdir import Served

    project = tmp_path / "mirror" / "simple" / fetch_deps.PROJECT
    project.mkdir(parents=True)
    (tmp_path / "mirror" / "files").mkdir()
    (tmp_path / "mirror" / "files" / fetch_deps.SDIST_NAME).write_bytes(sdist.read_bytes())
    (project / "index.html").write_text('<html><body><a href="../../files/%s#sha256=%s">%s</a></body></html>'
                                        % (fetch_deps.SDIST_NAME, fetch_deps.SDIST_SHA256, fetch_deps.SDIST_NAME))
    with Served(tmp_path / "mirror") as web:
        env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=web.url + "simple", PIP_EXTRA_INDEX_URL="")
        proc = subprocess.run([sys.executable, str(REPO / "tools" / "fetch_deps.py"), "--dest", str(tmp_path / "out")],
                              env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert web.paths == ["/simple/%s/" % fetch_deps.PROJECT, "/files/%s" % fetch_deps.SDIST_NAME]
    assert (tmp_path / "out" / fetch_deps.SDIST_NAME).read_bytes() == sdist.read_bytes()
    # the same index without the file: a clear error naming the index, nothing written
    (tmp_path / "mirror" / "files" / fetch_deps.SDIST_NAME).unlink()
    (project / "index.html").write_text("<html><body></body></html>")
    with Served(tmp_path / "mirror") as web:
        env["PIP_INDEX_URL"] = web.url + "simple"
        proc = subprocess.run([sys.executable, str(REPO / "tools" / "fetch_deps.py"), "--dest", str(tmp_path / "none")],
                              env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no package index pip is configured for has" in proc.stderr
    assert web.url + "simple/" + fetch_deps.PROJECT in proc.stderr
    assert not (tmp_path / "none" / fetch_deps.SDIST_NAME).exists()
