"""Azure IoT Hub Device Provisioning Service: registration with an enrollment group's symmetric key
over MQTT (docs/platforms/azure.md "Wire format").

Round trip 1 is CONNECT/CONNACK with a SAS token signed by the device key derived from the group
key; round trip 2 sends SUBSCRIBE $dps/registrations/res/# and the register PUT in one write; DPS
answers 202 with an operationId and retry-after, and each operation-status GET after that wait is
one more round trip, until the status is "assigned" or "failed". Imported by the registration boot
only; azure.py has the login.
"""

import binascii
import json
import os
import time

from micropython import const

from dynreg import ConfigError, DynregError, crypto, log, mqtt, net, shown
from dynreg.azure import sas, ttl
from dynreg.flow import broker

DPS = "global.azure-devices-provisioning.net"
_API = "api-version=2019-03-31"
_RES = b"$dps/registrations/res/"
_MAX_PACKET = const(2048)  # bytes: an assignment reply is about 600
_WAIT = const(2)  # s between polls when DPS names no retry-after (the Python SDK's default)


def check_id(regid):
    """Raise ConfigError unless `regid` is a DPS registration id: 1-128 of a-z 0-9 '-'."""
    if not 1 <= len(regid) <= 128:
        raise ConfigError("registration id %r must be 1 to 128 characters" % regid)
    for ch in regid:
        if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch == "-"):
            raise ConfigError("registration id %r has a character outside lower-case letters, digits and '-'"
                              % regid)


def device_key(group_key, regid):
    """The device's key: base64(HMAC-SHA256(base64-decoded enrollment group key, registration id))."""
    try:
        key = crypto.b64decode(group_key, "group key")
    except DynregError:
        raise ConfigError("NVS prod_secret (the enrollment group key) is not valid base64")
    return binascii.b2a_base64(crypto.hmac("sha256", key, regid))[:-1]


def parse_topic(topic):
    """(status, $rid (bytes), retry-after s or None) of a DPS reply topic (bytes), None for another topic.

    $dps/registrations/res/<status>/?$rid=<rid>[&retry-after=<s>]; a retry-after that is no whole
    number counts as absent."""
    if not topic.startswith(_RES):
        return None
    status, _, query = topic[len(_RES):].partition(b"/?")
    if not status or not status.isdigit() or len(status) > 3:
        return None
    rid = after = None
    for field in query.split(b"&"):
        k, _, v = field.partition(b"=")
        if k == b"$rid":
            rid = v
        elif k == b"retry-after" and v.isdigit() and len(v) <= 9:
            after = int(v)
    return int(status), rid, after


def _why(reply):
    """errorCode and message of a DPS error body, made safe to log."""
    return "errorCode %s: %s" % (shown(reply.get("errorCode"), 16), shown(reply.get("message"), 96))


def outcome(status, reply):
    """What a reply means: ("assigned", registrationState), ("wait", operationId), or a DynregError."""
    if status == 429 or status >= 500:  # throttled or busy: ask again after retry-after
        return "retry", None
    if status >= 300:
        raise DynregError("azure: registration refused: DPS %d %s" % (status, _why(reply)))
    state = reply.get("status")
    rs = reply.get("registrationState")
    if state == "assigned":
        if not isinstance(rs, dict) or not isinstance(rs.get("assignedHub"), str) \
                or not isinstance(rs.get("deviceId"), str) or not rs["assignedHub"] or not rs["deviceId"]:
            raise DynregError("azure: DPS assigned the device but named no assignedHub and deviceId")
        return "assigned", rs
    if state == "failed":
        rs = rs if isinstance(rs, dict) else {}
        raise DynregError("azure: registration failed: errorCode %s: %s"
                          % (shown(rs.get("errorCode"), 16), shown(rs.get("errorMessage"), 96)))
    op = reply.get("operationId")
    if not isinstance(op, str) or not op or len(op) > 128:
        raise DynregError("azure: DPS reply (status %s) holds no operationId" % shown(state, 16))
    return "wait", op


def _reply(s, rid, until):
    """The (status, retry-after, JSON object) of the reply to request `rid` (bytes), read by ticks_ms `until`."""
    while True:
        kind, body = mqtt.read(s, _MAX_PACKET, None, until)
        if kind == 0x90 and body[-1:] == b"\x80":
            raise DynregError("azure: DPS refused the subscription to $dps/registrations/res/#")
        if kind & 0xF0 != 0x30 or len(body) < 2:
            continue
        n = body[0] << 8 | body[1]
        got = parse_topic(body[2:2 + n])
        if got is None or got[1] != rid:
            log("ignoring a message that is no reply to request %s" % rid.decode())
            continue
        try:
            r = json.loads(body[2 + n + (2 if kind & 6 else 0):])
        except (ValueError, RuntimeError):  # RuntimeError: CPython's RecursionError on deep nesting
            r = None
        if not isinstance(r, dict):
            raise DynregError("azure: DPS reply %d is not a JSON object" % got[0])
        return got[0], got[2], r


def register(st, name, ctx):
    """Provision through DPS; return the NVS items (the device key, which is the device secret, last)."""
    scope = st.need("prod_id")
    check_id(name)
    key = device_key(st.secret("prod_secret"), name)
    until = net.deadline(st.int("reg_timeout_ms", 30000))  # the whole exchange, every poll included
    host, port = broker(st, st.text("reg_host", DPS), ctx)  # NVS mqtt_host/mqtt_port override it, as the hub's
    res = "%s/registrations/%s" % (scope, name)
    # keepalive 120 s: longer than a registration may take, so that no PINGREQ is needed while waiting
    s = mqtt.login(ctx, host, port, name, "%s/%s" % (res, _API), sas(key, res, net.unix_time() + ttl(st),
                                                                      "registration"), 120, 5)
    try:
        first, op, n = mqtt.subscribe(1, ("$dps/registrations/res/#",)), None, 0
        while True:
            n += 1
            rid = binascii.hexlify(os.urandom(4))
            if op is None:
                topic = b"$dps/registrations/PUT/iotdps-register/?$rid=" + rid
                body = json.dumps({"registrationId": name}).encode()
            else:
                topic = b"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=" + rid + b"&operationId=" + op
                body = b""
            s.setblocking(True)  # writes whole; reads stay non-blocking, under the deadline
            # the first time SUBSCRIBE and PUT go in one write: one round trip, not two
            s.write(first + mqtt.packet(0x30, mqtt.string(topic) + body))
            s.setblocking(False)
            first = b""
            status, after, reply = _reply(s, rid, until)
            what, value = outcome(status, reply)
            if what == "assigned":
                break
            if what == "wait":
                op = value.encode()
            wait = _WAIT if after is None else after
            left = time.ticks_diff(until, time.ticks_ms()) // 1000
            if wait > left:
                raise DynregError("azure: DPS asks to wait %d s; the registration deadline is %d s away" % (wait, left))
            log("azure: DPS %d (%s) to request %d; asking again in %d s"
                % (status, shown(reply.get("status", what), 16), n, wait))
            time.sleep_ms(wait * 1000)
    finally:
        mqtt.disconnect(s)
    log("azure: assigned to hub %s as device %s" % (shown(value["assignedHub"]), shown(value["deviceId"])))
    return [("az_hub", value["assignedHub"]), ("az_device", value["deviceId"]), ("dev_secret", key)]
