"""Protco rlink v2: the uuid login signed with the device secret, and its commands
(docs/platforms/protco.md "Wire format").

Registration is in protco_reg.py, which only the registration boot imports.
"""

import json

from dynreg import crypto, log, mqtt, net, shown
from dynreg.flow import broker

KEEPALIVE = (1, 65535)  # s: the MQTT range (no narrower one documented)


def login(st, name, ctx, keepalive):
    """Log in as rlink_<uuid>_V2 signed with the device secret; return (umqtt client, pid, uuid).

    Username "<uuid>|signMethod=<m>,ts=<ts>"; password the hex HMAC(secret, "uuid=<uuid>,ts=<ts>"), as the
    registration login (protco_reg.py) with the product id and secret.
    """
    uuid = st.need("dev_uuid")
    pid = st.text("dev_pid") or st.need("prod_id")
    method, ts = st.text("sign_method", "hmacSha256"), net.unix_time()
    password = crypto.hmac_hex(method, st.secret("dev_secret"), "uuid=%s,ts=%d" % (uuid, ts))
    user = "%s|signMethod=%s,ts=%d" % (uuid, method, ts)
    host, port = broker(st, "mqtt.protco.in", ctx)
    return mqtt.connect(ctx, host, port, "rlink_%s_V2" % uuid, user, password, keepalive), pid, uuid


def _topic(dev, kind):
    return "rlink/v2/%s/%s/%s" % (dev.product, dev.ident, kind)


def subscriptions(dev):
    """Commands arrive on .../issue; report replies on .../report_response."""
    return (_topic(dev, "issue"), _topic(dev, "report_response"))


def report(dev, props, qos=0):
    """Publish a property_report on rlink/v2/<pid>/<uuid>/report."""
    dev.seq += 1
    msg = {"id": str(dev.seq), "ts": net.unix_time(), "code": "property_report",
           "data": {"properties": props}, "ack": 0}
    return dev.publish(_topic(dev, "report"), json.dumps(msg), qos)


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
    log("protco: command %s -> res %d" % (shown(code), res))
    reply = {"id": cmd.get("id"), "ts": net.unix_time(), "code": code, "res": res,
             "msg": "success" if res == 0 else "unsupported", "data": data}
    dev.publish(_topic(dev, "issue_response"), json.dumps(reply))
    return True
