"""Crypto helpers over MicroPython's hashlib, binascii and cryptolib (no hmac module on the device)."""

import binascii
import hashlib

from dynreg import ConfigError, DynregError

# Signature method names as the platforms spell them -> hashlib constructor name.
METHODS = {"hmacsha256": "sha256", "hmacsha1": "sha1"}


def hash_name(method):
    """Map "hmacsha256"/"hmacsha1" (any case) to a hashlib name; unknown methods are a ConfigError."""
    name = METHODS.get(method.lower())
    if name is None:
        raise ConfigError("unknown sign method %r (hmacsha256 or hmacsha1)" % method)
    return name


def digest(name, data):
    """Return the raw digest of `data` with hashlib's `name` ("sha256" or "sha1")."""
    return getattr(hashlib, name)(data).digest()


def hmac(name, key, msg):
    """HMAC (RFC 2104) with hashlib's `name`; key and msg are bytes or str."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(msg, str):
        msg = msg.encode()
    h = getattr(hashlib, name)
    if len(key) > 64:
        key = h(key).digest()
    key = key + bytes(64 - len(key))
    inner = h(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = h(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def hexstr(data):
    """Lowercase hex text of bytes."""
    return binascii.hexlify(data).decode()


def b64encode(data):
    """Base64 text of bytes, no newline."""
    return binascii.b2a_base64(data).decode().strip()


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def b64decode(text, what="value"):
    """Bytes from base64 text (str or bytes); a clear DynregError names `what` when it is not base64.

    Strict: binascii silently skips characters outside the alphabet, which would hide garbage.
    """
    if isinstance(text, str):
        text = text.encode()
    if not text or len(text) % 4 or any(c not in _B64 for c in text):
        raise DynregError("%s is not valid base64" % what)
    try:
        return binascii.a2b_base64(text)
    except ValueError:
        raise DynregError("%s is not valid base64" % what)


def aes_cbc_decrypt(key, iv, data):
    """AES-128-CBC decrypt with cryptolib; `data` must be a non-empty multiple of 16 bytes."""
    import cryptolib

    if not data or len(data) % 16:
        raise DynregError("ciphertext of %d bytes is not a multiple of 16" % len(data))
    return cryptolib.aes(key, 2, iv).decrypt(data)


def pem_to_der(pem):
    """Return the DER bytes inside the first PEM block of `pem` (bytes or str).

    MicroPython's TLS takes certificates and keys as DER only, and DER is smaller in NVS.
    """
    if isinstance(pem, str):
        pem = pem.encode()
    start = pem.find(b"-----BEGIN")
    body = pem.find(b"\n", start) + 1
    end = pem.find(b"-----END", body)
    if start < 0 or body <= 0 or end < 0:
        raise DynregError("not a PEM block")
    return b64decode(pem[body:end].replace(b"\r", b"").replace(b"\n", b""), "PEM body")
