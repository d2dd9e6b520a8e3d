"""ESP-IDF NVS partitions (format version 2, "multipage blob"): read and write.

Pure Python, valid under MicroPython (unix port) and CPython: the factory
tools read images with it, and the simulated board's esp32.NVS
(boards/sim/modules/esp32.py; boards/sim/rom.py puts this directory on the
board's path) keeps its flash in this format, so it boots from the very
image esp-idf-nvs-partition-gen writes for a real board. Stdlib only, no
imports from tools: the board imports it as a top-level module.

The format (ESP-IDF components/nvs_flash, nvs_partition_gen.py):
- the partition is a row of 4096-byte pages. Page header (32 bytes): state
  u32 (0xFFFFFFFF uninitialized, ...FE active, ...FC full, ...F8 freeing),
  sequence number u32, version u8 (0xFE = v2, 0xFF = v1), 19 bytes 0xFF,
  CRC32 of bytes 4..27. Then a 32-byte entry state bitmap, 2 bits per entry
  (3 empty, 2 written, 0 erased), then 126 entries of 32 bytes;
- an entry (item): namespace index u8, type u8, span u8 (entries used,
  header included), chunk index u8 (0xFF = any), CRC32 u32 of bytes 0..3 and
  8..31, key (16 bytes, NUL-padded, at most 15 characters), 8 data bytes;
- namespaces are items of namespace 0, type u8, whose value is the index the
  namespace's items carry;
- primitive types u8 0x01, i8 0x11, u16 0x02, i16 0x12, u32 0x04, i32 0x14,
  u64 0x08, i64 0x18: little-endian value in the data bytes;
- strings (SZ 0x21, NUL-terminated) and data chunks (BLOB_DATA 0x42): data
  bytes = size u16, 0xFFFF, CRC32 of the payload; the payload fills the next
  span-1 entries. A blob is one or more chunks (one per page, chunk index
  chunk_start + n) plus an index item (BLOB_IDX 0x48, chunk index 0xFF):
  total size u32, chunk count u8, chunk start u8 (0 or 0x80, alternating on
  rewrites). Version 1's single-page blobs (BLOB 0x41) are read too.
All CRCs are CRC-32 (IEEE) started from 0xFFFFFFFF, i.e. crc32(data, 0xFFFFFFFF).

Reading follows ESP-IDF: pages in sequence-number order; pages whose header
CRC fails, or that are uninitialized or corrupt, are ignored; an item whose
CRC fails is skipped (ESP-IDF erases it), and so is a string or chunk whose
payload CRC fails; on an active page reading stops at the first empty entry;
a blob whose chunks are missing or do not add up is not found; when a key
occurs twice (power lost between writing the new item and erasing the old),
the later item wins.

Writing lays the entries out afresh and sequentially, exactly as
esp-idf-nvs-partition-gen does (same chunking, page states and padding), so
build() of the same entries in the same order gives the same bytes. The last
page always stays free (ESP-IDF needs it for garbage collection). The real
ESP-IDF instead appends each new item to the active page and erases the old
one; the simulated board regenerates its image at commit(), a compacted
equivalent of what the flash holds.

API:
    parse(image)  -> {namespace: {key: item}}
    read(image)   -> [(namespace, [(key, item), ...]), ...] in flash order
    build(entries, size=DEFAULT_SIZE) -> bytearray (entries: either form above)
    check(entries, size=DEFAULT_SIZE): raises what build() would, makes no image
    erased(size)  -> bytes of an erased partition (all 0xFF)
An item is ("i32", int) | ("blob", bytes) | ("str", str) | ("u8", int) ...
("i64", int) | ("0xNN", raw 8 data bytes) for a type this module does not know.
build() raises OSError(-4357, "ESP_ERR_NVS_NOT_ENOUGH_SPACE") when the entries
do not fit, -4366 ESP_ERR_NVS_VALUE_TOO_LONG for a value no partition of that
size takes, -4361 ESP_ERR_NVS_KEY_TOO_LONG for a key over 15 bytes; read()
raises ValueError for data that is not a partition and OSError(-4368,
"ESP_ERR_NVS_NEW_VERSION_FOUND") for pages of a format newer than v2.
"""
import binascii
import struct

