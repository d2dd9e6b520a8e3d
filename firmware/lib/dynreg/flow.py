"""The boot flow: read NVS; no device secret -> register, store, commit, reset; else log in over MQTT.

The platform contract. PLATFORMS is the one list of platforms (NVS key `platform`); the host tools read
it from here. A platform <p> is two modules, so that each boot imports only what it runs:
- dynreg/<p>_reg.py (registration boot only): register(st, name, ctx) -> [(NVS key, value), ...],
  what the cloud issued, the device secret last (flow stores them in that order, commits, resets);
- dynreg/<p>.py (every login boot): KEEPALIVE = (lowest, highest) keepalive in s; login(st, name, ctx,
  keepalive) -> (umqtt client, product id, device id), called again for every reconnect;
  subscriptions(dev) -> topics, report(dev, props, qos) -> dev.publish()'s result; optional:
  after_login(dev) (runs once the subscriptions are sent, after every login; a login whose credentials
  expire sets dev.renew_at there, and the runtime logs in again by then) and
  handle(dev, topic, msg) -> True if the platform consumed the message.
  load() gives a module without them the default, _nothing: nothing to do, nothing handled.
Adding a platform means: those two modules and its name in PLATFORMS; its emulator module
tools/cloud/<p>.py (and its products in tools/cloud/registry.json); boards/sim/settings/<p>.json;
docs/platforms/<p>.md; its files in package.json. host_tests/test_platforms.py checks every part.
"""

import gc
import random
import time

import machine

from dynreg import ConfigError, DynregError, log, net, shown
from dynreg.store import Store, is_null

PLATFORMS = ("tencent", "ucloud", "protco", "aliyun", "thingsboard", "aws", "azure")


def _nothing(*args):
    return False


def load(platform):
    """The platform's login module, its optional parts (after_login, handle) defaulting to _nothing."""
    plat = __import__("dynreg." + platform, None, None, ["login"])
    for part in ("after_login", "handle"):
        if not hasattr(plat, part):
            setattr(plat, part, _nothing)
    return plat


def jitter_ms(limit_ms):
    """A random start-up wait in [0, limit_ms]: a fleet that loses power together must not all return at once."""
    return random.getrandbits(24) % (limit_ms + 1)


def backoff_ms(attempt, base_ms, cap_ms):
    """Capped exponential back-off with jitter: a random wait in [d/2, d], d = min(cap, base * 2^(attempt-1))."""
    d = min(cap_ms, base_ms << min(attempt - 1, 20))
    return d // 2 + random.getrandbits(20) % (d // 2 + 1)


def broker(st, host, ctx):
    """(host, port) of the MQTT broker: NVS mqtt_host/mqtt_port, else `host` and 8883 (1883 without TLS)."""
    return st.text("mqtt_host") or host, st.int("mqtt_port", 1883 if ctx is None else 8883)


def _attempt(st, platform, name, ctx):
    ssid = st.text("wifi_ssid")
    if ssid:
        net.wifi_connect(ssid, st.text("wifi_pass", ""), st.int("wifi_timeout_ms", 20000))
    net.set_clock()
    # Registered means a device secret (or a client certificate) in NVS: registration stores it last,
    # then the marker dev_id. A marker without a secret is flash damage, not a new board: registering
    # again would be refused (activated devices) or replace the identity the cloud knows.
    if is_null(st.get("dev_secret")) and is_null(st.get("dev_cert")):
        marker = st.text("dev_id")
        if marker:
            raise ConfigError("NVS damaged: marker of %s, no secret; not registering: make nvs-restore" % marker)
        log("no device secret in NVS: registering %s device %r" % (platform, name))
        # Only this boot imports the registration module, and only the login boot the login module.
        items = __import__("dynreg.%s_reg" % platform, None, None, ["register"]).register(st, name, ctx)
        gc.collect()
        for key, value in items:
            st.set(key, value)
        st.set("dev_id", "%s/%s" % (platform, name))  # after the secret: a power cut before it leaves no marker
        st.commit()
        log("registered: stored %s in NVS; resetting" % ", ".join(k for k, _ in items))
        machine.reset()
    # A collection before each import: what an import leaves for good then packs below its garbage, not
    # between it, so the TLS handshake still finds its one 520-byte block (the SSL socket). Measured:
    # the smallest working heap fell 72 -> 66 KiB (Tencent), 64 -> 58 (UCloud).
    gc.collect()
    from dynreg.device import Device

    gc.collect()
    plat = load(platform)
    gc.collect()
    dev = Device(st, plat, name, ctx)  # logs in
    log("mqtt: logged in")
    if not st.get("dev_id"):  # an identity from the factory or an older firmware: mark it now it works
        st.set("dev_id", "%s/%s" % (platform, name))
        st.commit()
    if st.int("forget_prod", 0) and st.get("prod_secret"):
        # The device secret works; a board captured later must not reveal the whole product line's secret.
        st.erase("prod_secret")
        st.commit()
        log("product secret erased from NVS (forget_prod=1)")
    return dev


def run():
    """Run the boot flow with bounded, jittered retries; return a logged-in Device."""
    st = Store()
    platform = st.text("platform")
    if platform is None and st.get("prod_id") is None:  # ESP-IDF skips what it cannot read: nothing left
        raise ConfigError("NVS empty (erased or unreadable): flash an image or make nvs-restore")
    if platform not in PLATFORMS:
        raise ConfigError("NVS key 'platform' is %r, not one of %s" % (platform, ", ".join(PLATFORMS)))
    name = st.text("dev_name")
    if not name:  # the Wi-Fi MAC in lowercase hex
        import binascii
        import network

        name = binascii.hexlify(network.WLAN(network.STA_IF).config("mac")).decode()
    # Made first, while the heap is still in one piece: the context is one block of about 3 KB. A client
    # certificate in NVS (Tencent certificate products, once registered) goes into it.
    ctx = net.tls_context(st.get("ca"), st.get("dev_cert"), st.get("dev_key")) if st.int("tls", 1) else None
    wait = st.int("jitter_ms", 0)
    if wait:
        wait = jitter_ms(wait)
        log("start-up jitter: waiting %d ms" % wait)
        time.sleep_ms(wait)
    tries = st.int("max_tries", 0)
    base, cap = st.int("retry_ms", 2000), st.int("retry_max_ms", 300000)
    attempt = 0
    while True:
        attempt += 1
        try:
            return _attempt(st, platform, name, ctx)
        except ConfigError:
            raise
        except Exception as e:  # noqa: a field device must survive any failure and try again
            why = shown("%s: %s" % (type(e).__name__, e), 160)
        gc.collect()
        if "registration refused" in why:  # a lockout: say why it may be, at every retry
            why += " (NVS lost? make nvs-restore)"
        if attempt == tries:
            raise DynregError("giving up after %d attempts; last: %s" % (attempt, why))
        wait = backoff_ms(attempt, base, cap)
        log("attempt %d failed (%s); retrying in %d ms" % (attempt, why, wait))
        time.sleep_ms(wait)
