"""AWS IoT Core: the mutual-TLS MQTT login with the certificate fleet provisioning issued
(docs/platforms/aws.md "Login").

Registration (fleet provisioning by claim) is in aws_reg.py, which only the registration boot imports.
"""

import json

from dynreg import ConfigError, log, mqtt, shown
from dynreg.flow import broker

KEEPALIVE = (30, 1200)  # s: the range AWS IoT Core accepts


def endpoint(st, ctx):
    """(host, port) of the account's endpoint: NVS mqtt_host (AWS has no default) and mqtt_port (8883).

    Mutual TLS is the credential, so plain TCP is a configuration error."""
    if ctx is None:
        raise ConfigError("aws: the certificate is the credential: tls=0 is not possible")
    host, port = broker(st, None, ctx)
    if not host:
        raise ConfigError("aws: NVS key 'mqtt_host' (the account's <prefix>-ats.iot.<region>.amazonaws.com) is missing")
    return host, port


def login(st, name, ctx, keepalive):
    """Log in as the thing (client id = thing name; no username or password: the TLS client certificate
    from flow's context is the credential); return (umqtt client, template name, thing name)."""
    thing = st.need("thing_name")
    host, port = endpoint(st, ctx)
    return mqtt.connect(ctx, host, port, thing, None, None, keepalive), st.need("prod_id"), thing


def _delta(dev):
    return "$aws/things/%s/shadow/update/delta" % dev.ident


def subscriptions(dev):
    """The classic shadow's delta topic: desired state the cloud wants the device to take."""
    return (_delta(dev),)


def after_login(dev):
    """With forget_prod=1, erase the claim credentials once a login with the device's own certificate was
    accepted (as flow erases prod_secret for the other platforms)."""
    st = dev.st
    if st.int("forget_prod", 0) and st.get("claim_key"):
        st.erase("claim_key")
        st.erase("claim_cert")
        st.commit()
        log("aws: claim certificate and key erased from NVS (forget_prod=1)")


def handle(dev, topic, msg):
    """A shadow delta: its "state" goes to dev.properties and on_message; everything else to the application."""
    if topic != _delta(dev).encode():
        return False
    try:
        state = json.loads(msg)["state"]
        if not isinstance(state, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, RuntimeError):
        log("aws: ignoring a malformed shadow delta")
        return True
    dev.properties.update(state)
    log("aws: shadow delta %s" % shown(",".join(state)))
    if dev.on_message:
        dev.on_message(topic, msg)
    return True


def report(dev, props, qos=0):
    """Publish the properties as JSON on NVS aws_topic ("{thing}" becomes the thing name), by default
    dt/<thing>/telemetry."""
    topic = dev.st.text("aws_topic", "dt/{thing}/telemetry").replace("{thing}", dev.ident)
    return dev.publish(topic, json.dumps(props), qos)
