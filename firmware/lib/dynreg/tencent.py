"""Tencent IoT Explorer: the MQTT login with the device's psk or certificate
(docs/platforms/tencent.md "MQTT login").

Registration is in tencent_reg.py, which only the registration boot imports.
"""

import json
import random
import time

from dynreg import ConfigError, crypto, log, mqtt, net


def mqtt_password(psk, username, method="hmacsha256"):
    """MQTT password for a PSK device: hex HMAC(base64-decoded psk, username) + ";" + method.

    docs/platforms/tencent.md "MQTT login".
    """
    key = crypto.b64decode(psk, "stored device secret")
    return crypto.hmac_hex(method, key, username) + ";" + method.lower()


def login(st, name, ctx):
    """Log in with the device's own psk (or certificate); return (umqtt client, product id, device name)."""
    pid = st.need("prod_id")
    # connid: five random characters of [a-zA-Z0-9] (here hex digits), as the SDKs send
    user = "%s%s;12010126;%05x;%d" % (pid, name, random.getrandbits(20), net.unix_time() + st.int("login_ttl", 3600))
    if st.get("dev_cert"):  # the TLS context holds it (flow.run), the password is empty
        if ctx is None:
            raise ConfigError("certificate products need TLS (tls=1)")
        password = ""
    else:
        password = mqtt_password(st.get("dev_secret"), user, st.text("sign_method", "hmacsha256"))
    return mqtt.connect(st, ctx, pid + ".iotcloud.tencentdevices.com", pid + name, user, password), pid, name


def subscriptions(dev):
    """Topics the device listens on: data-template replies and the time service's answers."""
    return ("$thing/down/property/%s/%s" % (dev.pid, dev.ident),
            "$sys/operation/result/%s/%s" % (dev.pid, dev.ident))


def after_login(dev):
    """Ask the cloud's time over $sys/operation (as Tencent's SDKs do); handle() takes the answer.

    The login does not wait for it: connect() returns at once and the reply arrives with the
    application's first poll().
    """
    dev.publish("$sys/operation/%s/%s" % (dev.pid, dev.ident), b'{"type":"get","resource":["time"]}')
    dev.time_asked = time.ticks_ms()


def report(dev, props):
    """Publish a property report to the data-template topic $thing/up/property/<pid>/<name>."""
    dev.seq += 1
    msg = json.dumps({"method": "report", "clientToken": "dr-%d" % dev.seq, "params": props})
    dev.publish("$thing/up/property/%s/%s" % (dev.pid, dev.ident), msg)


def handle(dev, topic, msg):
    """Correct the clock from the time service's answer; everything else goes to the application."""
    if topic != ("$sys/operation/result/%s/%s" % (dev.pid, dev.ident)).encode():
        return False
    rtt = time.ticks_diff(time.ticks_ms(), dev.time_asked)
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
