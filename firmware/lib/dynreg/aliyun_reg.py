"""Alibaba Cloud IoT Platform registration with the product secret (docs/platforms/aliyun.md "Registration"):
NVS ali_reg `https` (POST /auth/register/device, one HTTPS exchange), `mqtt` (pre-registered devices:
authType=register, the device secret pushed on /ext/register after CONNACK) or `mqtt-nwl`
(registration-free: authType=regnwl, a clientId and deviceToken pushed on /ext/regnwl).

Imported by the registration boot only; aliyun.py has the login.
"""

import binascii
import json
import os

from dynreg import ConfigError, DynregError, crypto, log, net, shown
from dynreg.store import is_null


def check(v, lo, hi, extra=""):
    """ConfigError unless `v` is lo..hi characters of A-Za-z0-9 and `extra`: ids end up in client ids
    (split at | , & =) and topics."""
    ok = lo <= len(v) <= hi
    for ch in v:
        ok = ok and ("a" <= ch <= "z" or "A" <= ch <= "Z" or "0" <= ch <= "9" or ch in extra)
    if not ok:
        raise ConfigError("aliyun: %r must be %d-%d characters of A-Za-z0-9%s" % (v, lo, hi, extra))


def names(st, name):
    """The ProductKey (NVS prod_id), checked with DeviceName `name` against the platform's rules (the login
    boot takes them as they are: they worked here)."""
    pk = st.need("prod_id")
    check(pk, 1, 32)
    check(name, 4, 32, "-_@.:")
    return pk


def sign(method, secret, pk, name, rnd):
    """The registration signature: hex HMAC(product secret, "deviceName<dn>productKey<pk>random<r>")."""
    return crypto.hmac_hex(method, secret, "deviceName%sproductKey%srandom%s" % (name, pk, rnd))


def _text(value, what, limit=128):
    """`value` as bytes when it is a non-null string of 1..limit printable ASCII characters without | or &."""
    ok = isinstance(value, str) and 0 < len(value) <= limit
    if ok:
        for ch in value:
            ok = ok and " " < ch < "\x7f" and ch not in "|&"
    if not ok or is_null(value.encode()):
        raise DynregError("aliyun: reply holds no usable %s" % what)
    return value.encode()


def parse_http(body):
    """The NVS items of a /auth/register/device reply: {"code": 200, "data": {"deviceSecret"}} or a
    refusal {"code", "message"} (DynregError naming both)."""
    try:
        r = json.loads(body)
        code, data = r.get("code"), r.get("data")
    except (ValueError, RuntimeError, AttributeError):  # not JSON, too deep, not an object
        raise DynregError("aliyun: reply is not a JSON object")
    if code != 200 or type(code) is not int:  # not 200.0, "200" or true
        raise DynregError("aliyun: registration refused: code %s (%s)" % (shown(code), shown(r.get("message"))))
    return [("dev_secret", _text(data.get("deviceSecret") if isinstance(data, dict) else None, "deviceSecret"))]


def parse_push(r, nwl, pk, name):
    """The NVS items of the JSON object pushed on /ext/register (deviceSecret) or, with `nwl`, on
    /ext/regnwl (clientId, deviceToken); a reply naming another device is refused."""
    for key, mine in (("productKey", pk), ("deviceName", name)):
        if r.get(key, mine) != mine:
            raise DynregError("aliyun: reply is for another device (%s %s)" % (key, shown(r.get(key))))
    if nwl:
        return [("dev_client", _text(r.get("clientId"), "clientId")), ("dev_secret", _text(r.get("deviceToken"), "deviceToken"))]
    return [("dev_secret", _text(r.get("deviceSecret"), "deviceSecret"))]


def register(st, name, ctx):
    """Register with the product secret over the NVS ali_reg variant; return the NVS items (secret last)."""
    pk = names(st, name)
    api = st.text("ali_reg", "https")
    if api not in ("https", "mqtt", "mqtt-nwl"):
        raise ConfigError("aliyun: NVS ali_reg is %r, not https, mqtt or mqtt-nwl" % api)
    method = st.text("sign_method", "hmacsha256").lower()  # sign() refuses another (ConfigError)
    rnd = binascii.hexlify(os.urandom(8)).decode()  # any string: it makes each signature new
    sig = sign(method, st.secret("prod_secret"), pk, name, rnd)
    until = net.deadline(st.int("reg_timeout_ms", 30000))  # the whole exchange, however slow the cloud
    if api == "https":  # this boot loads the HTTP client only, the other the MQTT code only
        from dynreg import http

        h = st.text("reg_host") or "iot-auth.%s.aliyuncs.com" % st.text("ali_region", "cn-shanghai")
        port = st.int("reg_port", 80 if ctx is None else 443)
        log("aliyun: POST http%s://%s:%d/auth/register/device" % ("" if ctx is None else "s", h, port))
        status, body = http.post(h, port, "/auth/register/device", (
            ("Accept", "text/xml,text/javascript,text/html,application/json"),
            ("Content-Type", "application/x-www-form-urlencoded")),
            ("productKey=%s&deviceName=%s&random=%s&sign=%s&signMethod=%s" % (pk, name, rnd, sig, method)).encode(),
            ctx, until)
        if status != 200:
            raise DynregError("aliyun: HTTP status %d from %s" % (status, h))
        return parse_http(body)
    if ctx is None:
        raise ConfigError("aliyun: MQTT registration needs TLS (tls=1)")
    from dynreg import mqtt, mqttreg
    from dynreg.aliyun import endpoint

    nwl = api == "mqtt-nwl"
    inst = st.text("instance_id")
    if inst:
        check(inst, 1, 64, "-_")
    # The current docs: securemode=-2 with an instanceId (new instances), 2 without; NVS secure_mode overrides.
    mode = st.text("secure_mode") or ("-2" if inst else "2")
    if mode not in ("2", "-2"):
        raise ConfigError("aliyun: NVS secure_mode is %r, not 2 or -2" % mode)
    client = "%s.%s|random=%s,authType=%s,securemode=%s,signmethod=%s%s|" % (
        name, pk, rnd, "regnwl" if nwl else "register", mode, method, ",instanceId=" + inst if inst else "")
    h, port = endpoint(st, pk)
    try:
        s = mqtt.login(ctx, h, port, client, "%s&%s" % (name, pk), sig, timeout=5)
    except DynregError as e:
        if "CONNACK return code" in str(e):  # the platform's only way of saying no
            raise DynregError("aliyun: registration refused: %s" % e)
        raise
    return parse_push(mqttreg.wait(s, "/ext/regnwl" if nwl else "/ext/register", until), nwl, pk, name)
