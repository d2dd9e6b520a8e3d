"""Tencent IoT Explorer: the MQTT login with the device's psk or certificate
(docs/platforms/tencent.md "MQTT login").

Registration is in tencent_reg.py, which only the registration boot imports.
"""

import json
import random
import time

from dynreg import ConfigError, crypto, log, mqtt, net, shown
from dynreg.flow import broker

KEEPALIVE = (1, 900)  # s: the range the official SDKs accept
_asked = 0  # ticks_ms when the time service was last asked (after_login)


def mqtt_password(psk, username, method="hmacsha256"):
    """MQTT password for a PSK device: hex HMAC(base64-decoded psk, username) + ";" + method.

    docs/platforms/tencent.md "MQTT login".
    """
    key = crypto.b64decode(psk, "stored device secret")
    return crypto.hmac_hex(method, key, username) + ";" + method.lower()


def login(st, name, ctx, keepalive):
    """Log in with the device's own psk (or certificate); return (umqtt client, product id, device name)."""
    pid = st.need("prod_id")
    # connid: five random characters of [a-zA-Z0-9] (here hex digits), as the SDKs send
    user = "%s%s;12010126;%05x;%d" % (pid, name, random.getrandbits(20), net.unix_time() + st.int("login_ttl", 3600))
    if st.get("dev_cert"):  # the TLS context holds it (flow.run), the password is empty
        if ctx is None:
            raise ConfigError("certificate products need TLS (tls=1)")
        password = ""
    else:
        password = mqtt_password(st.secret("dev_secret"), user, st.text("sign_method", "hmacsha256"))
    host, port = broker(st, pid + ".iotcloud.tencentdevices.com", ctx)
    return mqtt.connect(ctx, host, port, pid + name, user, password, keepalive), pid, name


def _topic(dev, kind):
    return kind % (dev.product, dev.ident)


_DOWN = "$thing/down/property/%s/%s"
_UP = "$thing/up/property/%s/%s"
_TIME = "$sys/operation/result/%s/%s"


def subscriptions(dev):
    """Topics the device listens on: data-template downlink (control, report_reply) and the time service."""
    return _topic(dev, _DOWN), _topic(dev, _TIME)


def after_login(dev):
    """Ask the cloud's time over $sys/operation (as Tencent's SDKs do); handle() takes the answer.

    The login does not wait for it: connect() returns at once and the reply arrives with the
    application's first poll().
    """
    global _asked
    dev.publish(_topic(dev, "$sys/operation/%s/%s"), b'{"type":"get","resource":["time"]}')
    _asked = time.ticks_ms()


def report(dev, props, qos=0):
    """Publish a property report to the data-template topic $thing/up/property/<pid>/<name>."""
    dev.seq += 1
    msg = json.dumps({"method": "report", "clientToken": "dr-%d" % dev.seq, "params": props})
    return dev.publish(_topic(dev, _UP), msg, qos)


def _property(dev, topic, msg):
    """Data template downlink: answer `control` (params to dev.properties and on_message), take
    `report_reply`; other methods go to the application."""
    try:
        m = json.loads(msg)
        method = m.get("method")
    except (ValueError, AttributeError, RuntimeError):
        return False
    if method == "control":
        params = m.get("params")
        code = 0 if isinstance(params, dict) else 1
        reply = {"method": "control_reply", "clientToken": m.get("clientToken"), "code": code,
                 "status": "ok" if code == 0 else "params is not an object"}
        dev.publish(_topic(dev, _UP), json.dumps(reply))
        log("tencent: control %s -> code %d" % (shown(m.get("clientToken")), code))
        if code == 0:
            dev.properties.update(params)
            if dev.on_message:
                dev.on_message(topic, msg)
    elif method == "report_reply":
        if m.get("code") != 0:
            log("tencent: report %s refused: code %s (%s)"
                % (shown(m.get("clientToken")), shown(m.get("code")), shown(m.get("status"))))
    else:
        return False
    return True


def handle(dev, topic, msg):
    """Data template downlink and the time service's answer; everything else goes to the application."""
    if topic == _topic(dev, _DOWN).encode():
        return _property(dev, topic, msg)
    if topic != _topic(dev, _TIME).encode():
        return False
    rtt = time.ticks_diff(time.ticks_ms(), _asked)
    try:
        t = json.loads(msg)
        # Midpoint of the server's receive/send times plus half the round trip, in ms (as the Python SDK).
        cloud_ms = (t["ntptime1"] + t["ntptime2"] + rtt) // 2
        if not isinstance(cloud_ms, int) or not 1577836800 < cloud_ms // 1000 < 4102444800:  # 2020..2100
            raise ValueError
    except (ValueError, KeyError, TypeError, RuntimeError):
        log("tencent: malformed time reply ignored")
        return True
    if rtt > 5000:  # read late (the application did not poll): the midpoint would be seconds off
        log("tencent: time reply read after %d ms ignored" % rtt)
    else:
        log("tencent: time synced over $sys/operation (clock offset %+d s)" % net.correct_clock(cloud_ms // 1000))
    return True
