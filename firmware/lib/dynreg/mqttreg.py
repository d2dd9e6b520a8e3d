"""Registration over MQTT, shared by UCloud and Protco: a request/reply exchange in two round trips.

Round trip 1 is CONNECT/CONNACK. Round trip 2 sends SUBSCRIBE and PUBLISH back to back (a broker
handles one connection's packets in order, so the subscription exists before the request is
processed) and waits, bounded, for the reply that matches the request id; other replies are ignored.
"""

import json
import struct
import time

from dynreg import DynregError, log


def _subscribe_nowait(client, topic):
    # umqtt.simple's subscribe() blocks for SUBACK, which would cost a round trip.
    t = topic.encode()
    if len(t) > 120:
        raise DynregError("topic too long for a one-byte SUBSCRIBE length")
    client.pid += 1
    client.sock.write(struct.pack("!BBHH", 0x82, 5 + len(t), client.pid, len(t)) + t + b"\x00")


def exchange(client, reply_topic, request_topic, request, match, timeout_ms=5000):
    """Subscribe to `reply_topic`, publish `request`, and return the first JSON reply for which
    match(reply) is true; raise DynregError after timeout_ms. The client is closed afterwards."""
    found = []

    def on_msg(topic, msg):
        if topic != reply_topic.encode():
            return
        try:
            reply = json.loads(msg)
        except ValueError:
            log("ignoring a reply that is not JSON")
            return
        if isinstance(reply, dict) and match(reply):
            found.append(reply)
        else:
            log("ignoring a reply for another request")

    client.set_callback(on_msg)
    try:
        _subscribe_nowait(client, reply_topic)
        client.publish(request_topic, request)
        t0 = time.ticks_ms()
        while not found:
            if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
                raise DynregError("no registration reply within %d ms" % timeout_ms)
            op = client.check_msg()
            if op == 0x90:  # SUBACK: umqtt leaves its last 4 bytes to the caller
                if client.sock.read(4)[3] == 0x80:
                    raise DynregError("broker refused the subscription to %s" % reply_topic)
            elif op is None:
                time.sleep_ms(20)
        return found[0]
    finally:
        try:
            client.disconnect()
        except OSError:
            pass  # the registration connection is done with either way
