"""Simulated esp32 module: NVS (non-volatile storage) backed by a JSON file.

Runs under MicroPython (unix port) and CPython. Semantics follow
ports/esp32/esp32_nvs.c over ESP-IDF's nvs_* API:
- only i32 and blob values; a missing key or a key of the other type raises
  OSError(-4354, 'ESP_ERR_NVS_NOT_FOUND');
- namespaces and keys are at most 15 bytes (-4361 ESP_ERR_NVS_KEY_TOO_LONG);
- get_blob() into a too-small buffer raises -4364 ESP_ERR_NVS_INVALID_LENGTH;
- writes are visible at once in this process but reach the backing file only
  on commit() (stricter than the hardware, so a missing commit() shows up);
- capacity is that of the default 0x6000 partition (-4357 when full).

The backing file is named by the environment variable DYNREG_SIM_NVS; unset
means a board whose flash is never written (nothing survives the process).
File format: {"<namespace>": {"<key>": ["i32", 5] | ["blob", "<base64>"]}}.
"""
import binascii
import json
import os

_NOT_FOUND = -4354
_NOT_ENOUGH_SPACE = -4357
_KEY_TOO_LONG = -4361
_INVALID_LENGTH = -4364
_NAMES = {
    _NOT_FOUND: "ESP_ERR_NVS_NOT_FOUND",
    _NOT_ENOUGH_SPACE: "ESP_ERR_NVS_NOT_ENOUGH_SPACE",
    _KEY_TOO_LONG: "ESP_ERR_NVS_KEY_TOO_LONG",
    _INVALID_LENGTH: "ESP_ERR_NVS_INVALID_LENGTH",
}
_MAX_KEY = 15
# 0x6000 bytes = 6 pages of 4 KiB; one page stays free for garbage collection;
# each page holds 126 entries of 32 bytes.
_CAPACITY = 5 * 126

# Both map namespace -> {key: (type, value)} with value an int or bytes.
_committed = None  # what the backing file holds
_live = None  # what this process sees: committed + uncommitted writes


def _error(code):
    return OSError(code, _NAMES[code])


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError("can't convert to str implicitly")
    if len(name.encode()) > _MAX_KEY:
        raise _error(_KEY_TOO_LONG)


def _copy(store):
    return dict((ns, dict(keys)) for ns, keys in store.items())


def _load():
    """Read the backing file once per process (a boot reads flash)."""
    global _committed, _live
    if _live is not None:
        return
    _committed = {}
    path = os.getenv("DYNREG_SIM_NVS")
    if path:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            text = ""  # no file yet: erased flash
        if text:
            for ns, keys in json.loads(text).items():
                entries = {}
                for key, item in keys.items():
                    if item[0] == "i32":
                        entries[key] = ("i32", item[1])
                    else:
                        entries[key] = ("blob", binascii.a2b_base64(item[1]))
                _committed[ns] = entries
    _live = _copy(_committed)


def _save():
    path = os.getenv("DYNREG_SIM_NVS")
    if not path:
        return
    doc = {}
    for ns, keys in _committed.items():
        out = {}
        for key, (kind, value) in keys.items():
            if kind == "blob":
                value = binascii.b2a_base64(value).decode().strip()
            out[key] = [kind, value]
        doc[ns] = out
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(doc))
    # rename() replaces the old file atomically: a crash leaves old or new
    os.rename(tmp, path)


def _entries(item):
    """Flash entries used by one value (ESP-IDF v4+ layout)."""
    if item[0] == "i32":
        return 1
    # blob index entry + data header entry + 32-byte data entries
    return 2 + (len(item[1]) + 31) // 32


def _used():
    total = 0
    for keys in _live.values():
        total += 1  # the namespace entry
        for item in keys.values():
            total += _entries(item)
    return total


class NVS:
    """A handle on one NVS namespace, like esp32.NVS on the board."""

    def __init__(self, namespace):
        _check_name(namespace)
        _load()
        self._ns = namespace
        if namespace not in _live:
            _live[namespace] = {}

    def _get(self, key, kind):
        _check_name(key)
        item = _live[self._ns].get(key)
        if item is None or item[0] != kind:
            raise _error(_NOT_FOUND)
        return item[1]

    def _set(self, key, item):
        _check_name(key)
        keys = _live[self._ns]
        old = keys.get(key)
        need = _used() + _entries(item) - (_entries(old) if old else 0)
        if need > _CAPACITY:
            raise _error(_NOT_ENOUGH_SPACE)
        keys[key] = item

    def set_i32(self, key, value):
        """Store a signed 32-bit integer under key (durable after commit())."""
        value = int(value)
        if not -0x80000000 <= value <= 0x7FFFFFFF:
            raise OverflowError("overflow converting long int to machine word")
        self._set(key, ("i32", value))

    def get_i32(self, key):
        """Return the i32 stored under key."""
        return self._get(key, "i32")

    def set_blob(self, key, value):
        """Store the bytes of a buffer (or str, as MicroPython allows) under key."""
        if isinstance(value, str):
            value = value.encode()
        self._set(key, ("blob", bytes(value)))

    def get_blob(self, key, buf):
        """Copy the blob stored under key into buf; return its length."""
        if not isinstance(buf, (bytearray, memoryview)):
            raise TypeError("object with buffer protocol required")
        data = self._get(key, "blob")
        if len(data) > len(buf):
            raise _error(_INVALID_LENGTH)
        buf[: len(data)] = data
        return len(data)

    def erase_key(self, key):
        """Remove key (durable after commit())."""
        _check_name(key)
        keys = _live[self._ns]
        if key not in keys:
            raise _error(_NOT_FOUND)
        del keys[key]

    def commit(self):
        """Write this namespace's current contents to the backing file."""
        _committed[self._ns] = dict(_live[self._ns])
        _save()
