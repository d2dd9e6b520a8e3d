"""Network helpers both boots use: Wi-Fi join, the clock, TLS that verifies the server, sockets."""

import gc
import time

import usocket as socket  # the u-name: under CPython the sim board maps it to MicroPython semantics

from micropython import const

from dynreg import ConfigError, DynregError, log, shown

# Ports whose epoch is 2000 (older ESP32 builds) need this to produce Unix time.
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0
_ETIMEDOUT = const(110)
_offset = 0  # cloud time minus local time, learnt after login (seconds)


def unix_time():
    """Seconds since 1970, corrected by the last cloud time sync."""
    return int(time.time()) + _EPOCH + _offset


def correct_clock(cloud_time):
    """Take `cloud_time` (Unix seconds) as the truth from now on; return the correction in seconds."""
    global _offset
    _offset += cloud_time - unix_time()
    return _offset


def wifi_connect(ssid, password, timeout_ms=20000):
    """Join `ssid` (no-op when already connected); raise DynregError on a bad password, no AP, or timeout."""
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if wlan.isconnected():
        return
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
    try:
        ctx.load_verify_locations(cadata=ca)
        if cert:
            ctx.load_cert_chain(cert, key)
    except (ValueError, OSError) as e:
        raise ConfigError("TLS: the CA (NVS 'ca') or client certificate/key is not valid DER (%s)" % e)
    return ctx


def deadline(ms):
    """The ticks_ms value `ms` milliseconds from now (for read())."""
    return time.ticks_add(time.ticks_ms(), ms)


def why(e):
    """One line naming what went wrong in a socket or TLS exception (MicroPython's TLS errors span lines)."""
    if isinstance(e, ValueError):  # mbedTLS's failed verification, one reason a line
        return "certificate verify failed: " + shown("; ".join(r for r in str(e).split("\n") if r), 120)
    if getattr(e, "errno", None) == _ETIMEDOUT:
        return "timed out"
    return shown(e, 96)


def open_socket(host, port, ctx=None, timeout=10, step="net"):
    """A connected stream to host:port, TLS-wrapped with `ctx` (checking `host`) unless ctx is None.

    Failures are one-line DynregErrors naming `step`, the stage (DNS, connect, TLS) and host:port.
    """
    try:
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
    except OSError as e:
        raise DynregError("%s: DNS lookup of %s failed (%s)" % (step, host, why(e)))
    s = socket.socket()
    stage = "connect to"
    try:
        s.settimeout(timeout)
        try:
            # IPPROTO_TCP, TCP_NODELAY (the same numbers in lwIP and Linux; the unix port lacks the names):
            # umqtt.simple and mbedTLS write small pieces, and with Nagle each waits for the peer's ACK.
            s.setsockopt(6, 1, 1)
        except OSError:
            pass  # a stack without the option still works, only slower
        s.connect(addr)
        if ctx:
            stage = "TLS handshake with"
            gc.collect()  # the TLS handshake needs large contiguous buffers
            s = ctx.wrap_socket(s, server_hostname=host)
    except (OSError, ValueError) as e:
        s.close()
        raise DynregError("%s: %s %s:%d failed: %s" % (step, stage, host, port, why(e)))
    except BaseException:
        s.close()
        raise
    return s


def read(s, n, until, step="net", idle_ms=10000):
    """n bytes of stream `s` (fewer only at EOF), by ticks_ms `until` however slowly they come, and with
    no gap over idle_ms (the socket timeout it replaces).

    `s` is non-blocking (read() gives None while nothing came), so one slow byte at a time cannot
    stretch the wait; `until` None waits as the stream does. DynregError naming `step` past either.
    """
    if until is None:
        return s.read(n)
    buf = b""
    last = time.ticks_ms()
    while len(buf) < n:
        d = s.read(n - len(buf))
        if d is None:
            now = time.ticks_ms()
            if time.ticks_diff(until, now) <= 0:
                raise DynregError("%s: no complete answer before the deadline" % step)
            if time.ticks_diff(now, last) > idle_ms:
                raise DynregError("%s: timed out (nothing for %d ms)" % (step, idle_ms))
            time.sleep_ms(5)
        elif not d:
            break
        else:
            buf += d
            last = time.ticks_ms()
    return buf
