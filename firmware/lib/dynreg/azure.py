"""Azure IoT Hub: the MQTT login with a SAS token signed by the device key, renewed before it expires
(docs/platforms/azure.md "Wire format", "Token renewal").

The SAS token and the percent-encoder serve the registration too (azure_reg.py, Device Provisioning
Service), which only the registration boot imports.
"""

import binascii
import json
import time

from micropython import const

from dynreg import ConfigError, crypto, mqtt, net
from dynreg.flow import broker

KEEPALIVE = (1, 1177)  # s: IoT Hub's longest keep-alive
_TTL = const(3600)  # s: default lifetime of a SAS token (NVS token_ttl_s)
_renew = 0  # ticks_ms by which the current login's token must be replaced (login -> after_login)

_SAFE = b"-_.~"  # what urllib.parse.quote(safe="") leaves as it is, besides letters and digits


def quote(text):
    """Percent-encode UTF-8 `text` (str or bytes) as urllib.parse.quote(text, safe="") does; return str."""
    if isinstance(text, str):
        text = text.encode()
    out = bytearray()
    for b in text:
        if 48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b in _SAFE:
            out.append(b)
        else:
            out.extend(b"%%%02X" % b)
    return out.decode()


def sas(key, resource, expiry, policy=None):
    """A SharedAccessSignature for `resource` valid until `expiry` (Unix s), signed with the base64 `key`:
    HMAC-SHA256 over exactly the encoded resource as sent in sr=, a newline and the expiry."""
    sr = quote(resource)
    sig = crypto.hmac("sha256", crypto.b64decode(key, "device key"), "%s\n%d" % (sr, expiry))
    token = "SharedAccessSignature sr=%s&sig=%s&se=%d" % (sr, quote(binascii.b2a_base64(sig)[:-1]), expiry)
    return token + "&skn=" + policy if policy else token


def ttl(st):
    """The SAS lifetime in s (NVS token_ttl_s); at least 2 s, so that a renewal is due before the expiry."""
    t = st.int("token_ttl_s", _TTL)
    if t < 2:
        raise ConfigError("NVS token_ttl_s is %d; at least 2 s" % t)
    return t


def login(st, name, ctx, keepalive):
    """Log in to the assigned hub as the assigned device id; return (umqtt client, hub, device id)."""
    global _renew
    hub, dev = st.need("az_hub"), st.need("az_device")
    t = ttl(st)
    # se is whole seconds, so the token may hold one second less than t: renew at 3/4 of what it surely holds
    _renew = time.ticks_add(time.ticks_ms(), (t - 1) * 750)
    token = sas(st.secret("dev_secret"), "%s/devices/%s" % (hub, dev), net.unix_time() + t)
    host, port = broker(st, hub, ctx)
    return mqtt.connect(ctx, host, port, dev, "%s/%s/?api-version=2021-04-12" % (hub, dev), token, keepalive), hub, dev


def after_login(dev):
    """Tell the runtime when this login's token runs out: it logs in again with a fresh one by then."""
    dev.renew_at = _renew


def subscriptions(dev):
    """Cloud-to-device messages (they go to on_message)."""
    return ("devices/%s/messages/devicebound/#" % dev.ident,)


def report(dev, props, qos=0):
    """Publish the properties as JSON telemetry (device-to-cloud) on devices/<id>/messages/events/."""
    return dev.publish("devices/%s/messages/events/" % dev.ident, json.dumps(props), qos)
