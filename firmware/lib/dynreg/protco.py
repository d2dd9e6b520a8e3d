"""Protco rlink v2: signed registration over MQTT and the uuid login after it (PROTOCOLS.md §3)."""

import json

from dynreg import ConfigError, DynregError, crypto, log, mqttreg, net
from dynreg.store import is_null

# Reply `res` codes (seed 003 / protco_docs).
ERRORS = {
    1001: "service exception",
    1002: "invalid parameter",
    1003: "message format error",
    1004: "device does not exist",
    1005: "product does not exist",
    1006: "service not activated",
    17032: "device is bound",
}


def _endpoint(st):
    tls = st.int("tls", 1)
    return st.text("mqtt_host", "mqtt.protco.in"), st.int("mqtt_port", 8883 if tls else 1883), tls


def _sign(st, who, key):
    # Username and password of both logins: "<who>|signMethod=..,ts=.." and hex HMAC of "uuid=<who>,ts=..".
    method = st.text("sign_method", "hmacSha256")
    ts = net.unix_time()
    user = "%s|signMethod=%s,ts=%d" % (who, method, ts)
    return user, sign(key, who, ts, method)


def sign(key, who, ts, method="hmacSha256"):
    """Password: lowercase hex HMAC(key as ASCII, "uuid=<who>,ts=<ts>") with hmacSha256 or hmacSha1."""
    return crypto.hexstr(crypto.hmac(crypto.hash_name(method), key, "uuid=%s,ts=%d" % (who, ts)))


def registered(st):
    """True if NVS holds the device secret and the uuid the cloud assigned."""
    return not is_null(st.get("dev_secret")) and bool(st.get("dev_uuid"))


def register(st, name):
    """Register with register/v2/<pid>/<unique>/register; return the NVS items (secret last)."""
    pid = st.need("prod_id")
    if "_" in name:
        raise ConfigError("Protco's unique id %r must not contain '_'" % name)
    secret = st.need("prod_secret").encode()
    data = {}
    for key, field in (("barcode", "barcode"), ("replace_pid", "replacePid"), ("replace_sec", "secret")):
        value = st.text(key)
        if value:
            data[field] = value
    if "replacePid" in data and "secret" not in data:
        raise ConfigError("NVS key 'replace_sec' is needed with 'replace_pid'")
    host, port, tls = _endpoint(st)
    user, password = _sign(st, pid, secret)
    log("protco: registering over mqtt%s://%s:%d" % ("s" if tls else "", host, port))
    s = net.mqtt_open("register_%s_%s" % (pid, name), host, port, user, password, tls, st.get("ca"), timeout=5)
    secret = password = None
    mid = crypto.hexstr(net.random_bytes(8))
    request = json.dumps({"id": mid, "ts": net.unix_time(), "code": "register", "ack": 1, "data": data})
    data = None
    base = "register/v2/%s/%s/register" % (pid, name)
    reply = mqttreg.exchange(s, base + "_response", base, request, lambda r: r.get("id") == mid)
    res = reply.get("res")
    if res != 0:
        why = ERRORS.get(res) if isinstance(res, int) else None
        raise DynregError("protco: registration refused: res %s (%s)" % (res, why or reply.get("msg")))
    d = reply.get("data")
    if not isinstance(d, dict):
        raise DynregError("protco: reply holds no data")
    uuid, new_pid, dev_secret = d.get("uuid"), d.get("pid") or pid, d.get("secret")
    for what, v in (("uuid", uuid), ("pid", new_pid), ("secret", dev_secret)):
        if not isinstance(v, str) or not v:
            raise DynregError("protco: reply lacks %s" % what)
    return [("dev_pid", new_pid.encode()), ("dev_uuid", uuid.encode()), ("dev_secret", dev_secret.encode())]


def login(st, name):
    """Log in as rlink_<uuid>_V2 signed with the device secret; return (umqtt client, pid, uuid)."""
    uuid = st.need("dev_uuid")
    pid = st.text("dev_pid") or st.need("prod_id")
    host, port, tls = _endpoint(st)
    user, password = _sign(st, uuid, st.get("dev_secret"))
    log("protco: mqtt login to %s:%d as rlink_%s_V2" % (host, port, uuid))
    c = net.mqtt_connect("rlink_%s_V2" % uuid, host, port, user, password, tls, st.get("ca"))
    return c, pid, uuid


def after_login(dev):
    """Nothing to do after a Protco login."""


def _topic(dev, kind):
    return "rlink/v2/%s/%s/%s" % (dev.pid, dev.ident, kind)


def subscriptions(dev):
    """Commands arrive on .../issue; report replies on .../report_response."""
    return (_topic(dev, "issue"), _topic(dev, "report_response"))


def report(dev, props):
    """Publish a property_report on rlink/v2/<pid>/<uuid>/report."""
    msg = {"id": str(dev.next_id()), "ts": net.unix_time(), "code": "property_report",
           "data": {"properties": props}, "ack": 0}
    dev.publish(_topic(dev, "report"), json.dumps(msg))


def handle(dev, topic, msg):
    """Answer `ping` and `property_set` commands from .../issue on .../issue_response."""
    if topic != _topic(dev, "issue").encode():
        return False
    try:
        cmd = json.loads(msg)
        code = cmd["code"]
    except (ValueError, KeyError, TypeError, RuntimeError):
        log("protco: ignoring a malformed command")
        return True
    res, data = 0, {}
    if code == "property_set":
        data = cmd.get("data")
        props = data.get("properties") if isinstance(data, dict) else None
        if isinstance(props, dict):
            dev.properties.update(props)
            data = {"properties": props}
            if dev.on_message:
                dev.on_message(topic, msg)
        else:
            res = 1002
    elif code != "ping":
        res = 1002
    log("protco: command %s -> res %d" % (code, res))
    reply = {"id": cmd.get("id"), "ts": net.unix_time(), "code": code, "res": res,
             "msg": "success" if res == 0 else "unsupported", "data": data}
    dev.publish(_topic(dev, "issue_response"), json.dumps(reply))
    return True
