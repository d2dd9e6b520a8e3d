"""Registration over MQTT, shared by UCloud and Protco: a request/reply exchange in two round trips.

Round trip 1 is CONNECT/CONNACK (net.mqtt_open). Round trip 2 sends SUBSCRIBE and PUBLISH in one
write (a broker handles one connection's packets in order, so the subscription exists before the
request is processed) and reads, bounded in time and size, until the reply that matches the
request id arrives; other messages are ignored. The registration boot never imports umqtt.simple.
"""

import json
import time

from dynreg import DynregError, log, net

MAX_PACKET = 1024  # bytes of one MQTT packet the device accepts during registration


def _reply(kind, body, topic):
    # The JSON payload of a PUBLISH on `topic`, or None for anything else.
    if kind & 0xF0 != 0x30 or len(body) < 2:
        return None
    n = body[0] << 8 | body[1]
    if body[2:2 + n] != topic:
        log("ignoring a message on another topic")
        return None
    try:
        reply = json.loads(body[2 + n + (2 if kind & 6 else 0):])
    except (ValueError, RuntimeError):  # RuntimeError: CPython's RecursionError on deep nesting
        log("ignoring a reply that is not JSON")
        return None
    return reply if isinstance(reply, dict) else None


def exchange(s, reply_topic, request_topic, request, match, timeout_ms=5000):
    """On the logged-in stream `s`: subscribe to `reply_topic`, publish `request`, and return the first
    JSON reply for which match(reply) is true. Raises DynregError after timeout_ms; closes `s`."""
    want = reply_topic.encode()
    try:
        # One write for both: separate small writes would wait for TCP ACKs (Nagle), costing round trips.
        s.write(net.mqtt_subscribe(1, (reply_topic,))
                + net.mqtt_packet(0x30, net.mqtt_string(request_topic) + request.encode()))
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            try:
                kind, body = net.mqtt_read(s, MAX_PACKET)
            except OSError:  # the socket's own timeout
                break
            if kind == 0x90 and body[-1:] == b"\x80":
                raise DynregError("the broker refused the subscription to %s" % reply_topic)
            reply = _reply(kind, body, want)
            if reply is None:
                continue
            if match(reply):
                return reply
            log("ignoring a reply for another request")
        raise DynregError("no registration reply within %d ms" % timeout_ms)
    finally:
        try:
            s.write(b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass  # the registration connection is done with either way
        s.close()
