"""Alibaba Cloud IoT Platform: the MQTT login with the device secret (or the registration-free token)
and the Alink property topics (docs/platforms/aliyun.md "Login", "Alink topics").

Registration is in aliyun_reg.py, which only the registration boot imports.
"""

import json

from dynreg import crypto, log, mqtt, net, shown

KEEPALIVE = (30, 1200)  # s: the range the platform accepts
_SET = "service/property/set"
_POST = "event/property/post"


def endpoint(st, pk):
    """(host, port) of the broker: NVS mqtt_host, else <instance_id>.mqtt.iothub.aliyuncs.com for a new
    instance (NVS instance_id), else the public instance's <pk>.iot-as-mqtt.<region>.aliyuncs.com (NVS
    ali_region, default cn-shanghai); NVS mqtt_port, else 1883, the documented port (TLS or not)."""
    inst = st.text("instance_id")
    h = inst + ".mqtt.iothub.aliyuncs.com" if inst else "%s.iot-as-mqtt.%s.aliyuncs.com" % (
        pk, st.text("ali_region", "cn-shanghai"))
    return st.text("mqtt_host") or h, st.int("mqtt_port", 1883)


def password(method, secret, client, name, pk, ts):
    """The login password: hex HMAC(device secret, "clientId<c>deviceName<dn>productKey<pk>timestamp<ts>")."""
    return crypto.hmac_hex(method, secret, "clientId%sdeviceName%sproductKey%stimestamp%s" % (client, name, pk, ts))


def login(st, name, ctx, keepalive):
    """Log in as <dn>&<pk>; return (umqtt client, ProductKey, DeviceName).

    With NVS dev_client (registration-free devices) the client id is that one with securemode=-2,
    authType=connwl and the password is the deviceToken kept in dev_secret; otherwise the password
    is signed with the device secret over a millisecond timestamp.
    """
    pk = st.need("prod_id")  # checked with the name at registration (aliyun_reg.names)
    cid = st.text("dev_client")
    if cid:
        client, pw = cid + "|securemode=-2,authType=connwl|", st.secret("dev_secret")
    else:
        method, ts = st.text("sign_method", "hmacsha256").lower(), "%d000" % net.unix_time()
        cid = "%s.%s" % (pk, name)
        # securemode 2: TLS, 3: plain TCP
        client = "%s|timestamp=%s,securemode=%d,signmethod=%s|" % (cid, ts, 3 if ctx is None else 2, method)
        pw = password(method, st.secret("dev_secret"), cid, name, pk, ts)
    h, port = endpoint(st, pk)
    return mqtt.connect(ctx, h, port, client, "%s&%s" % (name, pk), pw, keepalive), pk, name


def _topic(dev, kind):
    return "/sys/%s/%s/thing/%s" % (dev.product, dev.ident, kind)


def subscriptions(dev):
    """property/set (the cloud sets properties) and post_reply (answers to reports)."""
    return _topic(dev, _SET), _topic(dev, _POST + "_reply")


def report(dev, props, qos=0):
    """Publish an Alink thing.event.property.post on /sys/<pk>/<dn>/thing/event/property/post."""
    dev.seq += 1
    msg = {"id": str(dev.seq), "version": "1.0", "params": props, "method": "thing.event.property.post"}
    return dev.publish(_topic(dev, _POST), json.dumps(msg), qos)


def handle(dev, topic, msg):
    """Answer property/set on its set_reply (params to dev.properties and on_message); take post_reply."""
    setting = topic == _topic(dev, _SET).encode()
    if not setting and topic != _topic(dev, _POST + "_reply").encode():
        return False
    try:
        m = json.loads(msg)
        mid = m.get("id")
    except (ValueError, AttributeError, RuntimeError):
        log("aliyun: ignoring a malformed message on %s" % ("property/set" if setting else "post_reply"))
        return True
    if not setting:
        if m.get("code") != 200:
            log("aliyun: report %s refused: code %s (%s)" % (shown(mid), shown(m.get("code")), shown(m.get("message"))))
        return True
    params = m.get("params")
    code = 200 if isinstance(params, dict) else 460  # Alink 460: request parameter error
    log("aliyun: property/set %s -> code %d" % (shown(mid), code))
    dev.publish(_topic(dev, _SET + "_reply"), json.dumps(
        {"code": code, "data": {}, "id": mid, "message": "success" if code == 200 else "params is not an object",
         "version": "1.0"}))
    if code == 200:
        dev.properties.update(params)
        if dev.on_message:
            dev.on_message(topic, msg)
    return True
