"""dynreg: one secret per product in the factory, one secret per device in the field.

At boot `connect()` reads the board's NVS. If the device secret is still the null value it
joins Wi-Fi, registers with the cloud, stores what the cloud returns, commits and resets;
otherwise it logs in to the platform's MQTT broker with the device's own secret.
"""

VERSION = "0.1.0"


class DynregError(Exception):
    """A step failed for a reason worth retrying later; the message never holds a secret."""


class ConfigError(DynregError):
    """The factory settings in NVS are missing or invalid; retrying cannot help."""


def log(msg):
    """Print one line of the device log (the only output dynreg makes)."""
    print("dynreg:", msg)


def shown(text, limit=64):
    """Text from the network made safe for one log line: printable ASCII (others as \\xNN), at most
    `limit` characters (then "...")."""
    if not isinstance(text, (bytes, bytearray)):
        text = str(text).encode()
    out = bytearray()
    for b in text[:limit]:
        if 32 <= b < 127:
            out.append(b)
        else:
            out.extend(b"\\x%02x" % b)
    return out[:limit].decode() + ("..." if len(out) > limit or len(text) > limit else "")


def connect():
    """Return a logged-in `Device`, registering first if the board has no secret (resets then)."""
    from dynreg import flow

    return flow.run()
