"""Network helpers: Wi-Fi join, clock, TLS that verifies the server, a small HTTP client, MQTT clients."""

import gc
import struct
import time

import usocket as socket  # the u-name: under CPython the sim board maps it to MicroPython semantics

from dynreg import ConfigError, DynregError, log

# Ports whose epoch is 2000 (older ESP32 builds) need this to produce Unix time.
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0
_offset = 0  # cloud time minus local time, learnt after login (seconds)

MAX_HEADER = 2048  # bytes of HTTP status line + headers the device accepts
MAX_BODY = 4096  # bytes of HTTP body the device accepts


def unix_time():
    """Seconds since 1970, corrected by the last cloud time sync."""
    return int(time.time()) + _EPOCH + _offset


def correct_clock(cloud_time):
    """Take `cloud_time` (Unix seconds) as the truth from now on; return the correction in seconds."""
    global _offset
    _offset += cloud_time - unix_time()
    return _offset


def random_bytes(n):
    """n bytes from the hardware RNG."""
    import os

    return os.urandom(n)


def wifi_connect(ssid, password, timeout_ms=20000):
    """Join `ssid` (no-op when already connected); raise DynregError on a bad password, no AP, or timeout."""
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wlan.isconnected():
        return wlan
    wlan.connect(ssid, password)
    t0 = time.ticks_ms()
    while not wlan.isconnected():
        status = wlan.status()
        if status == network.STAT_WRONG_PASSWORD:
            raise DynregError("wifi: wrong password for %r" % ssid)
        if status == network.STAT_NO_AP_FOUND:
            raise DynregError("wifi: no access point %r in range" % ssid)
        if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
            wlan.disconnect()
            raise DynregError("wifi: no connection to %r after %d ms" % (ssid, timeout_ms))
        time.sleep_ms(100)
    log("wifi: joined %r" % ssid)
    return wlan


def set_clock():
    """Set the RTC by NTP; a failure is fatal only while the clock is obviously unset."""
    try:
        import ntptime

        ntptime.settime()
    except (ImportError, OSError) as e:
        if time.gmtime(unix_time() - _EPOCH)[0] < 2024:
            raise DynregError("time: NTP failed (%r) and the clock is not set" % e)
        log("time: NTP failed (%r); keeping the current clock" % e)
    t = time.gmtime(unix_time() - _EPOCH)
    log("time: %04d-%02d-%02d %02d:%02d:%02d UTC" % t[:6])


def tls_context(ca, cert=None, key=None):
    """An SSLContext that verifies the server against `ca` (DER); with cert/key (DER) as client credentials."""
    import ssl

    if not ca:
        raise ConfigError("TLS needs the CA certificate in NVS key 'ca' (or set tls=0 for plain TCP)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def open_socket(host, port, ctx=None, timeout=10):
    """A connected stream to host:port, TLS-wrapped with `ctx` (checking `host`) unless ctx is None."""
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
    s = socket.socket()
    try:
        s.settimeout(timeout)
        try:
            # umqtt.simple and mbedTLS write small pieces; with Nagle each waits for the peer's ACK.
            s.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1)
        except (OSError, TypeError, ValueError):
            pass  # a stack without the option still works, only slower
        s.connect(addr)
        if ctx:
            gc.collect()  # the TLS handshake needs large contiguous buffers
            s = ctx.wrap_socket(s, server_hostname=host)
    except BaseException:
        s.close()
        raise
    return s


def http_post(host, port, path, headers, body, ctx=None, timeout=10):
    """POST `body` (bytes) and return (status, reply body bytes); reads at most MAX_HEADER + MAX_BODY bytes."""
    s = open_socket(host, port, ctx, timeout)
    try:
        default = 443 if ctx else 80
        req = "POST %s HTTP/1.0\r\nHost: %s%s\r\nContent-Length: %d\r\n" % (
            path, host, "" if port == default else ":%d" % port, len(body))
        for name, value in headers:
            req += "%s: %s\r\n" % (name, value)
        s.write(req.encode() + b"\r\n" + body)
        req = None
        return _read_reply(s)
    finally:
        s.close()


