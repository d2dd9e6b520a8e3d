"""Tencent IoT Explorer registration over HTTP(S): /device/register and legacy /register/dev.

Wire format: docs/platforms/tencent.md "Registration", "Legacy registration".

Imported by the registration boot only; tencent.py has the login.
"""

import binascii
import hashlib
import json
import random

from dynreg import ConfigError, DynregError, crypto, http, log, net, shown


def _b64(data):
    return binascii.b2a_base64(data)[:-1].decode()


def sign_request(secret, host, path, method, ts, nonce, body):
    """X-TC-Signature of a /device/register request: base64(HMAC(secret, StringToSign))."""
    name = crypto.hash_name(method)
    sts = "POST\n%s\n%s\n\n%s\n%d\n%d\n%s" % (
        host, path, method, ts, nonce, crypto.hexstr(getattr(hashlib, name)(body).digest()))
    return _b64(crypto.hmac(name, secret, sts))


def sign_legacy(secret, name, nonce, pid, ts):
    """Signature of a legacy /register/dev request: base64 of the hex HMAC-SHA1 text."""
    src = "deviceName=%s&nonce=%d&productId=%s&timestamp=%d" % (name, nonce, pid, ts)
    return _b64(crypto.hexstr(crypto.hmac("sha1", secret, src)).encode())


def pem_to_der(pem):
    """The DER bytes inside the first PEM block of `pem` (str or bytes): MicroPython's TLS takes DER only."""
    if isinstance(pem, str):
        pem = pem.encode()
    start = pem.find(b"-----BEGIN")
    body = pem.find(b"\n", start) + 1
    end = pem.find(b"-----END", body)
    if start < 0 or body <= 0 or end < 0:
        raise DynregError("tencent: not a PEM block")
    return crypto.b64decode(pem[body:end].replace(b"\r", b"").replace(b"\n", b""), "tencent: PEM body")


def decrypt_payload(payload, length, secret):
    """Decrypt a registration Payload (base64, AES-128-CBC, zero padding, trimmed to Len) into a dict."""
    import cryptolib

    # (a JSON true is an int to CPython, not to MicroPython: refused on both)
    if not isinstance(payload, str) or not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        raise DynregError("tencent: reply lacks a Payload string and a positive Len")
    data = crypto.b64decode(payload, "tencent: Payload")
    if length > len(data) or len(data) % 16:
        raise DynregError("tencent: Len %d does not fit a %d-byte payload" % (length, len(data)))
    data = cryptolib.aes(secret[:16], 2, b"0000000000000000").decrypt(data)  # CBC, IV sixteen "0"
    # The padding is zero bytes, and the plain text a JSON object; anything else means another key.
    try:
        if data[length:].strip(b"\0"):
            raise ValueError
        info = json.loads(data[:length])
        if isinstance(info, dict):
            return info
    except (ValueError, RuntimeError):
        pass
    raise DynregError("tencent: payload does not decrypt to JSON (wrong product secret?)")


def credentials(info):
    """NVS items to store from a decrypted payload: the psk, or the client key and certificate as DER."""
    kind = info.get("encryptionType")
    if kind == 2:
        psk = info.get("psk")
        if not isinstance(psk, str) or len(crypto.b64decode(psk, "tencent: psk")) < 16:
            raise DynregError("tencent: payload holds no usable psk")
        return [("dev_secret", psk.encode())]
    if kind == 1:
        cert, key = info.get("clientCert"), info.get("clientKey")
        if not isinstance(cert, str) or not isinstance(key, str):
            raise DynregError("tencent: payload lacks clientCert/clientKey")
        return [("dev_key", pem_to_der(key)), ("dev_cert", pem_to_der(cert))]
    raise DynregError("tencent: unknown encryptionType %r" % (kind,))


def parse_reply(body, secret):
    """The decrypted payload of a registration reply (current or legacy form); DynregError otherwise."""
    try:
        reply = json.loads(body)
        r = reply.get("Response") or reply  # the current protocol, else legacy (code, message, payload, len)
        err = r.get("Error") or (r.get("code") and r)
        if err:
            err = "%s: %s" % (shown(err.get("Code", err.get("code"))), shown(err.get("Message", err.get("message"))))
    except (ValueError, RuntimeError, AttributeError):  # not JSON, too deep, or not JSON objects
        raise DynregError("tencent: reply is not a JSON object")
    if err:
        raise DynregError("tencent: registration refused: " + err)
    return decrypt_payload(r.get("Payload", r.get("payload")), r.get("Len", r.get("len")), secret)


def register(st, name, ctx):
    """Register device `name` over HTTP(S); return the (key, value) pairs to store in NVS."""
    pid = st.need("prod_id")
    for v in (pid, name):
        for ch in v:  # ids are spliced into JSON and topics
            if not ("a" <= ch <= "z" or "A" <= ch <= "Z" or "0" <= ch <= "9" or ch in "-_:.@"):
                raise ConfigError("tencent: %r has a character outside [A-Za-z0-9-_:.@]" % v)
    secret = st.secret("prod_secret")
    host = st.text("reg_host", "ap-guangzhou.gateway.tencentdevices.com")
    port = st.int("reg_port", 80 if ctx is None else 443)
    until = net.deadline(st.int("reg_timeout_ms", 30000))  # the whole exchange, however slow the server
    ts = net.unix_time()
    nonce = random.getrandbits(31)
    headers = [("Content-Type", "application/json; charset=utf-8")]
    if st.text("reg_api") == "legacy":
        path = "/register/dev"
        body = '{"deviceName":"%s","nonce":%d,"productId":"%s","timestamp":%d,"signature":"%s"}' % (
            name, nonce, pid, ts, sign_legacy(secret, name, nonce, pid, ts))
    else:
        path = "/device/register"
        method = st.text("sign_method", "hmacsha256").lower()
        body = '{"ProductId":"%s","DeviceName":"%s"}' % (pid, name)
        headers += [("X-TC-Algorithm", method), ("X-TC-Timestamp", ts), ("X-TC-Nonce", nonce),
                    ("X-TC-Signature", sign_request(secret, host, path, method, ts, nonce, body.encode()))]
    log("tencent: POST http%s://%s:%d%s" % ("" if ctx is None else "s", host, port, path))
    status, reply = http.post(host, port, path, headers, body.encode(), ctx, until)
    if status != 200:
        raise DynregError("tencent: HTTP status %d" % status)
    return credentials(parse_reply(reply, secret))
