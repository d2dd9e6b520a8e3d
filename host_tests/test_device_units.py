"""Device code checked piece by piece under both interpreters: the test vectors of docs/platforms/, payload
decryption and its error cases, the null-secret rule, PEM to DER, back-off bounds."""

import base64
import json
import re
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from host_tests.conftest import REPO, run_on_device

SECRET = "PRODUCT_SECRETKEY_1234"


def encrypt(plain, secret=SECRET, pad=b"\0"):
    """What the cloud sends: zero-padded AES-128-CBC, key = secret[:16], IV = sixteen '0'."""
    data = plain + pad * (-len(plain) % 16)
    enc = Cipher(algorithms.AES(secret[:16].encode()), modes.CBC(b"0" * 16)).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode()


def test_protocol_vectors(interp, tmp_path):
    out = run_on_device(interp, tmp_path, """
from dynreg import crypto, tencent, tencent_reg
body = b'{"ProductId":"PRODUCT_ID1","DeviceName":"DEVICENAME1"}'
print(tencent_reg.sign_request("PRODUCT_SECRETKEY", "ap-guangzhou.gateway.tencentdevices.com", "/device/register",
                           "hmacsha1", 1629362589, 333464802, body))
print(tencent.mqtt_password("7WmFA/MEs+Fy+32QwJWtYw==", "S3EUVBRJLBdevice_1234;12010126;abcde;2147483647"))
print(crypto.hmac_hex("hmacSha1", "ef958e891ffa4c72ba6c64e73c5dd422", "uuid=rn014ebe0C20E122,ts=1662544613"))
""").split()
    assert out == ["7u3+tAPlt8O4mPpBm3lambv23sw=",
                   "c431221c27bb1b44156bf798569569b3e9b78d7778aeba89303ea1b4da21e7b3;hmacsha256",
                   "ca4ff69d9408da837ed361bd5458b9c1f92c8cbb"]


def test_payload_decryption_and_errors(interp, tmp_path):
    psk = json.dumps({"encryptionType": 2, "psk": "7WmFA/MEs+Fy+32QwJWtYw=="}, separators=(",", ":")).encode()
    cases = {
        "ok": (encrypt(psk), len(psk), SECRET),
        "wrongkey": (encrypt(psk), len(psk), "ANOTHER_SECRET_XYZ"),
        "notb64": ("@@@@", 4, SECRET),
        "not16": (base64.b64encode(b"x" * 20).decode(), 20, SECRET),
        "biglen": (encrypt(psk), 999, SECRET),
        "badpad": (encrypt(psk, pad=b" "), len(psk), SECRET),
        "notjson": (encrypt(b"hello world"), 11, SECRET),
        "nolen": (encrypt(psk), None, SECRET),
        "unknowntype": (encrypt(b'{"encryptionType":7}'), 20, SECRET),
        "nopsk": (encrypt(b'{"encryptionType":2}'), 20, SECRET),
    }
    code = "import json\nfrom dynreg import tencent_reg as tencent, DynregError\ncases = json.loads(%r)\n" % json.dumps(cases) + """
for name in sorted(cases):
    payload, length, secret = cases[name]
    try:
        items = tencent.credentials(tencent.decrypt_payload(payload, length, secret.encode()))
        print(name, "OK", [k for k, v in items], items[0][1].decode())
    except DynregError as e:
        print(name, "ERR", e)
"""
    lines = dict(line.split(" ", 1) for line in run_on_device(interp, tmp_path, code).splitlines())
    assert lines["ok"] == "OK ['dev_secret'] 7WmFA/MEs+Fy+32QwJWtYw=="
    for name, words in {"wrongkey": "wrong product secret", "notb64": "not valid base64",
                        "not16": "does not fit a 20-byte payload", "biglen": "Len 999 does not fit",
                        "badpad": "does not decrypt to JSON", "notjson": "does not decrypt to JSON",
                        "nolen": "positive Len", "unknowntype": "unknown encryptionType",
                        "nopsk": "no usable psk"}.items():
        assert lines[name].startswith("ERR") and words in lines[name], (name, lines[name])


