"""Protco rlink v2 registration: register/v2/<pid>/<unique>/register, signed with the product secret
(docs/platforms/protco.md "Wire format").

Imported by the registration boot only; protco.py has the login.
"""

from dynreg import ConfigError, DynregError, crypto, mqtt, mqttreg, net, shown
from dynreg.flow import broker

# Reply `res` codes (docs/platforms/protco.md "Wire format").
ERRORS = {
    1001: "service exception",
    1002: "invalid parameter",
    1003: "message format error",
    1004: "device does not exist",
    1005: "product does not exist",
    1006: "service not activated",
    17032: "device is bound",
}


def register(st, name, ctx):
    """Register with the product secret; return the NVS items (device secret last)."""
    pid = st.need("prod_id")
    if "_" in name:
        raise ConfigError("Protco's unique id %r must not contain '_'" % name)
    secret = st.secret("prod_secret")
    data = {}
    for key, field in (("barcode", "barcode"), ("replace_pid", "replacePid"), ("replace_sec", "secret")):
        value = st.text(key)
        if value:
            data[field] = value
    if "replacePid" in data and "secret" not in data:
        raise ConfigError("NVS key 'replace_sec' is needed with 'replace_pid'")
    # Signed as the device login (protco.py), with the product id and secret.
    method, ts = st.text("sign_method", "hmacSha256"), net.unix_time()
    password = crypto.hmac_hex(method, secret, "uuid=%s,ts=%d" % (pid, ts))
    user = "%s|signMethod=%s,ts=%d" % (pid, method, ts)
    until = net.deadline(st.int("reg_timeout_ms", 30000))  # the whole exchange, however slow the broker
    host, port = broker(st, "mqtt.protco.in", ctx)
    s = mqtt.login(ctx, host, port, "register_%s_%s" % (pid, name), user, password, timeout=5)
    secret = password = None
    topic = "register/v2/%s/%s/register" % (pid, name)
    reply = mqttreg.exchange(s, topic, topic + "_response", "id",
                             {"ts": net.unix_time(), "code": "register", "ack": 1, "data": data}, until)
    res = reply.get("res")
    if res != 0:
        why = ERRORS.get(res) if isinstance(res, int) else None
        why = why or shown(reply.get("msg"))
        raise DynregError("protco: registration refused: res %s (%s)" % (shown(res), why))
    d = reply.get("data")
    if not isinstance(d, dict):
        raise DynregError("protco: reply holds no data")
    uuid, new_pid, dev_secret = d.get("uuid"), d.get("pid") or pid, d.get("secret")
    for what, v in (("uuid", uuid), ("pid", new_pid), ("secret", dev_secret)):
        if not isinstance(v, str) or not v:
            raise DynregError("protco: reply lacks %s" % what)
    return [("dev_pid", new_pid.encode()), ("dev_uuid", uuid.encode()), ("dev_secret", dev_secret.encode())]
