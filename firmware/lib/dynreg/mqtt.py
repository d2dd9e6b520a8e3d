"""MQTT 3.1.1 on a socket: the login and the packets dynreg writes and reads itself.

dynreg sends CONNECT itself so that the connection, the TLS handshake and the CONNACK wait are
bounded by a timeout, and TLS is verified the same way whichever umqtt.simple release is installed
(PyPI 1.3.4 wraps with `ssl_params`, firmware >= 1.23 with an SSLContext). After login, umqtt.simple
takes the connection.
"""

import struct

from dynreg import DynregError, log, net


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


def read(s, limit, first=None):
    """Read one packet -> (first header byte, body); `first` when the caller read that byte already.

    A remaining length over `limit` is refused before anything more is read, so a hostile peer
    cannot make the device allocate what it announces.
    """
    if first is None:
        head = s.read(1)
        if not head:
            raise DynregError("mqtt: the broker closed the connection")
        first = head[0]
    n = shift = 0
    while True:
        b = s.read(1)
        if not b or shift > 21:  # a remaining length has at most four bytes
            raise DynregError("mqtt: malformed packet")
        n |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            break
        shift += 7
    if n > limit:
        raise DynregError("mqtt: %d-byte packet exceeds the %d-byte limit" % (n, limit))
    body = s.read(n) if n else b""
    if len(body) != n:
        raise DynregError("mqtt: packet cut short")
    return first, body


def login(st, ctx, host, client_id, user, password, timeout=10):
    """Connect to the broker NVS names (mqtt_host, mqtt_port; else `host`, port 8883, or 1883 without TLS),
    over TLS with `ctx` unless it is None; log in and return (stream, host, port)."""
    host = st.text("mqtt_host") or host
    port = st.int("mqtt_port", 1883 if ctx is None else 8883)
    log("mqtt: connecting to mqtt%s://%s:%d as %s" % ("" if ctx is None else "s", host, port, client_id))
    s = net.open_socket(host, port, ctx, timeout)
    try:
        # CONNECT: protocol "MQTT" level 4 (3.1.1); flags user, password, clean session; keepalive 60 s
        s.write(packet(0x10, b"\x00\x04MQTT\x04\xc2\x00\x3c" + string(client_id) + string(user) + string(password)))
        password = None
        ack = s.read(4)
        if len(ack) != 4 or ack[0] != 0x20 or ack[1] != 2:
            raise DynregError("mqtt: no CONNACK from the broker")
        if ack[3]:
            raise DynregError("mqtt: broker refused the login (CONNACK return code %d)" % ack[3])
    except BaseException:
        s.close()
        raise
    return s, host, port


def connect(st, ctx, host, client_id, user, password):
    """Log in (see login(); keepalive 60 s) and return an umqtt.simple MQTTClient on the connection."""
    from umqtt.simple import MQTTClient

    s, host, port = login(st, ctx, host, client_id, user, password)
    c = MQTTClient(client_id, host, port, keepalive=60)
    c.sock = s
    return c
