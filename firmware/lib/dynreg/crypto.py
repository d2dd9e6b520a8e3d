"""HMAC over hashlib, and the strict base64 and hex the platforms' signatures use (no hmac on the device)."""

import binascii
import hashlib

from dynreg import ConfigError, DynregError


def hash_name(method):
    """Map "hmacsha256"/"hmacsha1" (any case) to a hashlib name; other methods are a ConfigError."""
    m = method.lower()
    if m not in ("hmacsha256", "hmacsha1"):
        raise ConfigError("unknown sign method %r (hmacsha256 or hmacsha1)" % method)
    return m[4:]


def hmac(name, key, msg):
    """HMAC (RFC 2104) with hashlib's `name`; key and msg are bytes or str."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(msg, str):
        msg = msg.encode()
    h = getattr(hashlib, name)
    if len(key) > 64:
        key = h(key).digest()
    key += bytes(64 - len(key))
    inner = h(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = h(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def hmac_hex(method, key, msg):
    """Lowercase hex HMAC with a platform's method name ("hmacsha256"/"hmacSha1"/...): its login passwords."""
    return hexstr(hmac(hash_name(method), key, msg))


def hexstr(data):
    """Lowercase hex text of bytes."""
    return binascii.hexlify(data).decode()


def b64decode(text, what):
    """Bytes from base64 text (str or bytes); a DynregError names `what` when it is not base64.

    Strict: binascii silently skips characters outside the alphabet, which would hide garbage.
    """
    if isinstance(text, str):
        text = text.encode()
    try:
        if text and not len(text) % 4 and binascii.b2a_base64(binascii.a2b_base64(text))[:-1] == text:
            return binascii.a2b_base64(text)
    except ValueError:
        pass
    raise DynregError("%s is not valid base64" % what)
