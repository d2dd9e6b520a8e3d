"""ThingsBoard: the login with the provisioned credentials, telemetry, server-side RPC and shared
attributes (docs/platforms/thingsboard.md "Wire format").

Registration is in thingsboard_reg.py, which only the registration boot imports.
"""

import json

from dynreg import log, mqtt, shown
from dynreg.flow import broker

HOST = "mqtt.thingsboard.cloud"  # ThingsBoard Cloud's MQTT host; NVS mqtt_host for any other server
KEEPALIVE = (1, 65535)  # s: the MQTT range (ThingsBoard documents no narrower one)
RPC = b"v1/devices/me/rpc/request/"
ATTRIBUTES = b"v1/devices/me/attributes"


def login(st, name, ctx, keepalive):
    """Log in with what provisioning stored; return (umqtt client, "me", device name).

    ACCESS_TOKEN: the token is the user name (the password is not looked at); MQTT_BASIC (NVS tb_user
    set): client id tb_client, user name tb_user, password dev_secret."""
    h, port = broker(st, HOST, ctx)
    user = st.text("tb_user")
    if user:
        c = mqtt.connect(ctx, h, port, st.need("tb_client"), user, st.secret("dev_secret"), keepalive)
    else:
        c = mqtt.connect(ctx, h, port, name, st.secret("dev_secret"), "", keepalive)
    return c, "me", name


def subscriptions(dev):
    """Server-side RPC requests and shared attribute updates."""
    return (RPC.decode() + "+", ATTRIBUTES.decode())


def report(dev, props, qos=0):
    """Publish the properties as JSON telemetry on v1/devices/me/telemetry."""
    return dev.publish("v1/devices/me/telemetry", json.dumps(props), qos)


def after_login(dev):
    """Erase the provisioning's pending credentials (thingsboard_reg.register) once they logged in."""
    if dev.st.get("tb_pending") is not None:
        dev.st.erase("tb_pending")
        dev.st.commit()


def handle(dev, topic, msg):
    """Answer the RPC "ping" on v1/devices/me/rpc/response/<id>; hand other methods to on_message (the
    application answers them) or refuse them; merge shared attribute updates into dev.properties."""
    rpc = topic.startswith(RPC)
    if not rpc and topic != ATTRIBUTES:
        return False
    try:
        body = json.loads(msg)
    except (ValueError, RuntimeError):
        body = None
    rid = topic[len(RPC):]
    if not isinstance(body, dict):
        log("thingsboard: ignoring a message that is not a JSON object")
    elif not rpc:
        dev.properties.update(body)
        if dev.on_message:
            dev.on_message(topic, msg)
    elif not (0 < len(rid) <= 10 and rid.isdigit() and isinstance(body.get("method"), str)):
        log("thingsboard: ignoring a malformed RPC request")
    elif body["method"] != "ping" and dev.on_message:
        dev.on_message(topic, msg)
    else:
        ping = body["method"] == "ping"
        log("thingsboard: rpc %s %s" % (shown(body["method"]), "answered" if ping else "unsupported"))
        dev.publish("v1/devices/me/rpc/response/" + rid.decode(),
                    '{"pong": true}' if ping else '{"error": "unsupported method"}')
    return True
