"""UCloud UIoT Core: the static MQTT login with the device secret (docs/platforms/ucloud.md "Wire format").

Registration is in ucloud_reg.py, which only the registration boot imports.
"""

import json

from dynreg import mqtt


def host(st):
    """The broker of the device's region (NVS region, default cn-sh2); NVS mqtt_host overrides it."""
    return "mqtt-%s.iot.ucloud.cn" % st.text("region", "cn-sh2")


def login(st, name, ctx):
    """Static login (|1) with the device secret; return (umqtt client, ProductSN, DeviceSN)."""
    psn = st.need("prod_id")
    c = mqtt.connect(st, ctx, host(st), "%s.%s" % (psn, name), "%s|%s|1" % (psn, name), st.get("dev_secret"))
    return c, psn, name


def subscriptions(dev):
    """The device's downlink topic."""
    return ("/%s/%s/set" % (dev.pid, dev.ident),)


def report(dev, props):
    """Publish the properties as JSON on the user topic /<ProductSN>/<DeviceSN>/upload."""
    dev.publish("/%s/%s/upload" % (dev.pid, dev.ident), json.dumps(props))
