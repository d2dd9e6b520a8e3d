"""MQTT 3.1.1 on a socket: the login and the packets dynreg writes and reads itself.

dynreg sends CONNECT itself so that the connection, the TLS handshake and the CONNACK wait are
bounded by a timeout, and TLS is verified the same way whichever umqtt.simple release is installed
(PyPI 1.3.4 wraps with `ssl_params`, firmware >= 1.23 with an SSLContext). After login, umqtt.simple
writes QoS 0 publishes; dynreg.device reads every packet itself, bounded (read()).
"""

import gc
import struct

from micropython import const

from dynreg import DynregError, log, net

_CHUNK = const(256)  # bytes of an oversized packet read at a time while it is skipped


def string(data):
    """An MQTT length-prefixed string field from bytes or str."""
    if isinstance(data, str):
        data = data.encode()
    return struct.pack("!H", len(data)) + data


def packet(first, body):
    """An MQTT packet: the first header byte, the remaining length (varint), the body."""
    n, head = len(body), bytearray((first,))
    while n > 0x7F:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return head + body


def subscribe(pid, topics):
    """The bytes of one SUBSCRIBE (QoS 0) for all `topics`; the caller writes them (with more, if it likes)."""
    body = struct.pack("!H", pid)
    for t in topics:
        body += string(t) + b"\x00"
    return packet(0x82, body)


def read(s, limit, first=None, until=None, skip=False):
    """Read one packet -> (first header byte, body); `first` when the caller read that byte already.

    A remaining length over `limit` is refused before anything more is read, so a hostile peer
    cannot make the device allocate what it announces; with `skip` its body is read and dropped in
    small pieces instead, and the body returned is None. `until` (ticks_ms) bounds the whole packet
    on a non-blocking stream (net.read).
    """
    if first is None:
        head = net.read(s, 1, until, "mqtt")
        if not head:
            raise DynregError("mqtt: the broker closed the connection")
        first = head[0]
    n = shift = 0
    while True:
        b = net.read(s, 1, until, "mqtt")
        if not b or shift > 21:  # a remaining length has at most four bytes
            raise DynregError("mqtt: malformed packet")
        n |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            break
        shift += 7
    if n > limit and skip:
        left = n
        while left:
            got = len(net.read(s, min(left, _CHUNK), until, "mqtt"))
            if not got:
                raise DynregError("mqtt: packet cut short")
            left -= got
        log("mqtt: skipped a %d-byte packet (type 0x%02x) over the %d-byte limit" % (n, first, limit))
        return first, None
    if n > limit:
        raise DynregError("mqtt: %d-byte packet exceeds the %d-byte limit" % (n, limit))
    body = net.read(s, n, until, "mqtt") if n else b""
    if len(body) != n:
        raise DynregError("mqtt: packet cut short")
    return first, body


def login(ctx, host, port, client_id, user, password, keepalive=60, timeout=10):
    """Connect to host:port over TLS with `ctx` (plain TCP when None), log in with a clean session and
    `keepalive` seconds (no username/password field when None); return the stream, non-blocking (read with net.read and a deadline)."""
    log("mqtt: connecting to mqtt%s://%s:%d as %s" % ("" if ctx is None else "s", host, port, client_id))
    s = net.open_socket(host, port, ctx, timeout, "mqtt")
    try:
        # CONNECT: protocol "MQTT" level 4 (3.1.1); flags user, password (each left out when None: a
        # client certificate is the credential), clean session; keepalive
        s.write(packet(0x10, b"\x00\x04MQTT\x04" + bytes((0x02 | (0 if user is None else 0x80)
                                                            | (0 if password is None else 0x40),))
                       + struct.pack("!H", keepalive) + string(client_id)
                       + (b"" if user is None else string(user)) + (b"" if password is None else string(password))))
        password = None
        s.setblocking(False)
        try:
            ack = read(s, 2, None, net.deadline(timeout * 1000))
        except (OSError, DynregError):
            ack = None
        if not ack or ack[0] != 0x20 or len(ack[1]) != 2:
            raise DynregError("mqtt: no CONNACK from %s:%d" % (host, port))
        if ack[1][1]:
            raise DynregError("mqtt: broker refused the login (CONNACK return code %d) at %s:%d"
                              % (ack[1][1], host, port))
    except BaseException:
        s.close()
        raise
    return s


def disconnect(s):
    """Send DISCONNECT on a registration stream if it still takes it, and close it."""
    try:
        s.setblocking(True)
        s.write(b"\xe0\x00")
    except OSError:
        pass  # the registration connection is done with either way
    s.close()


def connect(ctx, host, port, client_id, user, password, keepalive):
    """Log in (see login()) and return an umqtt.simple MQTTClient on the connection."""
    gc.collect()  # as flow does before the login boot's imports: what umqtt.simple keeps packs low
    from umqtt.simple import MQTTClient

    c = MQTTClient(client_id, host, port, keepalive=keepalive)
    c.sock = login(ctx, host, port, client_id, user, password, keepalive)
    return c
