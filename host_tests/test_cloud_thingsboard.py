"""The ThingsBoard emulator on its own: provisioning sessions isolated from each other (every one subscribes the
same reply topic), the MQTT 5 bridge's packet rewriting, and a login that the provisioning made."""

import json
import socket

from host_tests.test_hostile import packet, read_packet
from tools.cloud import mqtt5

KEY = "simtbprovkey0001"


def string(text):
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def connect(cloud, client_id, user, password=None):
    sock = socket.create_connection(("127.0.0.1", cloud.ports["mqtt"]), timeout=10)
    flags = 0x82 | (0x40 if password is not None else 0)
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + b"\x00\x3c" + string(client_id) + string(user)
    sock.sendall(packet(0x10, body + (string(password) if password is not None else b"")))
    return sock, read_packet(sock)


def test_a_provisioning_reply_reaches_only_its_own_session(cloud):
    secret = cloud.secret("thingsboard", KEY)
    sessions = []
    for who in ("a", "b"):
        sock, ack = connect(cloud, "iso-" + who, "provision", "")
        assert ack == (0x20, b"\x00\x00")
        sock.sendall(packet(0x82, b"\x00\x01" + string("/provision/response") + b"\x00"))
        assert read_packet(sock) == (0x90, b"\x00\x01\x00")  # both subscribed before any reply exists
        sessions.append(sock)
    for who, sock in zip("ba", reversed(sessions)):  # b asks first: a, subscribed, must not hear b's reply
        req = {"deviceName": "tb-iso-" + who, "provisionDeviceKey": KEY, "provisionDeviceSecret": secret,
               "token": "isotoken000000000" + who, "credentialsType": "ACCESS_TOKEN"}
        sock.sendall(packet(0x30, string("/provision/request") + json.dumps(req).encode()))
        kind, body = read_packet(sock)
        n = int.from_bytes(body[:2], "big")
        assert kind == 0x30 and body[2:2 + n] == b"/provision/response"
        reply = json.loads(body[2 + n:])
        assert reply == {"status": "SUCCESS", "credentialsType": "ACCESS_TOKEN",
                         "credentialsValue": "isotoken000000000" + who}, reply
    for sock in sessions:
        sock.close()
    # the token the device chose logs in; a wrong one is refused with CONNACK 5
    sock, ack = connect(cloud, "tb-iso-a", "isotoken000000000a", "")
    assert ack == (0x20, b"\x00\x00")
    sock.close()
    sock, ack = connect(cloud, "tb-iso-a", "isotoken000000000x", "")
    assert ack == (0x20, b"\x00\x05")
    sock.close()


def test_mqtt5_connect_loses_properties_and_will_properties():
    props = b"\x05\x11\x00\x00\x0e\x10"  # session expiry interval 3600
    will_props = b"\x02\x01\x01"  # payload format indicator
    body = (b"\x00\x04MQTT\x05\xc6\x00\x3c" + props + string("cid") + will_props + string("w/t") + string("bye")
            + string("user") + string("pw"))
    assert mqtt5.connect_as_311(body) == (b"\x00\x04MQTT\x04\xc6\x00\x3c" + string("cid") + string("w/t")
                                          + string("bye") + string("user") + string("pw"))


def test_mqtt5_packets_both_ways():
    unsub = []
    publish5 = b"\x00\x03a/b" + b"\x00\x07" + b"\x03\x01\x01\x00" + b"{}"  # QoS 1: packet id, 3 bytes of properties
    assert mqtt5.from_client(0x32, publish5, unsub) == packet(0x32, b"\x00\x03a/b\x00\x07{}")
    subscribe5 = b"\x00\x09\x00" + string("t/+") + b"\x2d"  # options: QoS 1, no-local, retain handling 2
    assert mqtt5.from_client(0x82, subscribe5, unsub) == packet(0x82, b"\x00\x09" + string("t/+") + b"\x01")
    assert mqtt5.from_client(0xA2, b"\x00\x0a\x00" + string("x") + string("y"), unsub) == packet(
        0xA2, b"\x00\x0a" + string("x") + string("y"))
    assert mqtt5.from_client(0x40, b"\x00\x07\x10\x00", unsub) == b"\x40\x02\x00\x07"
    assert mqtt5.from_client(0xE0, b"\x04\x00", unsub) == b"\xe0\x00"
    assert mqtt5.to_client(0x20, b"\x00\x05", unsub) == b"\x20\x03\x00\x87\x00"  # not authorized
    assert mqtt5.to_client(0x20, b"\x01\x00", unsub) == b"\x20\x03\x01\x00\x00"
    assert mqtt5.to_client(0x90, b"\x00\x09\x01", unsub) == b"\x90\x04\x00\x09\x00\x01"
    assert mqtt5.to_client(0xB0, b"\x00\x0a", unsub) == b"\xb0\x05\x00\x0a\x00\x00\x00" and unsub == []
    assert mqtt5.to_client(0x30, b"\x00\x01t" + b"hi", unsub) == packet(0x30, b"\x00\x01t\x00hi")
