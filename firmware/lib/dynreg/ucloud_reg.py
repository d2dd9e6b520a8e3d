"""UCloud UIoT Core registration: the device secret over /$system/<ProductSN>/<DeviceSN>/password
(docs/platforms/ucloud.md "Wire format").

Imported by the registration boot only; ucloud.py has the login.
"""

from dynreg import ConfigError, DynregError, mqtt, mqttreg, net, shown
from dynreg.flow import broker
from dynreg.store import is_null
from dynreg.ucloud import host


def register(st, name, ctx):
    """Fetch the device secret over MQTT (ProductSN|DeviceSN|2 login); return the NVS items."""
    psn = st.need("prod_id")
    if not 4 <= len(name) <= 64:
        raise ConfigError("DeviceSN %r must be 4 to 64 characters" % name)
    for ch in name:
        if not ("a" <= ch <= "z" or "A" <= ch <= "Z" or "0" <= ch <= "9" or ch in "-_@:"):
            raise ConfigError("DeviceSN %r has a character outside [A-Za-z0-9-_@:]" % name)
    secret = st.secret("prod_secret")
    until = net.deadline(st.int("reg_timeout_ms", 30000))  # the whole exchange, however slow the broker
    h, port = broker(st, host(st), ctx)
    s = mqtt.login(ctx, h, port, "%s.%s" % (psn, name), "%s|%s|2" % (psn, name), secret, timeout=5)
    secret = None
    topic = "/$system/%s/%s/password" % (psn, name)
    reply = mqttreg.exchange(s, topic, topic + "_reply", "RequestID", {}, until)
    code = reply.get("RetCode")
    # The docs send RetCode as a string; the C SDK parses a number. Accept both.
    if str(code) != "0":
        raise DynregError("ucloud: registration refused: RetCode %s" % shown(code))
    password = reply.get("Password")
    if not isinstance(password, str) or is_null(password.encode()):
        raise DynregError("ucloud: reply holds no Password")
    return [("dev_secret", password.encode())]
