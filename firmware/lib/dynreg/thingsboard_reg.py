"""ThingsBoard device provisioning: the device's credentials over /provision/request
(docs/platforms/thingsboard.md "Wire format").

Imported by the registration boot only; thingsboard.py has the login. The request carries the
provision key and secret in clear inside MQTT: only TLS keeps them from the path.
"""

import binascii
import os

from dynreg import ConfigError, DynregError, log, mqtt, mqttreg, net, shown
from dynreg.flow import broker
from dynreg.store import is_null
from dynreg.thingsboard import HOST

TOPIC = "/provision/request"


def request(st, name, secret):
    """The provisioning request (a dict) for NVS tb_cred, with the credentials the device chose: the
    access token `secret` (ACCESS_TOKEN), or client id and user name = its name and the password
    `secret` (MQTT_BASIC). ThingsBoard stores what the device sends."""
    req = {"deviceName": name, "provisionDeviceKey": st.need("prod_id"),
           "provisionDeviceSecret": st.need("prod_secret")}
    kind = st.text("tb_cred", "ACCESS_TOKEN")
    if kind == "MQTT_BASIC":
        req["clientId"] = req["username"] = name
        req["password"] = secret
    elif kind == "ACCESS_TOKEN":
        req["token"] = secret
    else:
        raise ConfigError("NVS tb_cred is %r, not ACCESS_TOKEN or MQTT_BASIC" % kind)
    req["credentialsType"] = kind
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
    """Provision over MQTT (username "provision"); return the NVS items.

    The credentials are chosen here and committed (NVS tb_pending) before the request goes out: a
    device whose reply a power cut lost is refused the next time ("a device of that name exists"),
    and then logs in with what it sent before. thingsboard.after_login erases tb_pending."""
    if not 1 <= len(name) <= 255 or name.strip() != name:
        raise ConfigError("device name %r must be 1 to 255 characters without outer spaces" % name)
    pending = st.get("tb_pending")
    if not pending:
        st.set("tb_pending", binascii.hexlify(os.urandom(10)))
        st.commit()
    req = request(st, name, st.secret("tb_pending").decode())
    until = net.deadline(st.int("reg_timeout_ms", 30000))  # the whole exchange, however slow the broker
    h, port = broker(st, HOST, ctx)
    s = mqtt.login(ctx, h, port, name, "provision", "", timeout=5)
    reply = mqttreg.exchange(s, TOPIC, "/provision/response", None, req, until)
    if reply.get("status") == "FAILURE":
        if not pending:  # refused what was sent for the first time: never to be taken as ours later
            st.erase("tb_pending")
            st.commit()
        else:
            log("thingsboard: provisioning refused (FAILURE) after an earlier request whose reply was lost: "
                "using the credentials sent then")
            reply = {"status": "SUCCESS", "credentialsType": req["credentialsType"],
                     "credentialsValue": req["token"] if "token" in req else
                     {"clientId": name, "userName": name, "password": req["password"]}}
    return credentials(reply)