PAGE_SIZE = 4096
ENTRY_SIZE = 32
ENTRY_COUNT = 126
CHUNK_MAX = (ENTRY_COUNT - 1) * ENTRY_SIZE  # 4000 payload bytes per page
DEFAULT_SIZE = 0x6000  # MicroPython's default partition table: nvs at 0x9000
MAX_KEY = 15

NOT_ENOUGH_SPACE = -4357
KEY_TOO_LONG = -4361
VALUE_TOO_LONG = -4366
NEW_VERSION_FOUND = -4368
ERROR_NAMES = {
    NOT_ENOUGH_SPACE: "ESP_ERR_NVS_NOT_ENOUGH_SPACE",
    KEY_TOO_LONG: "ESP_ERR_NVS_KEY_TOO_LONG",
    VALUE_TOO_LONG: "ESP_ERR_NVS_VALUE_TOO_LONG",
    NEW_VERSION_FOUND: "ESP_ERR_NVS_NEW_VERSION_FOUND",
}

ACTIVE = 0xFFFFFFFE
FULL = 0xFFFFFFFC
FREEING = 0xFFFFFFF8
UNINITIALIZED = 0xFFFFFFFF
VERSION2 = 0xFE
VERSION1 = 0xFF

_BITMAP = 32  # offset of the entry state bitmap in a page
_FIRST_ENTRY = 64
_EMPTY = 3
_WRITTEN = 2
_CHUNK_ANY = 0xFF
_U8 = 0x01
_SZ = 0x21
_BLOB_V1 = 0x41
_BLOB_DATA = 0x42
_BLOB_IDX = 0x48
_PRIMITIVES = {
    0x01: ("u8", "<B"), 0x11: ("i8", "<b"), 0x02: ("u16", "<H"), 0x12: ("i16", "<h"),
    0x04: ("u32", "<I"), 0x14: ("i32", "<i"), 0x08: ("u64", "<Q"), 0x18: ("i64", "<q"),
}
_TYPE_CODES = {}
for _code in _PRIMITIVES:
    _TYPE_CODES[_PRIMITIVES[_code][0]] = _code


def _error(code):
    return OSError(code, ERROR_NAMES[code])


def _crc(data):
    return binascii.crc32(data, 0xFFFFFFFF) & 0xFFFFFFFF


def _item_crc(entry):
    return _crc(bytes(entry[0:4]) + bytes(entry[8:32]))


def erased(size=DEFAULT_SIZE):
    """An erased partition of size bytes (flash reads 0xFF after erasing)."""
    return b"\xff" * size


# ------------------------------------------------------------------- reading

