"""UCloud UIoT Core: registration over MQTT and the static login after it (PROTOCOLS.md §2)."""

import json

from dynreg import ConfigError, DynregError, crypto, log, mqttreg, net
from dynreg.store import is_null


def _endpoint(st):
    tls = st.int("tls", 1)
    host = st.text("mqtt_host") or "mqtt-%s.iot.ucloud.cn" % st.text("region", "cn-sh2")
    return host, st.int("mqtt_port", 8883 if tls else 1883), tls


def _check_sn(name):
    if not 4 <= len(name) <= 64:
        raise ConfigError("DeviceSN %r must be 4 to 64 characters" % name)
    for ch in name:
        if not (ch.isalpha() or ch.isdigit() or ch in "-_@:"):
            raise ConfigError("DeviceSN %r has a character outside [A-Za-z0-9-_@:]" % name)


def registered(st):
    """True if NVS holds a device secret."""
    return not is_null(st.get("dev_secret"))


def register(st, name):
    """Fetch the device secret over /$system/<ProductSN>/<DeviceSN>/password; return NVS items."""
    psn = st.need("prod_id")
    _check_sn(name)
    secret = st.need("prod_secret").encode()
    host, port, tls = _endpoint(st)
    log("ucloud: registering over mqtt%s://%s:%d" % ("s" if tls else "", host, port))
    s = net.mqtt_open("%s.%s" % (psn, name), host, port, "%s|%s|2" % (psn, name), secret, tls, st.get("ca"),
                      timeout=5)
    secret = None
    rid = crypto.hexstr(net.random_bytes(8))
    base = "/$system/%s/%s/password" % (psn, name)
    reply = mqttreg.exchange(s, base + "_reply", base, '{"RequestID":"%s"}' % rid,
                             lambda r: r.get("RequestID") == rid)
    code = reply.get("RetCode")
    # The docs send RetCode as a string; the C SDK parses a number. Accept both.
    if str(code) != "0":
        raise DynregError("ucloud: registration refused: RetCode %s" % code)
    password = reply.get("Password")
    if not isinstance(password, str) or is_null(password.encode()):
        raise DynregError("ucloud: reply holds no Password")
    return [("dev_secret", password.encode())]


def login(st, name):
    """Static login (|1) with the device secret; return (umqtt client, ProductSN, DeviceSN)."""
    psn = st.need("prod_id")
    host, port, tls = _endpoint(st)
    log("ucloud: mqtt login to %s:%d as %s.%s" % (host, port, psn, name))
    c = net.mqtt_connect("%s.%s" % (psn, name), host, port, "%s|%s|1" % (psn, name), st.get("dev_secret"),
                         tls, st.get("ca"))
    return c, psn, name


def after_login(dev):
    """Nothing to do after a UCloud login."""


def subscriptions(dev):
    """The device's downlink topic."""
    return ("/%s/%s/set" % (dev.pid, dev.ident),)


def report(dev, props):
    """Publish the properties as JSON on the user topic /<ProductSN>/<DeviceSN>/upload."""
    dev.publish("/%s/%s/upload" % (dev.pid, dev.ident), json.dumps(props))


def handle(dev, topic, msg):
    """UCloud sends nothing dynreg must answer itself."""
    return False
