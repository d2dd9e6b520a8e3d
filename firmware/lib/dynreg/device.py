"""A device logged in to its platform and kept online: keepalive, reconnect in place, bounded reads, QoS 1.

Only the login boot imports this module. Every packet from the broker is read here by mqtt.read()
with the NVS max_msg limit and a deadline; umqtt.simple only writes QoS 0 publishes. A lost
connection (EOF, reset, timeout, no PINGRESP, a malformed or unexpected packet) is re-made inside
poll()/publish() with the stored identity and a fresh login signature, with the boot flow's capped,
jittered back-off; the application sees `online`, `on_state(online)` and one log line each way.
"""

import gc
import struct
import time

from micropython import const

from dynreg import ConfigError, DynregError, log, mqtt, net, shown
from dynreg.flow import backoff_ms

_TIMEOUT = const(10)  # s: a socket's timeout (connect, TLS, CONNACK, one write)
_IDLE = const(10)  # ms between looks at a quiet socket


class Device:
    """What `dynreg.connect()` returns; `client` is the umqtt.simple MQTTClient of the current connection."""

    def __init__(self, st, plat, name, ctx):
        self.st, self.plat, self.name, self.ctx = st, plat, name, ctx
        self.keepalive = st.int("keepalive_s", 60)
        lo, hi = plat.KEEPALIVE
        if not lo <= self.keepalive <= hi:
            raise ConfigError("NVS keepalive_s is %d; this platform allows %d..%d s" % (self.keepalive, lo, hi))
        self.max_msg = st.int("max_msg", 4096)
        self.ack_ms = st.int("ack_ms", 5000)
        self.retry = st.int("retry_ms", 2000), st.int("retry_max_ms", 300000)
        self.product = self.ident = self.client = None
        self.online = False
        self.seq = 0  # message counter for ids and client tokens
        self.mid = 0  # MQTT packet id of the last SUBSCRIBE / QoS 1 PUBLISH
        self.properties = {}  # properties the cloud has set (control / property_set)
        self.on_message = None  # user hook f(topic, msg) for messages the platform does not hand elsewhere
        self.on_state = None  # user hook f(online) when the connection is lost or made again
        self.reconnects = 0  # connections re-made in place since boot
        self._unacked = None  # [packet id, PUBLISH bytes, resent] of the QoS 1 message awaiting its PUBACK
        self._want = self._got = None
        self._tries = 0  # failed reconnects (or connections lost before their SUBACK) in a row
        self._ok = False  # the current connection had its SUBACK
        self._next = self._sent = self._ping = 0
        self.renew_at = None  # ticks_ms when the login's credentials expire: the platform's after_login sets it
        self._login()

    # ------------------------------------------------------------------ connection

    def _login(self):
        # The lost connection's client goes first: its SSL socket is one ~520-byte block, which the new
        # handshake needs again (Protco at 64 KiB could not reconnect while it held both).
        self.client = None
        gc.collect()
        self.client, self.product, self.ident = self.plat.login(self.st, self.name, self.ctx, self.keepalive)
        self.renew_at = None
        self._sent, self._ping = time.ticks_ms(), 0
        self.online, self._ok = True, False
        self.mid = self.mid % 65535 + 1
        topics = self.plat.subscriptions(self)
        self._suback = self.mid, len(topics)
        self._send(mqtt.subscribe(self.mid, topics))  # poll() takes the SUBACK
        if self._unacked and not self._unacked[2]:  # sent once more, as a duplicate (DUP flag)
            self._unacked[2] = True
            self._send(b"\x3a" + self._unacked[1][1:])
        self.plat.after_login(self)

    def _lost(self, why):
        """Close a broken connection; the next poll()/publish() makes it again, at once if it had worked
        (its SUBACK came), else after the back-off, so a broker that drops every login is not hammered."""
        try:
            self.client.sock.close()
        except Exception:  # noqa: it is broken already
            pass
        if not self._ok:
            self._tries += 1
        self._next = time.ticks_add(time.ticks_ms(), backoff_ms(self._tries, *self.retry) if self._tries else 0)
        if self.online:
            self.online = False
            log("mqtt: connection lost (%s); reconnecting" % shown(why, 96))
            if self.on_state:
                self.on_state(False)

    def _reconnect(self):
        """One attempt when the back-off allows; True when online again."""
        if time.ticks_diff(time.ticks_ms(), self._next) < 0:
            return False
        try:
            ssid = self.st.text("wifi_ssid")
            if ssid:  # a no-op while the board is still joined
                net.wifi_connect(ssid, self.st.text("wifi_pass", ""), self.st.int("wifi_timeout_ms", 20000))
            self._login()
        except ConfigError:
            raise
        except Exception as e:  # noqa: refused, unreachable, TLS...: keep the secret, back off
            self.online = False
            self._tries += 1
            wait = backoff_ms(self._tries, *self.retry)
            self._next = time.ticks_add(time.ticks_ms(), wait)
            log("mqtt: reconnect %d failed (%s); retrying in %d ms"
                % (self._tries, shown("%s: %s" % (type(e).__name__, e), 128), wait))
            return False
        if not self.online:  # lost again at once (after_login's publish)
            return False
        self.reconnects += 1
        log("mqtt: online again (reconnect %d)" % self.reconnects)
        if self.on_state:
            self.on_state(True)
        return True

    def _renew(self):
        """Log in again with fresh credentials before the current ones expire (renew_at): the application
        stays online; a failure is a lost connection (poll() re-makes it with the back-off)."""
        self._send(b"\xe0\x00")  # DISCONNECT: a clean end of the old session
        self.client.sock.close()
        self._login()
        log("mqtt: login renewed (its credentials were about to expire)")

    def _send(self, data, topic=None):
        """Write `data` whole (to `topic` as umqtt.simple's QoS 0 publish when given)."""
        s = self.client.sock
        s.setblocking(True)  # the unix port keeps the socket timeout; reads stay non-blocking
        try:
            if topic is None:
                s.write(data)
            else:
                self.client.publish(topic, data)
        finally:
            s.setblocking(False)
        self._sent = time.ticks_ms()

    # ------------------------------------------------------------------ reading

    def _keepalive(self):
        now = time.ticks_ms()
        if self.renew_at is not None and time.ticks_diff(now, self.renew_at) >= 0:
            self._renew()
            return
        if self._ping:
            if time.ticks_diff(now, self._ping) > min(self.keepalive, _TIMEOUT) * 1000:
                raise DynregError("no PINGRESP within %d s" % min(self.keepalive, _TIMEOUT))
        elif time.ticks_diff(now, self._sent) >= self.keepalive * 750:  # well inside the keepalive
            self._send(b"\xc0\x00")  # PINGREQ
            self._ping = time.ticks_ms()

    def _packet(self, until):
        """Read and act on one packet if one is arriving; None, or (topic, msg) of a PUBLISH to deliver."""
        s = self.client.sock
        head = s.read(1)
        if head is None:
            return False
        if not head:
            raise DynregError("the broker closed the connection")
        # The packet may take until the poll's end plus one socket timeout, however slowly it comes.
        now = time.ticks_ms()
        end = time.ticks_add(until if time.ticks_diff(until, now) > 0 else now, _TIMEOUT * 1000)
        first, body = mqtt.read(s, self.max_msg, head[0], end, True)
        kind = first & 0xF0
        if kind == 0x30:
            if first & 6 not in (0, 2):
                raise DynregError("QoS %d PUBLISH (only 0 and 1 are subscribed)" % (first >> 1 & 3))
            if body is None:
                return None  # oversized: skipped (and logged) by mqtt.read; a QoS 1 one goes unacknowledged
            n = body[0] << 8 | body[1] if len(body) > 1 else 0xFFFF
            at = 2 + n + (2 if first & 2 else 0)
            if at > len(body):
                raise DynregError("malformed PUBLISH")
            if first & 2:
                self._send(b"\x40\x02" + body[at - 2:at])  # PUBACK
            return body[2:2 + n], body[at:]
        if body is None or first not in (0x40, 0x90, 0xD0):
            raise DynregError("unexpected packet 0x%02x" % first)
        if first == 0xD0:
            if body:
                raise DynregError("malformed PINGRESP")
            self._ping = 0
        elif first == 0x40:
            if len(body) != 2:
                raise DynregError("malformed PUBACK")
            if self._unacked and struct.unpack("!H", body)[0] == self._unacked[0]:
                self._unacked = None
        else:
            mid, count = self._suback
            if len(body) != 2 + count or struct.unpack("!H", body[:2])[0] != mid:
                raise DynregError("malformed SUBACK")
            if b"\x80" in body[2:]:
                log("the broker refused a subscription")
            self._ok, self._tries = True, 0  # this connection works
        return None

    def _deliver(self, topic, msg):
        if self._want is not None and topic == self._want:
            self._got = msg
        elif self.plat.handle(self, topic, msg):
            pass
        elif self.on_message:
            self.on_message(topic, msg)
        else:
            log("message on %s (%d bytes)" % (shown(topic), len(msg)))

    def poll(self, timeout_ms, acked=False):
        """Handle incoming packets for timeout_ms (less when a wait_for() message arrives, or with `acked`
        the PUBACK awaited); keep the connection alive and re-make it when lost. Returns within timeout_ms
        plus one socket timeout (a reconnect attempt adds its own connection timeouts)."""
        until = time.ticks_add(time.ticks_ms(), timeout_ms)
        tried = False
        while self._got is None and not (acked and self._unacked is None):
            left = time.ticks_diff(until, time.ticks_ms())
            if not self.online:
                if left <= 0 and tried:
                    return
                tried = True
                if not self._reconnect():
                    wait = min(left, time.ticks_diff(self._next, time.ticks_ms()))
                    time.sleep_ms(wait if wait > 0 else _IDLE)
                continue
            try:
                self._keepalive()
                got = self._packet(until)
            except Exception as e:  # noqa: a broken or hostile connection is made again, never raised
                self._lost("%s: %s" % (type(e).__name__, e))
                continue
            if got:
                self._deliver(*got)
            elif got is False:
                if time.ticks_diff(until, time.ticks_ms()) <= 0:
                    return
                time.sleep_ms(_IDLE)

    def wait_for(self, topic, timeout_ms):
        """Handle incoming messages until one arrives on `topic`; return it, or None after timeout_ms."""
        self._want, self._got = topic.encode() if isinstance(topic, str) else topic, None
        try:
            self.poll(timeout_ms)
            return self._got
        finally:
            self._want = self._got = None

    # ------------------------------------------------------------------ writing

    def publish(self, topic, msg, qos=0):
        """Publish `msg` (bytes or str) at QoS 0 or 1; True when it went out (QoS 0) or the broker
        acknowledged it within NVS ack_ms (QoS 1). An unacknowledged QoS 1 message is sent again once,
        as a duplicate, after the next reconnect (a newer QoS 1 message takes its place)."""
        if qos:
            self.mid = self.mid % 65535 + 1
            if isinstance(msg, str):
                msg = msg.encode()
            self._unacked = [self.mid, mqtt.packet(0x32, mqtt.string(topic) + struct.pack("!H", self.mid) + msg), False]
        sent = False
        if not self.online:
            if not self._reconnect():
                return False  # a QoS 1 message goes out with the next reconnect
            sent = qos  # the reconnect sent it
        try:
            if qos and not sent:
                self._send(self._unacked[1])
            elif not qos:
                self._send(msg, topic)
        except Exception as e:  # noqa: as in poll(): the connection is made again
            self._lost("%s: %s" % (type(e).__name__, e))
            if not qos:
                return False  # a QoS 1 message goes out with the reconnect, inside the wait below
        if qos:
            self.poll(self.ack_ms, True)
            return self._unacked is None
        return True

    def report(self, props, qos=0):
        """Publish a dict of properties to the platform's telemetry topic; publish()'s result."""
        return self.plat.report(self, props, qos)

    def close(self):
        """Disconnect from the broker (no reconnect follows)."""
        if self.online:
            self.online = False
            try:
                self._send(b"\xe0\x00")  # DISCONNECT
            except Exception:  # noqa: closing a broken connection
                pass
        if self.client:  # None after a failed reconnect
            self.client.sock.close()
