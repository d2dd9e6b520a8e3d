"""Simulated esp32 module: NVS (non-volatile storage) on an ESP-IDF NVS partition image.

Runs under MicroPython (unix port) and CPython. The flash is a binary NVS
partition in ESP-IDF's format (version 2, see tools/factory/nvsformat.py, which
rom.py puts on the board's path): the board boots from exactly the image
esp-idf-nvs-partition-gen writes for a real board, and what it commits is
stored in that format.

Semantics follow ports/esp32/esp32_nvs.c over ESP-IDF's nvs_* API:
- only i32 and blob values; a missing key or a key of another type (a string,
  a u8, ... as ESP-IDF's own components write them) raises
  OSError(-4354, 'ESP_ERR_NVS_NOT_FOUND');
- namespaces and keys are at most 15 bytes (-4361 ESP_ERR_NVS_KEY_TOO_LONG);
- get_blob() into a too-small buffer raises -4364 ESP_ERR_NVS_INVALID_LENGTH;
- capacity is that of the partition, laid out as nvsformat.build() lays it
  out (-4357 ESP_ERR_NVS_NOT_ENOUGH_SPACE when a write does not fit; -4366
  ESP_ERR_NVS_VALUE_TOO_LONG for a blob over (pages - 1) x 4000 bytes);
- writes are visible at once in this process but reach the image only on
  commit() (stricter than the hardware, which writes at once, so a missing
  commit() shows up). commit() stores the handle's namespace as it is now,
  keeps every other namespace as the image holds it, and rewrites the whole
  image from that content (nvsformat.build(): a compacted layout; the real
  ESP-IDF appends new items and erases old ones in place). The file is
  replaced atomically (a crash leaves the old or the new image) and is
  owner-only (0600: it holds the board's secrets), whatever the umask.

Environment: DYNREG_SIM_NVS names the partition image file; its size is the
partition's size. A missing file is an erased partition of DYNREG_SIM_NVS_SIZE
bytes (default 0x6000, MicroPython's default partition table), created on the
first commit(). DYNREG_SIM_FAULT (simfault.py) injects power cuts: "nvs_write:N" makes
every set_*/erase_key durable at once (ESP-IDF's own behaviour) and cuts the power at
the N-th set_*; "nvs_commit:N" cuts it right after the N-th commit(). Unset means a board whose flash is never written (nothing
survives the process). An image whose pages are of a newer format than v2 is
erased, as MicroPython's startup does on ESP_ERR_NVS_NEW_VERSION_FOUND.
"""
import os

import nvsformat
import simfault

_NOT_FOUND = -4354
_KEY_TOO_LONG = nvsformat.KEY_TOO_LONG
_INVALID_LENGTH = -4364
_NAMES = {
    _NOT_FOUND: "ESP_ERR_NVS_NOT_FOUND",
    _INVALID_LENGTH: "ESP_ERR_NVS_INVALID_LENGTH",
}
for _code in nvsformat.ERROR_NAMES:
    _NAMES[_code] = nvsformat.ERROR_NAMES[_code]

# Both: [[namespace, [[key, (type, value)], ...]], ...] in flash order (lists,
# not dicts: MicroPython's dicts do not keep insertion order).
_committed = None  # what the image holds
_live = None  # what this process sees: committed + uncommitted writes
_size = nvsformat.DEFAULT_SIZE


def _error(code):
    return OSError(code, _NAMES[code])


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError("can't convert to str implicitly")
    if len(name.encode()) > nvsformat.MAX_KEY:
        raise _error(_KEY_TOO_LONG)


def _copy(store):
    return [[ns, [list(pair) for pair in pairs]] for ns, pairs in store]


def _find(pairs, name):
    """Index of name in a list of [name, ...] pairs, or -1."""
    for i in range(len(pairs)):
        if pairs[i][0] == name:
            return i
    return -1