def test_null_secret_rule_pem_and_backoff(interp, tmp_path):
    out = run_on_device(interp, tmp_path, """
from dynreg import flow, tencent_reg
from dynreg.store import is_null
print([is_null(v) for v in (None, b"", b"  ", b"YOUR_DEVICE_SECRET", b"YOUR_IOT_PSK", b"abc", b"0")])
pem = b"-----BEGIN CERTIFICATE-----\\nAAEC\\nAwQF\\n-----END CERTIFICATE-----\\n"
print(tencent_reg.pem_to_der(pem) == bytes([0, 1, 2, 3, 4, 5]))
waits = [flow.backoff_ms(a, 1000, 60000) for a in range(1, 12) for _ in range(20)]
print(min(waits) >= 500, max(waits) <= 60000, max(flow.backoff_ms(1, 1000, 60000) for _ in range(50)) <= 1000)
""").splitlines()
    assert out == ["[True, True, True, True, True, False, False]", "True", "True True True"]


def test_tencent_time_reply_is_taken_only_while_fresh(interp, tmp_path):
    out = run_on_device(interp, tmp_path, """
import time
from dynreg import net, tencent


class Dev:
    product, ident = "P1", "d1"

    def publish(self, topic, msg):
        print("asked on", topic)


dev = Dev()
tencent.after_login(dev)
now_ms = (net.unix_time() + 100) * 1000  # the cloud's clock runs 100 s ahead
reply = '{"type":"get","time":%d,"ntptime1":%d,"ntptime2":%d}' % (now_ms // 1000, now_ms, now_ms)
print(tencent.handle(dev, b"$thing/down/property/P1/d1", reply))  # not the time service's topic
print(tencent.handle(dev, b"$sys/operation/result/P1/d1", reply), 99 <= net.unix_time() - int(time.time()) <= 101)
tencent._asked = time.ticks_add(time.ticks_ms(), -6000)  # read 6 s after asking: the midpoint is no good
print(tencent.handle(dev, b"$sys/operation/result/P1/d1", '{"ntptime1":1700000000000,"ntptime2":1700000000000}'))
print(99 <= net.unix_time() - int(time.time()) <= 101)
""").splitlines()
    assert out[0] == "asked on $sys/operation/P1/d1" and out[1] == "False" and out[3] == "True True", out
    assert re.search(r"tencent: time synced over \$sys/operation \(clock offset \+(99|100|101) s\)", out[2]), out
    assert "tencent: time reply read after 600" in out[4] and out[4].endswith(" ms ignored"), out
    assert out[5:] == ["True", "True"], out


def test_tls_context_needs_a_valid_ca(interp, tmp_path):
    out = run_on_device(interp, tmp_path, """
from dynreg import ConfigError, net
for ca in (None, b"", b"not a certificate"):
    try:
        net.tls_context(ca)
        print("accepted")
    except ConfigError as e:
        print("ConfigError", e)
""").splitlines()
    assert out[0].startswith("ConfigError TLS needs the CA certificate in NVS key 'ca'") and out[1] == out[0], out
    assert out[2].startswith("ConfigError TLS: the CA (NVS 'ca') or client certificate/key is not valid DER"), out


def test_tls_verifies_the_server_name(interp, tmp_path, cloud):
    """As strict under CPython's ssl shim as on the hardware: CERT_REQUIRED checks the name, and a
    client that gives no server_hostname gets no connection."""
    import ssl as host_ssl

    ca = host_ssl.PEM_cert_to_DER_cert((cloud.state / "ca.pem").read_text())
    out = run_on_device(interp, tmp_path, """
import binascii
from dynreg import net
ctx = net.tls_context(binascii.unhexlify(%r))
for name in ("localhost", "not-the-server.example", None):
    s = net.open_socket("localhost", %d)
    try:
        t = ctx.wrap_socket(s, server_hostname=name)
        print(name, "connected")
        t.close()
    except (OSError, ValueError) as e:
        print(name, "refused", type(e).__name__, str(e).strip())
        s.close()
""" % (ca.hex(), cloud.ports["https"])).splitlines()
    assert out == ["localhost connected", "not-the-server.example refused ValueError The certificate Common Name (CN) "
                   "does not match with the expected CN", "None refused ValueError CERT_REQUIRED requires "
                   "server_hostname"], out


