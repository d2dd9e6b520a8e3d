"""Tencent IoT Explorer: HTTP dynamic registration and the MQTT login after it (PROTOCOLS.md §1)."""

import json
import random
import time

from dynreg import ConfigError, DynregError, crypto, log, net
from dynreg.store import is_null

REG_HOST = "ap-guangzhou.gateway.tencentdevices.com"
_IV = b"0000000000000000"
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_SAFE = _ALNUM + "-_:.@"  # characters allowed in ids we splice into JSON and topics


def _check_id(what, value):
    for ch in value:
        if ch not in _SAFE:
            raise ConfigError("%s %r has a character outside [A-Za-z0-9-_:.@]" % (what, value))
    return value


def sign_request(secret, host, path, method, ts, nonce, body):
    """X-TC-Signature of a /device/register request (§1.1): base64(HMAC(secret, StringToSign))."""
    name = crypto.hash_name(method)
    sts = "POST\n%s\n%s\n\n%s\n%d\n%d\n%s" % (
        host, path, method, ts, nonce, crypto.hexstr(crypto.digest(name, body)))
    return crypto.b64encode(crypto.hmac(name, secret, sts))


def sign_legacy(secret, name, nonce, pid, ts):
    """Signature of a legacy /register/dev request (§1.2): base64 of the hex HMAC-SHA1 text."""
    src = "deviceName=%s&nonce=%d&productId=%s&timestamp=%d" % (name, nonce, pid, ts)
    return crypto.b64encode(crypto.hexstr(crypto.hmac("sha1", secret, src)).encode())


def mqtt_password(psk, username, method="hmacsha256"):
    """MQTT password for a PSK device (§1.4): hex HMAC(base64-decoded psk, username) + ";" + method."""
    key = crypto.b64decode(psk, "stored device secret")
    return crypto.hexstr(crypto.hmac(crypto.hash_name(method), key, username)) + ";" + method.lower()


def decrypt_payload(payload, length, secret):
    """Decrypt a registration Payload (base64, AES-128-CBC, zero padding, trimmed to Len) into a dict."""
    if not isinstance(payload, str) or not isinstance(length, int) or length <= 0:
        raise DynregError("tencent: reply lacks a Payload string and a positive Len")
    data = crypto.b64decode(payload, "tencent: Payload")
    if length > len(data):
        raise DynregError("tencent: Len %d exceeds the %d-byte payload" % (length, len(data)))
    plain = crypto.aes_cbc_decrypt(secret[:16], _IV, data)
    data = None
    # The padding is zero bytes; anything else means a payload for another key.
    if plain[length:].strip(b"\0"):
        raise DynregError("tencent: payload padding is not zeros (wrong product secret?)")
    try:
        info = json.loads(plain[:length])
    except (ValueError, RuntimeError):
        raise DynregError("tencent: decrypted payload is not JSON (wrong product secret?)")
    if not isinstance(info, dict):
        raise DynregError("tencent: decrypted payload is not a JSON object")
    return info


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
        return [("dev_key", crypto.pem_to_der(key)), ("dev_cert", crypto.pem_to_der(cert))]
    raise DynregError("tencent: unknown encryptionType %r" % (kind,))


def _reply(body, secret):
    try:
        reply = json.loads(body)
    except (ValueError, RuntimeError):  # RuntimeError: CPython's RecursionError on deep nesting
        raise DynregError("tencent: reply is not JSON")
    if not isinstance(reply, dict):
        raise DynregError("tencent: reply is not a JSON object")
    r = reply.get("Response")
    if isinstance(r, dict):  # current protocol
        err = r.get("Error")
        if isinstance(err, dict):
            raise DynregError("tencent: registration refused: %s: %s" % (err.get("Code"), err.get("Message")))
        return decrypt_payload(r.get("Payload"), r.get("Len"), secret)
    code = reply.get("code")  # legacy protocol
    if code is None:
        raise DynregError("tencent: reply has neither Response nor code")
    if code != 0:
        raise DynregError("tencent: registration refused: code %s: %s" % (code, reply.get("message")))
    return decrypt_payload(reply.get("payload"), reply.get("len"), secret)


def registered(st):
    """True if NVS holds a psk, or a client certificate and its key."""
    if not is_null(st.get("dev_secret")):
        return True
    return not is_null(st.get("dev_cert")) and not is_null(st.get("dev_key"))