def _read_reply(s):
    line = s.readline(MAX_HEADER)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise DynregError("http: malformed status line")
    status = int(parts[1])
    length = None
    budget = MAX_HEADER - len(line)
    while True:
        line = s.readline(budget + 1)
        budget -= len(line)
        if budget < 0 or not line.endswith(b"\n"):
            raise DynregError("http: reply headers too long or cut short")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            value = value.strip()
            if not value.isdigit():
                raise DynregError("http: bad Content-Length")
            length = int(value)
    if length is not None and length > MAX_BODY:
        raise DynregError("http: reply body of %d bytes exceeds %d" % (length, MAX_BODY))
    body = s.read(MAX_BODY + 1 if length is None else length)
    if len(body) > MAX_BODY or (length is not None and len(body) != length):
        raise DynregError("http: reply body too long or cut short")
    return status, body


def mqtt_string(data):
    """An MQTT length-prefixed string field from bytes or str."""
    if isinstance(data, str):
        data = data.encode()
    return struct.pack("!H", len(data)) + data


def mqtt_packet(first, body):
    """An MQTT packet: the first header byte, the remaining length (varint), the body."""
    n, head = len(body), bytearray((first,))
    while n > 0x7F:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return head + body


def mqtt_read(s, limit, first=None):
    """Read one MQTT packet -> (first header byte, body); `first` when the caller read that byte already.

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
        if not b:
            raise DynregError("mqtt: malformed packet from the broker")
        n |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            break
        shift += 7
        if shift > 21:  # a remaining length has at most four bytes
            raise DynregError("mqtt: malformed packet from the broker")
    if n > limit:
        raise DynregError("mqtt: a %d-byte packet from the broker exceeds the %d-byte limit" % (n, limit))
    body = s.read(n) if n else b""
    if len(body) != n:
        raise DynregError("mqtt: packet from the broker cut short")
    return first, body


def mqtt_subscribe(pid, topics):
    """The bytes of one SUBSCRIBE (QoS 0) for all `topics`; the caller writes them (with more, if it likes)."""
    body = struct.pack("!H", pid)
    for t in topics:
        body += mqtt_string(t) + b"\x00"
    return mqtt_packet(0x82, body)


def mqtt_open(client_id, host, port, user, password, tls, ca, cert=None, key=None, keepalive=60, timeout=10):
    """Connect (TLS verified against `ca` unless `tls` is false), log in, and return the open stream.

    dynreg sends CONNECT itself so that the connection, the TLS handshake and the CONNACK wait are
    bounded by `timeout`, and TLS is verified the same way whichever umqtt.simple release is
    installed (PyPI 1.3.4 wraps with `ssl_params`, firmware >= 1.23 with an SSLContext).
    """
    s = open_socket(host, port, tls_context(ca, cert, key) if tls else None, timeout)
    try:
        flags = 0x02 | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
        body = b"\x00\x04MQTT\x04" + bytes((flags, keepalive >> 8, keepalive & 0xFF)) + mqtt_string(client_id)
        if user is not None:
            body += mqtt_string(user)
        if password is not None:
            body += mqtt_string(password)
        s.write(mqtt_packet(0x10, body))
        body = password = None
        ack = s.read(4)
        if len(ack) != 4 or ack[0] != 0x20 or ack[1] != 2:
            raise DynregError("mqtt: no CONNACK from the broker")
        if ack[3]:
            raise DynregError("mqtt: broker refused the login (CONNACK return code %d)" % ack[3])
    except BaseException:
        s.close()
        raise
    return s


def mqtt_connect(client_id, host, port, user, password, tls, ca, cert=None, key=None, keepalive=60):
    """Log in (see mqtt_open) and return an umqtt.simple MQTTClient on the connection for everything after."""
    from umqtt.simple import MQTTClient

    s = mqtt_open(client_id, host, port, user, password, tls, ca, cert, key, keepalive)
    c = MQTTClient(client_id, host, port, keepalive=keepalive)
    c.sock = s
    return c
