"""Registration over MQTT, shared by UCloud and Protco: a request/reply exchange in two round trips.

Round trip 1 is CONNECT/CONNACK. Round trip 2 sends SUBSCRIBE and PUBLISH back to back (a broker
handles one connection's packets in order, so the subscription exists before the request is
processed) and waits, bounded, for the reply that matches the request id; other replies are ignored.
"""

import json
import struct
import time

from dynreg import DynregError, log, net


def _subscribe_and_publish(client, reply_topic, request_topic, request):
    # One write for both packets: umqtt.simple's subscribe() would block for SUBACK, and separate
    # small writes would wait for TCP ACKs (Nagle), each costing a round trip.
    client.pid += 1
    sub = struct.pack("!H", client.pid) + net.mqtt_string(reply_topic) + b"\x00"
    pub = net.mqtt_string(request_topic) + (request.encode() if isinstance(request, str) else request)
    client.sock.write(net.mqtt_packet(0x82, sub) + net.mqtt_packet(0x30, pub))


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
        _subscribe_and_publish(client, reply_topic, request_topic, request)
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
