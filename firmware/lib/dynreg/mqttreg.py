"""Registration over MQTT, shared by UCloud, Protco, Aliyun and ThingsBoard: a request/reply exchange in two
round trips (exchange()), or a reply the broker pushes after CONNACK (wait(), Aliyun).

Round trip 1 is CONNECT/CONNACK (mqtt.login). Round trip 2 sends SUBSCRIBE and PUBLISH in one
write (a broker handles one connection's packets in order, so the subscription exists before the
request is processed) and reads, bounded in time and size, until the reply that carries the
request's id arrives; other messages are ignored. The registration boot never imports umqtt.simple.
"""

import binascii
import json
import os
import time

from micropython import const

from dynreg import DynregError, log, mqtt

MAX_PACKET = const(1024)  # bytes of one MQTT packet the device accepts during registration


def reply(kind, body, topic):
    """The JSON object in a PUBLISH on `topic` (bytes), or None for any other packet or payload."""
    if kind & 0xF0 != 0x30 or len(body) < 2:
        return None
    n = body[0] << 8 | body[1]
    if body[2:2 + n] != topic:
        log("ignoring a message on another topic")
        return None
    try:
        r = json.loads(body[2 + n + (2 if kind & 6 else 0):])
    except (ValueError, RuntimeError):  # RuntimeError: CPython's RecursionError on deep nesting
        r = None
    if not isinstance(r, dict):
        log("ignoring a reply that is not a JSON object")
        return None
    return r


def exchange(s, topic, reply_topic, id_key, request, until, timeout_ms=5000):
    """On the logged-in (non-blocking) stream `s`: subscribe to `reply_topic`, publish the dict `request`
    on `topic` with a fresh random id under `id_key`, and return the first reply carrying that id (with
    id_key None, as ThingsBoard's request has no id: the first reply on `reply_topic`) (wait()); closes `s`
    either way."""
    rid = None
    if id_key:
        rid = request[id_key] = binascii.hexlify(os.urandom(8)).decode()
    try:
        request = mqtt.packet(0x30, mqtt.string(topic) + json.dumps(request).encode())
    except BaseException:
        s.close()
        raise
    # One write for both: separate small writes would wait for TCP ACKs (Nagle), costing round trips.
    return wait(s, reply_topic, until, timeout_ms, id_key, rid, mqtt.subscribe(1, (reply_topic,)) + request)


def wait(s, reply_topic, until, timeout_ms=5000, id_key=None, rid=None, send=None):
    """Write `send` (bytes) if given, then read `s` until a JSON object arrives on `reply_topic` (with
    `id_key`: one carrying `rid`) and return it; a reply the broker pushes unasked needs no `send`.
    Raises DynregError after timeout_ms, or at ticks_ms `until` if sooner, however slowly the broker
    sends; closes `s` either way."""
    want = reply_topic.encode()
    try:
        if send:
            s.setblocking(True)  # writes whole; reads stay non-blocking, under the deadline
            s.write(send)
            s.setblocking(False)
            send = None
        ms = min(timeout_ms, time.ticks_diff(until, time.ticks_ms()))
        end = time.ticks_add(time.ticks_ms(), ms)
        while True:
            try:
                kind, body = mqtt.read(s, MAX_PACKET, None, end)
            except DynregError:
                if time.ticks_diff(end, time.ticks_ms()) <= 0:
                    raise DynregError("no registration reply within %d ms" % ms)
                raise
            if kind == 0x90 and body[-1:] == b"\x80":
                raise DynregError("the broker refused the subscription to %s" % reply_topic)
            r = reply(kind, body, want)
            if r is not None:
                if id_key is None or r.get(id_key) == rid:
                    return r
                log("ignoring a reply for another request")
    finally:
        mqtt.disconnect(s)