BACKOFF_MAIN = """
import json
from dynreg import flow
print(json.dumps([flow.backoff_ms(a, 50, 400) for a in range(1, 4)] + [flow.backoff_ms(9, 50, 400) for _ in range(16)]))
"""


def test_backoff_waits_vary_between_attempts_and_boards(interp, tmp_path):
    """Jitter, not only bounds: two boards (two boots, each seeding its own generator) draw different
    waits, and one board's waits at the cap differ from each other. At the cap a wait is one of 201
    values (200..400 ms): 16 equal draws have probability 201**-15 < 1e-34, two boards drawing the same
    19 waits about 201**-16 < 1e-36; a false failure is astronomically unlikely."""
    boards = []
    for n in range(2):
        (tmp_path / str(n)).mkdir()
        boards.append(json.loads(run_on_device(interp, tmp_path / str(n), BACKOFF_MAIN)))
    for waits in boards:
        for a, w in enumerate(waits[:3], 1):
            assert 50 << (a - 1) >> 1 <= w <= 50 << (a - 1), (a, w)  # [d/2, d], d = base * 2^(a-1)
        assert all(200 <= w <= 400 for w in waits[3:]) and len(set(waits[3:])) > 1, waits
    assert boards[0] != boards[1], boards


STORE_MAIN = """
from dynreg import ConfigError
from dynreg.store import Store
st = Store()
print(st.get("nokey"), st.text("nokey", "dflt"), st.int("nokey", 7), st.int("nokey"))
try:
    st.need("nokey")
except ConfigError as e:
    print("ConfigError", e)
for n in (0, 63, 64, 65, 256, 257, 1024, 1025, 4096):  # the read buffer grows 64 -> 256 -> 1024 -> 4096
    st.set("b%d" % n, b"%c" % (65 + n % 26) * n)
    v = st.get("b%d" % n)
    print(n, type(v).__name__, v == b"%c" % (65 + n % 26) * n)
st.set("big", b"x" * 4097)
for f, key in ((st.get, "big"), (st.get, "a-key-of-16-char"), (st.int, "a-key-of-16-char"),
               (st.erase, "a-key-of-16-char")):  # errors other than "not found" reach the caller
    try:
        print(len(f(key)))
    except OSError as e:
        print("OSError", e.errno)
st.set("t", "h\\u00e9llo")
st.set("empty", b"")
print(st.text("t"), st.need("t"), st.text("empty", "dflt"), st.text("nokey"))
st.nvs.set_i32("i", -5)
print(st.int("i"), st.int("t", 3))
st.erase("t")
st.erase("t")
print(st.get("t"), Store("other").get("b64"))
st.set("kept", b"1")
st.commit()
st.set("lost", b"1")
"""


def test_store(interp, tmp_path):
    """dynreg.store over the sim's NVS: absent keys, blobs across the buffer growth steps and the cap,
    text, i32, erase, namespaces, and only committed writes surviving a reboot."""
    out = run_on_device(interp, tmp_path, STORE_MAIN).splitlines()
    sizes = (0, 63, 64, 65, 256, 257, 1024, 1025, 4096)
    assert out == ["None dflt 7 None", "ConfigError NVS key 'nokey' is missing"] + [
        "%d bytes True" % n for n in sizes] + ["OSError -4364"] + ["OSError -4361"] * 3 + ["h\u00e9llo h\u00e9llo dflt None",
                                              "-5 3", "None None"], out
    after = run_on_device(interp, tmp_path, "from dynreg.store import Store\nimport esp32\nst = Store()\n"
                          "b = bytearray(4)\nn = esp32.NVS('dynreg').get_blob('kept', b)\n"
                          "print(st.get('kept'), st.get('lost'), st.int('i'), bytes(b[:n]))\n").splitlines()
    assert after == ["b'1' None -5 b'1'"], after  # in the "dynreg" namespace, committed writes only
