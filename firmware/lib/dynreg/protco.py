"""Protco rlink v2: the uuid login signed with the device secret, and its commands (PROTOCOLS.md §3).

Registration is in protco_reg.py, which only the registration boot imports.
"""

import json

from dynreg import crypto, log, mqtt, net


HOST = "mqtt.protco.in"  # the broker; NVS mqtt_host overrides it


def sign(key, who, ts, method="hmacSha256"):
    """Password: lowercase hex HMAC(key as ASCII, "uuid=<who>,ts=<ts>") with hmacSha256 or hmacSha1."""
    return crypto.hexstr(crypto.hmac(crypto.hash_name(method), key, "uuid=%s,ts=%d" % (who, ts)))


def credentials(st, who, key):
    """Username "<who>|signMethod=..,ts=.." and password of both logins (registration and device)."""
    method = st.text("sign_method", "hmacSha256")
    ts = net.unix_time()
    return "%s|signMethod=%s,ts=%d" % (who, method, ts), sign(key, who, ts, method)


def login(st, name, ctx):
    """Log in as rlink_<uuid>_V2 signed with the device secret; return (umqtt client, pid, uuid)."""
    uuid = st.need("dev_uuid")
    pid = st.text("dev_pid") or st.need("prod_id")
    user, password = credentials(st, uuid, st.get("dev_secret"))
    return mqtt.connect(st, ctx, HOST, "rlink_%s_V2" % uuid, user, password), pid, uuid


def _topic(dev, kind):
    return "rlink/v2/%s/%s/%s" % (dev.pid, dev.ident, kind)


def subscriptions(dev):
    """Commands arrive on .../issue; report replies on .../report_response."""
    return (_topic(dev, "issue"), _topic(dev, "report_response"))


def after_login(dev):
    """Nothing to do after a Protco login."""


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