def _load():
    """Read the partition once per process (a boot reads flash)."""
    global _committed, _live, _size
    if _live is not None:
        return
    path = os.getenv("DYNREG_SIM_NVS")
    image = None
    if path:
        try:
            with open(path, "rb") as f:
                image = f.read()
        except OSError:
            pass  # no file yet: erased flash
    if image is None:
        size = os.getenv("DYNREG_SIM_NVS_SIZE")
        image = nvsformat.erased(int(size, 0) if size else nvsformat.DEFAULT_SIZE)
    _size = len(image)
    try:
        content = nvsformat.read(image)
    except OSError as e:
        if e.args[0] != nvsformat.NEW_VERSION_FOUND:
            raise
        content = []  # MicroPython's startup: nvs_flash_erase(), nvs_flash_init()
    except ValueError as e:
        raise ValueError("NVS image %s: %s" % (path, e))
    _committed = [[ns, [list(pair) for pair in pairs]] for ns, pairs in content]
    _live = _copy(_committed)


def _save(content):
    """Write the image of content (the whole partition) and make it the committed state."""
    global _committed
    image = nvsformat.build(content, _size)
    path = os.getenv("DYNREG_SIM_NVS")
    if path:
        tmp = path + ".tmp"
        _create_private(tmp)
        with open(tmp, "wb") as f:  # an existing file keeps its mode
            f.write(image)
        # rename() replaces the old file atomically: a crash leaves old or new
        os.rename(tmp, path)
    _committed = content


def _create_private(path):
    """Create path empty and owner-only (the flash holds the board's secrets), whatever the umask."""
    if hasattr(os, "open"):  # CPython
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.chmod(path, 0o600)  # a stale file keeps its mode through O_CREAT
        return
    # MicroPython's unix port has no os.open nor chmod: the runner (tools/sim) starts the board with umask 077;
    # started otherwise, the shell fixes the mode (once per commit, only when the umask let it through).
    open(path, "wb").close()
    if os.stat(path)[0] & 0o077:
        os.system("chmod 600 '%s'" % path.replace("'", "'\\''"))


class NVS:
    """A handle on one NVS namespace, like esp32.NVS on the board."""

    def __init__(self, namespace):
        _check_name(namespace)
        _load()
        self._ns = namespace
        if _find(_live, namespace) < 0:
            _live.append([namespace, []])

    def _pairs(self):
        return _live[_find(_live, self._ns)][1]

    def _get(self, key, kind):
        _check_name(key)
        pairs = self._pairs()
        i = _find(pairs, key)
        if i < 0 or pairs[i][1][0] != kind:
            raise _error(_NOT_FOUND)
        return pairs[i][1][1]

    def _set(self, key, item):
        _check_name(key)
        pairs = self._pairs()
        i = _find(pairs, key)
        if i >= 0 and pairs[i][1] == item:
            return  # ESP-IDF does not write an unchanged value
        # ESP-IDF appends the new item and erases the old one
        trial = [pair for pair in pairs if pair[0] != key] + [[key, item]]
        nvsformat.check([(ns, trial if ns == self._ns else p) for ns, p in _live], _size)  # raises when full
        self._power_cut_at_write()
        pairs[:] = trial
        self._durable_now()

    def _power_cut_at_write(self):
        """Fault nvs_write:N: count this set_*; at the N-th the power goes before it reaches flash."""
        f = simfault.get("nvs_write")
        if f is not None and simfault.count("nvs_write") == int(f[0]):
            simfault.power_cut()

    def _durable_now(self):
        """Under an nvs_write fault every write reaches flash at once, as nvs_set_* does on ESP-IDF."""
        if simfault.get("nvs_write") is not None:
            self._store()

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
        pairs = self._pairs()
        i = _find(pairs, key)
        if i < 0:
            raise _error(_NOT_FOUND)
        del pairs[i]
        self._durable_now()

    def commit(self):
        """Write this namespace's current contents to the partition image."""
        self._store()
        f = simfault.get("nvs_commit")
        if f is not None and simfault.count("nvs_commit") == int(f[0]):
            simfault.power_cut()

    def _store(self):
        content = _copy(_committed)
        pairs = [list(pair) for pair in self._pairs()]
        i = _find(content, self._ns)
        if i < 0:
            content.append([self._ns, pairs])
        else:
            content[i][1] = pairs
        _save(content)
