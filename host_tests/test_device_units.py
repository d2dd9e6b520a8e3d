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
    pid, ident = "P1", "d1"

    def publish(self, topic, msg):
        print("asked on", topic)


dev = Dev()
tencent.after_login(dev)
now_ms = (net.unix_time() + 100) * 1000  # the cloud's clock runs 100 s ahead
reply = '{"type":"get","time":%d,"ntptime1":%d,"ntptime2":%d}' % (now_ms // 1000, now_ms, now_ms)
print(tencent.handle(dev, b"$thing/down/property/P1/d1", reply))  # not the time service's topic
print(tencent.handle(dev, b"$sys/operation/result/P1/d1", reply), 99 <= net.unix_time() - int(time.time()) <= 101)
dev.time_asked = time.ticks_add(time.ticks_ms(), -6000)  # read 6 s after asking: the midpoint is no good
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
