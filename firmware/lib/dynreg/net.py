"""Network helpers both boots use: Wi-Fi join, the clock, TLS that verifies the server, sockets."""

import gc
import time

import usocket as socket  # the u-name: under CPython the sim board maps it to MicroPython semantics

from dynreg import ConfigError, DynregError, log

# Ports whose epoch is 2000 (older ESP32 builds) need this to produce Unix time.
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0
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


def open_socket(host, port, ctx=None, timeout=10):
    """A connected stream to host:port, TLS-wrapped with `ctx` (checking `host`) unless ctx is None."""
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
    s = socket.socket()
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
            gc.collect()  # the TLS handshake needs large contiguous buffers
            s = ctx.wrap_socket(s, server_hostname=host)
    except BaseException:
        s.close()
        raise
    return s