def register(st, name):
    """Register device `name` over HTTP(S); return the (key, value) pairs to store in NVS."""
    pid = _check_id("product id", st.need("prod_id"))
    _check_id("device name", name)
    secret = st.need("prod_secret").encode()
    tls = st.int("tls", 1)
    host = st.text("reg_host", REG_HOST)
    port = st.int("reg_port", 443 if tls else 80)
    ctx = net.tls_context(st.get("ca")) if tls else None
    ts = net.unix_time()
    nonce = random.getrandbits(31)
    headers = [("Content-Type", "application/json; charset=utf-8")]
    if st.text("reg_api", "device") == "legacy":
        path = "/register/dev"
        body = '{"deviceName":"%s","nonce":%d,"productId":"%s","timestamp":%d,"signature":"%s"}' % (
            name, nonce, pid, ts, sign_legacy(secret, name, nonce, pid, ts))
    else:
        path = "/device/register"
        method = st.text("sign_method", "hmacsha256").lower()
        body = '{"ProductId":"%s","DeviceName":"%s"}' % (pid, name)
        headers += [("X-TC-Algorithm", method), ("X-TC-Timestamp", ts), ("X-TC-Nonce", nonce),
                    ("X-TC-Signature", sign_request(secret, host, path, method, ts, nonce, body.encode()))]
    log("tencent: POST %s://%s:%d%s" % ("https" if tls else "http", host, port, path))
    status, reply = net.http_post(host, port, path, headers, body.encode(), ctx)
    ctx = None
    if status != 200:
        raise DynregError("tencent: HTTP status %d" % status)
    return credentials(_reply(reply, secret))


def _connid():
    return "".join(_ALNUM[random.getrandbits(6) % 62] for _ in range(5))


def login(st, name):
    """Log in with the device's own psk (or certificate); return (umqtt client, product id, device name)."""
    pid = st.need("prod_id")
    tls = st.int("tls", 1)
    host = st.text("mqtt_host") or pid + ".iotcloud.tencentdevices.com"
    port = st.int("mqtt_port", 8883 if tls else 1883)
    method = st.text("sign_method", "hmacsha256")
    user = "%s%s;12010126;%s;%d" % (pid, name, _connid(), net.unix_time() + st.int("login_ttl", 3600))
    cert = st.get("dev_cert")
    if cert:
        if not tls:
            raise ConfigError("certificate products need TLS (tls=1)")
        key, password = st.get("dev_key"), ""
    else:
        key, password = None, mqtt_password(st.get("dev_secret"), user, method)
    log("tencent: mqtt login to %s:%d as %s%s (%s)" % (host, port, pid, name, "certificate" if cert else method))
    c = net.mqtt_connect(pid + name, host, port, user, password, tls, st.get("ca"), cert, key)
    return c, pid, name


def after_login(dev):
    """Learn the cloud's time over $sys/operation (as Tencent's SDKs do) and correct the clock by it."""
    sent = time.ticks_ms()  # subscriptions() included the result topic: the broker has it by now
    dev.client.publish("$sys/operation/%s/%s" % (dev.pid, dev.ident), b'{"type":"get","resource":["time"]}')
    msg = dev.wait_for("$sys/operation/result/%s/%s" % (dev.pid, dev.ident), 5000)
    if msg is None:
        log("tencent: no time reply within 5 s; keeping the local clock")
        return
    try:
        t = json.loads(msg)
        # Midpoint of the server's receive/send times plus half the round trip, in ms (as the Python SDK).
        cloud_ms = (t["ntptime1"] + t["ntptime2"] + time.ticks_diff(time.ticks_ms(), sent)) // 2
        if not isinstance(cloud_ms, int) or not 1577836800 < cloud_ms // 1000 < 4102444800:  # 2020..2100
            raise ValueError("time out of range")
    except (ValueError, KeyError, TypeError, RuntimeError):
        log("tencent: malformed time reply ignored")
        return
    log("tencent: time synced over $sys/operation (clock offset %+d s)" % net.correct_clock(cloud_ms // 1000))


def report(dev, props):
    """Publish a property report to the data-template topic $thing/up/property/<pid>/<name>."""
    msg = json.dumps({"method": "report", "clientToken": "dr-%d" % dev.next_id(), "params": props})
    dev.publish("$thing/up/property/%s/%s" % (dev.pid, dev.ident), msg)


def subscriptions(dev):
    """Topics the device listens on: data-template replies and the time service's answers."""
    return ("$thing/down/property/%s/%s" % (dev.pid, dev.ident),
            "$sys/operation/result/%s/%s" % (dev.pid, dev.ident))


def handle(dev, topic, msg):
    """Platform messages dynreg answers itself: none for Tencent (replies go to the application)."""
    return False
