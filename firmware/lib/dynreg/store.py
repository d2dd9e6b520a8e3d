"""The credential store: typed access to the "dynreg" NVS namespace (esp32.NVS)."""

import esp32
from micropython import const

from dynreg import ConfigError

# Values that mean "no device secret yet": the Tencent C and Python SDK sentinels
# (docs/platforms/tencent.md "Registration rules").
NULL_SECRETS = (
    b"",
    b"YOUR_DEVICE_SECRET",
    b"YOUR_IOT_PSK",
    b"YOUR_DEVICE_CERT_FILE_NAME",
    b"YOUR_DEVICE_PRIVATE_KEY_FILE_NAME",
)
_NOT_FOUND = const(-4354)  # ESP_ERR_NVS_NOT_FOUND: missing key or wrong type
_TOO_SMALL = const(-4364)  # ESP_ERR_NVS_INVALID_LENGTH: buffer shorter than the blob
_MAX_BLOB = const(4096)


def is_null(secret):
    """True if `secret` (bytes or None) is absent, empty or a placeholder."""
    return secret is None or secret.strip() in NULL_SECRETS


class Store:
    """Read and write dynreg's NVS keys. Blobs come back as bytes, never str, to spare RAM."""

    def __init__(self, namespace="dynreg"):
        self.nvs = esp32.NVS(namespace)

    def get(self, key):
        """Return the blob stored under `key`, or None if there is none."""
        buf = bytearray(64)
        while True:
            try:
                n = self.nvs.get_blob(key, buf)
                return bytes(buf[:n])
            except OSError as e:
                if e.errno == _NOT_FOUND:
                    return None
                # NVS has no length query: grow the buffer until the blob fits.
                if e.errno != _TOO_SMALL or len(buf) >= _MAX_BLOB:
                    raise
                buf = bytearray(len(buf) * 4)

    def text(self, key, default=None):
        """Return a blob as str, `default` when absent or empty."""
        v = self.get(key)
        return v.decode() if v else default

    def need(self, key):
        """Return a text setting that must be present, or raise ConfigError naming it."""
        return self.secret(key).decode()

    def secret(self, key):
        """Return a blob that must be present (and not empty) as bytes: secrets never become str."""
        v = self.get(key)
        if not v:
            raise ConfigError("NVS key %r is missing" % key)
        return v

    def int(self, key, default=None):
        """Return an i32 setting, `default` when absent."""
        try:
            return self.nvs.get_i32(key)
        except OSError as e:
            if e.errno != _NOT_FOUND:
                raise
            return default

    def set(self, key, value):
        """Store bytes or str as a blob (durable only after commit())."""
        self.nvs.set_blob(key, value.encode() if isinstance(value, str) else value)

    def erase(self, key):
        """Remove `key` if present."""
        try:
            self.nvs.erase_key(key)
        except OSError as e:
            if e.errno != _NOT_FOUND:
                raise

    def commit(self):
        """Make all writes durable."""
        self.nvs.commit()
