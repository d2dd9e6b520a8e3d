"""ThingsBoard device provisioning: the device's credentials over /provision/request
(docs/platforms/thingsboard.md "Wire format").

Imported by the registration boot only; thingsboard.py has the login. The request carries the
provision key and secret in clear inside MQTT: only TLS keeps them from the path.
"""

import binascii
import os

from dynreg import ConfigError, DynregError, mqtt, mqttreg, net, shown
from dynreg.flow import broker
from dynreg.store import is_null
from dynreg.thingsboard import HOST

TOPIC = "/provision/request"


def request(st, name):
    """The provisioning request (a dict) for NVS tb_cred: ACCESS_TOKEN lets the server make the token;
    MQTT_BASIC sends the credentials the device chose (client id and user name = its name, a random
    password), as ThingsBoard stores what the device sends."""
    req = {"deviceName": name, "provisionDeviceKey": st.need("prod_id"),
           "provisionDeviceSecret": st.need("prod_secret")}
    kind = st.text("tb_cred", "ACCESS_TOKEN")
    if kind == "MQTT_BASIC":
        req["credentialsType"] = kind
        req["clientId"] = req["username"] = name
        req["password"] = binascii.hexlify(os.urandom(16)).decode()
    elif kind != "ACCESS_TOKEN":
        raise ConfigError("NVS tb_cred is %r, not ACCESS_TOKEN or MQTT_BASIC" % kind)
    return req


def _text(value, what):
    if not isinstance(value, str) or is_null(value.encode()) or len(value) > 256:
        raise DynregError("thingsboard: reply holds no usable %s" % what)
    return value


def credentials(r):
    """The NVS items of a provisioning reply (a dict); DynregError naming the status otherwise."""
    status = r.get("status")
    if status != "SUCCESS":
        raise DynregError("thingsboard: registration refused: %s (%s)" % (shown(status), shown(r.get("errorMsg"))))
    kind, value = r.get("credentialsType"), r.get("credentialsValue")
    if kind == "ACCESS_TOKEN":  # a pre-provisioned device gets its own token whatever it asked for
        return [("dev_secret", _text(value, "access token").encode())]
    if kind == "MQTT_BASIC" and isinstance(value, dict):
        return [("tb_client", _text(value.get("clientId"), "clientId")),
                ("tb_user", _text(value.get("userName"), "userName")),
                ("dev_secret", _text(value.get("password"), "password").encode())]
    raise DynregError("thingsboard: reply has credentialsType %s, not ACCESS_TOKEN or MQTT_BASIC" % shown(kind))


def register(st, name, ctx):
    """Provision over MQTT (username "provision"); return the NVS items."""
    if not 1 <= len(name) <= 255 or name.strip() != name:
        raise ConfigError("device name %r must be 1 to 255 characters without outer spaces" % name)
    req = request(st, name)
    until = net.deadline(st.int("reg_timeout_ms", 30000))  # the whole exchange, however slow the broker
    h, port = broker(st, HOST, ctx)
    s = mqtt.login(ctx, h, port, name, "provision", "", timeout=5)
    return credentials(mqttreg.exchange(s, TOPIC, "/provision/response", None, req, until))
