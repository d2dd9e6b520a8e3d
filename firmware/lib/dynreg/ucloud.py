"""UCloud UIoT Core: the static MQTT login with the device secret (docs/platforms/ucloud.md "Wire format").

Registration is in ucloud_reg.py, which only the registration boot imports.
"""

import json

from dynreg import mqtt
from dynreg.flow import broker

KEEPALIVE = (30, 1200)  # s: the broker's allowed range


def host(st):
    """The broker of the device's region (NVS region, default cn-sh2); NVS mqtt_host overrides it."""
    return "mqtt-%s.iot.ucloud.cn" % st.text("region", "cn-sh2")


def login(st, name, ctx, keepalive):
    """Static login (|1) with the device secret; return (umqtt client, ProductSN, DeviceSN)."""
    psn = st.need("prod_id")
    h, port = broker(st, host(st), ctx)
    c = mqtt.connect(ctx, h, port, "%s.%s" % (psn, name), "%s|%s|1" % (psn, name), st.secret("dev_secret"), keepalive)
    return c, psn, name


def subscriptions(dev):
    """The device's downlink topic."""
    return ("/%s/%s/set" % (dev.product, dev.ident),)


def report(dev, props, qos=0):
    """Publish the properties as JSON on the user topic /<ProductSN>/<DeviceSN>/upload (the downlink goes
    to on_message: UCloud sends nothing dynreg answers itself)."""
    return dev.publish("/%s/%s/upload" % (dev.product, dev.ident), json.dumps(props), qos)
