"""The first packet of an MQTT connection, read by the emulator before amqtt sees it.

The broker reads it itself so that it can (1) bound it in time and size (a connection that sends
no CONNECT is closed: amqtt would wait forever), (2) accept MQTT 3.1 ("MQIsdp", level 3, the
official Tencent Python SDK's default) as the clouds do although amqtt 0.12 speaks only 3.1.1
("MQTT", level 4): a 3.1 CONNECT is the same packet under another protocol name and level, so it
is handed on rewritten as 3.1.1, and (3) know the client id of every open connection.
"""

from amqtt.adapters import ReaderAdapter

CONNECT = 0x10
MAX_CONNECT = 64 * 1024  # client id, username, password and will together; ours are far smaller
MQTT31 = b"\x00\x06MQIsdp\x03"
MQTT311 = b"\x00\x04MQTT\x04"


async def read_connect(reader):
    """The CONNECT's variable header and payload from an asyncio.StreamReader.

    Raises ValueError for anything else, asyncio.IncompleteReadError when the peer goes away."""
    if (await reader.readexactly(1))[0] != CONNECT:
        raise ValueError("first packet is not a CONNECT")
    length, shift = 0, 0
    for _ in range(4):
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    else:
        raise ValueError("CONNECT remaining length is longer than 4 bytes")
    if length > MAX_CONNECT:
        raise ValueError(f"CONNECT of {length} bytes (at most {MAX_CONNECT})")
    return await reader.readexactly(length)


def as_mqtt311(body):
    """The whole CONNECT packet as amqtt takes it: 3.1 becomes 3.1.1, anything else is left to amqtt."""
    if body.startswith(MQTT31):
        body = MQTT311 + body[len(MQTT31):]
    return bytes([CONNECT]) + _length(len(body)) + body


def client_id(body):
    """The client id of a CONNECT body ("" when the packet is too short to hold one)."""
    at = 2 + int.from_bytes(body[:2], "big") + 4  # protocol name, level, flags, keepalive
    size = int.from_bytes(body[at:at + 2], "big")
    return body[at + 2:at + 2 + size].decode("utf-8", "replace")


def _length(n):
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Replayed(ReaderAdapter):
    """A ReaderAdapter that yields `head` first, then what `inner` reads."""

    def __init__(self, head, inner):
        self._head = head
        self._inner = inner

    async def read(self, n=-1):
        if not self._head:
            return await self._inner.read(n)
        if n == -1 or n >= len(self._head):
            data, self._head = self._head, b""
            return data + (await self._inner.read(n - len(data)) if n > len(data) else b"")
        data, self._head = self._head[:n], self._head[n:]
        return data

    def feed_eof(self):
        self._inner.feed_eof()