def _entry_state(page, index):
    return (page[_BITMAP + index // 4] >> ((index % 4) * 2)) & 3


def _pages(image):
    """The readable pages, oldest first: [(seq, position, page, state)]."""
    if not image or len(image) % PAGE_SIZE:
        raise ValueError("an NVS partition is a non-empty multiple of %d bytes, not %d" % (PAGE_SIZE, len(image)))
    found = []
    view = memoryview(image)  # pages are slices of it, not copies
    for position in range(len(image) // PAGE_SIZE):
        page = view[position * PAGE_SIZE: (position + 1) * PAGE_SIZE]
        state, seq = struct.unpack_from("<II", page, 0)
        if state == UNINITIALIZED:
            continue
        if struct.unpack_from("<I", page, 28)[0] != _crc(bytes(page[4:28])):
            continue  # corrupt header: ESP-IDF ignores the page
        if state not in (ACTIVE, FULL, FREEING):
            continue  # corrupt or invalid
        if page[8] < VERSION2:
            raise _error(NEW_VERSION_FOUND)
        found.append((seq, position, page, state))
    found.sort()  # by sequence number (the position only breaks ties)
    return found


def _records(image):
    """Every valid item, in flash order: (ns, type, chunk, key, data8, payload)."""
    records = []
    for _seq, _position, page, state in _pages(image):
        end = ENTRY_COUNT
        if state == ACTIVE:  # only entries before the first empty one count
            for i in range(ENTRY_COUNT):
                if _entry_state(page, i) == _EMPTY:
                    end = i
                    break
        i = 0
        while i < end:
            if _entry_state(page, i) != _WRITTEN:
                i += 1
                continue
            start = _FIRST_ENTRY + i * ENTRY_SIZE
            entry = page[start: start + ENTRY_SIZE]
            if struct.unpack_from("<I", entry, 4)[0] != _item_crc(entry):
                i += 1  # ESP-IDF erases this one entry and reads on
                continue
            kind = entry[1]
            span = 1
            payload = None
            if kind in (_SZ, _BLOB_V1, _BLOB_DATA):
                span = entry[2]
                size, crc = struct.unpack_from("<H", entry, 24)[0], struct.unpack_from("<I", entry, 28)[0]
                if span < 1 or i + span > end or size > (span - 1) * ENTRY_SIZE:
                    i += 1
                    continue
                if [j for j in range(i + 1, i + span) if _entry_state(page, j) != _WRITTEN]:
                    i += span  # half written or half erased: ESP-IDF erases it
                    continue
                payload = bytes(page[start + ENTRY_SIZE: start + ENTRY_SIZE + size])
                if _crc(payload) != crc:
                    i += span  # ESP-IDF answers NOT_FOUND and erases it
                    continue
            key = bytes(entry[8:24])
            nul = key.find(b"\x00")
            if nul >= 0:
                key = key[:nul]
            records.append((entry[0], kind, entry[3], key, bytes(entry[24:32]), payload))
            i += span
    return records


def _decode_key(key):
    try:
        return key.decode()
    except UnicodeError:
        return None


def _value(kind, data8, payload):
    """The item of a non-blob record."""
    if kind in _PRIMITIVES:
        name, fmt = _PRIMITIVES[kind]
        return (name, struct.unpack_from(fmt, data8, 0)[0])
    if kind == _SZ:
        nul = payload.find(b"\x00")
        text = payload[:nul] if nul >= 0 else payload
        try:
            return ("str", text.decode())
        except UnicodeError:
            return ("str", text)
    if kind == _BLOB_V1:
        return ("blob", payload)
    return ("0x%02x" % kind, data8)


def read(image):
    """[(namespace, [(key, item), ...]), ...]: the partition's contents in flash order.

    Namespaces in the order of their namespace items, keys in the order of
    their (last) items; a namespace without keys is listed with an empty list.
    """
    records = _records(image)
    names = {}  # namespace index -> name
    order = []  # namespace names, first appearance
    chunks = {}  # (ns index, key, chunk index) -> payload (the first one found)
    for ns, kind, chunk, key, data8, payload in records:
        if ns == 0 and kind == _U8:
            name = _decode_key(key)
            if name is not None and data8[0] not in (0, 0xFF):
                names[data8[0]] = name
                if name not in order:
                    order.append(name)
        elif kind == _BLOB_DATA and (ns, key, chunk) not in chunks:
            chunks[(ns, key, chunk)] = payload
    values = {}  # (name, key) -> item
    sequence = []  # (name, key) in the order of their last item
    for ns, kind, chunk, key, data8, payload in records:
        if ns == 0 or kind == _BLOB_DATA or ns not in names:
            continue  # namespace items, chunks, orphans
        name, text = names[ns], _decode_key(key)
        if text is None:
            continue
        if kind == _BLOB_IDX:
            if chunk != _CHUNK_ANY:
                continue
            size, count, start = struct.unpack_from("<IBB", data8, 0)
            parts = [chunks.get((ns, key, (start + n) & 0xFF)) for n in range(count)]
            if None in parts:
                continue  # a chunk is missing: ESP-IDF answers NOT_FOUND
            blob = b"".join(parts)
            if len(blob) != size:
                continue  # inconsistent: ESP-IDF answers INVALID_LENGTH
            item = ("blob", blob)
        else:
            item = _value(kind, data8, payload)
        slot = (name, text)
        if slot in values:
            sequence.remove(slot)
        values[slot] = item
        sequence.append(slot)
    result = [(name, []) for name in order]
    for name, text in sequence:
        result[order.index(name)][1].append((text, values[(name, text)]))
    return result


def parse(image):
    """{namespace: {key: item}}: the partition's contents."""
    out = {}
    for name, pairs in read(image):
        keys = {}
        for key, item in pairs:
            keys[key] = item
        out[name] = keys
    return out


# ------------------------------------------------------------------- writing

class _Writer:
    """Pages filled sequentially, the way esp-idf-nvs-partition-gen fills them."""

    def __init__(self, size, write=True):
        if size % PAGE_SIZE or size < 2 * PAGE_SIZE:
            raise ValueError("an NVS partition is a multiple of %d bytes, at least two pages" % PAGE_SIZE)
        self.image = None  # None: only count entries
        if write:
            self.image = bytearray(size)
            blank = erased(PAGE_SIZE)  # page by page: no second copy of the image on the heap
            for base in range(0, size, PAGE_SIZE):
                self.image[base: base + PAGE_SIZE] = blank
        self.usable = size // PAGE_SIZE - 1  # the last page stays free
        # ESP-IDF's limit on one blob: (pages - 1) chunks, at most 127 (chunk start 0 or 0x80)
        self.max_blob = min(size // PAGE_SIZE - 1, 127) * CHUNK_MAX
        self.page = -1
        self.entry = 0
        self.new_page()

    def new_page(self):
        if self.page + 1 >= self.usable:
            raise _error(NOT_ENOUGH_SPACE)
        self.page += 1
        self.entry = 0
        if self.image is None:
            return
        if self.page > 0:
            struct.pack_into("<I", self.image, (self.page - 1) * PAGE_SIZE, FULL)  # not covered by the CRC
        base = self.page * PAGE_SIZE
        struct.pack_into("<IIB", self.image, base, ACTIVE, self.page, VERSION2)
        struct.pack_into("<I", self.image, base + 28, _crc(bytes(self.image[base + 4: base + 28])))

    def put(self, data, count):
        """Write data over count entries from the next free one, marking them written."""
        if self.image is None:
            self.entry += count
            return
        base = self.page * PAGE_SIZE
        start = base + _FIRST_ENTRY + self.entry * ENTRY_SIZE
        self.image[start: start + len(data)] = data
        for index in range(self.entry, self.entry + count):
            self.image[base + _BITMAP + index // 4] &= ~(1 << ((index % 4) * 2)) & 0xFF
        self.entry += count

    def item(self, ns, kind, span, chunk, key, data8):
        if self.image is None:
            self.entry += 1
            return
        entry = bytearray(b"\xff" * ENTRY_SIZE)
        entry[0] = ns
        entry[1] = kind
        entry[2] = span
        entry[3] = chunk
        entry[8:24] = key + b"\x00" * (16 - len(key))
        entry[24:32] = data8
        struct.pack_into("<I", entry, 4, _item_crc(entry))
        self.put(entry, 1)

    def primitive(self, ns, kind, key, data8):
        if self.entry >= ENTRY_COUNT:
            self.new_page()
        self.item(ns, kind, 1, _CHUNK_ANY, key, data8)

    def string(self, ns, key, data):
        count = (len(data) + ENTRY_SIZE - 1) // ENTRY_SIZE
        if len(data) > CHUNK_MAX:
            raise _error(VALUE_TOO_LONG)
        if self.entry + count + 1 >= ENTRY_COUNT:  # the generator's test, ">=" included
            self.new_page()
            if count + 1 >= ENTRY_COUNT:
                raise _error(VALUE_TOO_LONG)
        self.item(ns, _SZ, count + 1, _CHUNK_ANY, key, struct.pack("<HHI", len(data), 0xFFFF, _crc(data)))
        self.put(data, count)

    def blob(self, ns, key, data):
        if len(data) > self.max_blob:
            raise _error(VALUE_TOO_LONG)
        if self.entry >= ENTRY_COUNT:
            self.new_page()
        offset = 0
        chunks = 0
        while True:
            tailroom = (ENTRY_COUNT - self.entry - 1) * ENTRY_SIZE
            size = min(tailroom, len(data) - offset)
            count = (size + ENTRY_SIZE - 1) // ENTRY_SIZE
            if self.image is None:
                self.entry += 1 + count
            else:
                part = data[offset: offset + size]
                self.item(ns, _BLOB_DATA, count + 1, chunks, key, struct.pack("<HHI", size, 0xFFFF, _crc(part)))
                self.put(part, count)
            chunks += 1
            offset += size
            if offset < len(data) or tailroom - size < ENTRY_SIZE:
                self.new_page()
            if offset == len(data):
                self.item(ns, _BLOB_IDX, 1, _CHUNK_ANY, key, struct.pack("<IBBBB", len(data), chunks, 0, 0xFF, 0xFF))
                return


def _pairs(keys):
    return list(keys.items()) if hasattr(keys, "items") else keys


def _key_bytes(key):
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) > MAX_KEY:
        raise _error(KEY_TOO_LONG)
    return raw


def _data8(kind, value):
    if kind in _TYPE_CODES:
        code = _TYPE_CODES[kind]
        fmt = _PRIMITIVES[code][1]
        bits = struct.calcsize(fmt) * 8
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind[0] == "i" else (0, (1 << bits) - 1)
        if not isinstance(value, int) or not low <= value <= high:
            raise ValueError("%s value out of range: %r" % (kind, value))
        packed = struct.pack(fmt, value)
        return code, packed + b"\xff" * (8 - len(packed))
    if len(kind) == 4 and kind[:2] == "0x" and len(value) == 8:
        return int(kind, 16), bytes(value)
    raise ValueError("unknown NVS item type %r" % (kind,))


def build(entries, size=DEFAULT_SIZE):
    """The image of a size-byte partition holding entries (a bytearray: no copy on MicroPython's heap).

    entries: {namespace: {key: item}} or [(namespace, [(key, item), ...]), ...];
    namespaces get indexes 1, 2, ... in that order, each namespace item is
    followed by its keys' items. Items: ("i32", int), ("blob", bytes), ("str",
    str) and whatever read() returns.
    """
    return _write(entries, size, True).image


def check(entries, size=DEFAULT_SIZE):
    """Raise what build(entries, size) would raise, without making the image."""
    _write(entries, size, False)


def _write(entries, size, write):
    out = _Writer(size, write)
    namespaces = _pairs(entries)
    if len(namespaces) > 254:
        raise _error(NOT_ENOUGH_SPACE)
    for index, (namespace, keys) in enumerate(namespaces):
        ns = index + 1
        out.primitive(0, _U8, _key_bytes(namespace), bytes([ns]) + b"\xff" * 7)
        for key, item in _pairs(keys):
            raw = _key_bytes(key)
            kind, value = item
            if kind == "blob":
                out.blob(ns, raw, bytes(value))
            elif kind == "str":
                out.string(ns, raw, (value.encode() if isinstance(value, str) else bytes(value)) + b"\x00")
            else:
                code, data8 = _data8(kind, value)
                out.primitive(ns, code, raw, data8)
    return out
