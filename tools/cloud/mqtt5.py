"""MQTT 5 clients on the emulator's MQTT 3.1.1 broker: each packet rewritten both ways.

amqtt 0.12 speaks 3.1.1 only, but ThingsBoard's official Python SDK (tb-mqtt-client) logs its device
client in with MQTT 5, as the real server allows. A 5.0 packet is its 3.1.1 form plus properties
(and reason codes), so the connection is bridged: from the client, properties are dropped and
subscription options cut to the QoS bits; to the client, empty properties are added and CONNACK
return codes become the matching reason codes. Enhanced authentication (AUTH) is not supported.
"""

from amqtt.adapters import ReaderAdapter, WriterAdapter

from .connect import _length as varint

MQTT5 = b"\x00\x04MQTT\x05"
# CONNACK: 3.1.1 return code -> 5.0 reason code (MQTT 5.0 section 3.2.2.2)
REASONS = {0: 0x00, 1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


def _varint_at(data, at):
    """(value, position after it) of the variable byte integer at `at`."""
    n = shift = 0
    for _ in range(4):
        b = data[at]
        at += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, at
    raise ValueError("MQTT 5: malformed variable byte integer")


def _skip_properties(data, at):
    n, at = _varint_at(data, at)
    return at + n


def connect_as_311(body):
    """A 5.0 CONNECT body (after the fixed header) as 3.1.1: no properties, will properties dropped.
    Raises ValueError when it is malformed."""
    try:
        return _connect_as_311(body)
    except IndexError:
        raise ValueError("MQTT 5 CONNECT cut short") from None


def _connect_as_311(body):
    flags, at = body[7], 10  # protocol name, level, flags, keepalive
    out = bytearray(b"\x00\x04MQTT\x04" + body[7:10])
    at = _skip_properties(body, at)
    n = int.from_bytes(body[at:at + 2], "big")  # client id
    out += body[at:at + 2 + n]
    at += 2 + n
    if flags & 0x04:  # will: properties, then topic and payload
        at = _skip_properties(body, at)
    out += body[at:]
    return bytes(out)


def _packet(first, body):
    return bytes((first,)) + varint(len(body)) + body


def from_client(first, body, unsubscribes):
    """A 5.0 client packet (after CONNECT) as 3.1.1 bytes."""
    kind = first >> 4
    if kind == 3:  # PUBLISH: topic, packet id at QoS > 0, properties, payload
        n = int.from_bytes(body[:2], "big")
        at = 2 + n + (2 if first & 0x06 else 0)
        return _packet(first, body[:at] + body[_skip_properties(body, at):])
    if kind in (4, 5, 6, 7):  # PUBACK, PUBREC, PUBREL, PUBCOMP: a reason code and properties may follow
        return _packet(first, body[:2])
    if kind in (8, 10):  # SUBSCRIBE, UNSUBSCRIBE: packet id, properties, topic filters
        rest, out = body[_skip_properties(body, 2):], bytearray(body[:2])
        filters = 0
        while rest:
            n = int.from_bytes(rest[:2], "big")
            out += rest[:2 + n]
            if kind == 8:
                out.append(rest[2 + n] & 0x03)  # QoS only: no-local, retain-as-published, retain handling dropped
            rest = rest[2 + n + (1 if kind == 8 else 0):]
            filters += 1
        if kind == 10:
            unsubscribes.append(filters)
        return _packet(first, bytes(out))
    if kind == 14:  # DISCONNECT: reason code and properties dropped
        return b"\xe0\x00"
    if kind == 15:
        raise ValueError("MQTT 5 AUTH is not supported")
    return _packet(first, body)  # PINGREQ


def to_client(first, body, unsubscribes):
    """A 3.1.1 broker packet as 5.0 bytes."""
    kind = first >> 4
    if kind == 2:  # CONNACK: flags, reason code, properties
        return _packet(first, body[:1] + bytes((REASONS.get(body[1], 0x80),)) + b"\x00")
    if kind == 3:
        n = int.from_bytes(body[:2], "big")
        at = 2 + n + (2 if first & 0x06 else 0)
        return _packet(first, body[:at] + b"\x00" + body[at:])
    if kind == 9:  # SUBACK: the 3.1.1 return codes are 5.0 reason codes
        return _packet(first, body[:2] + b"\x00" + body[2:])
    if kind == 11:  # UNSUBACK: one "success" per filter of the UNSUBSCRIBE
        count = unsubscribes.pop(0) if unsubscribes else 1
        return _packet(first, body[:2] + b"\x00" + b"\x00" * count)
    return _packet(first, body)  # PUBACK .. PUBCOMP (length 2 is valid 5.0), PINGRESP


class Reader(ReaderAdapter):
    """What amqtt reads from a 5.0 client: its packets rewritten as 3.1.1 (readexactly semantics)."""

    def __init__(self, head, inner, unsubscribes):
        self._buf = bytearray(head)  # the CONNECT, already rewritten
        self._inner = inner
        self._unsubscribes = unsubscribes

    async def read(self, n=-1):
        while n < 0 or len(self._buf) < n:
            first = await self._inner.read(1)
            length, shift = 0, 0
            for _ in range(4):
                b = (await self._inner.read(1))[0]
                length |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            body = await self._inner.read(length) if length else b""
            self._buf += from_client(first[0], body, self._unsubscribes)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def feed_eof(self):
        self._inner.feed_eof()


class Writer(WriterAdapter):
    """What a 5.0 client receives: amqtt's 3.1.1 packets rewritten (whole packets only)."""

    def __init__(self, inner, unsubscribes):
        self._inner = inner
        self._buf = bytearray()
        self._unsubscribes = unsubscribes

    def write(self, data):
        self._buf += data
        while len(self._buf) >= 2:
            try:
                length, at = _varint_at(self._buf, 1)
            except IndexError:
                return  # the length itself is not all there yet
            if len(self._buf) < at + length:
                return
            first, body = self._buf[0], bytes(self._buf[at:at + length])
            del self._buf[:at + length]
            self._inner.write(to_client(first, body, self._unsubscribes))

    async def drain(self):
        await self._inner.drain()

    def get_peer_info(self):
        return self._inner.get_peer_info()

    def get_ssl_info(self):
        return self._inner.get_ssl_info()

    async def close(self):
        await self._inner.close()

    def __getattr__(self, name):  # is_closed and whatever else amqtt asks the adapter
        return getattr(self._inner, name)
