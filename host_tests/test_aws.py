"""AWS IoT Core fleet provisioning by claim: the emulator's APIs and policies over raw MQTT, AWS's own SDK
(awsiotsdk) against it, the simulated board end to end under both interpreters (success, refusals, power
cuts at every step, hostile brokers), and the new device parsers fuzzed against CPython oracles.

Every output and the emulator's log are scanned for the claim key, the issued keys and the ownership tokens.
"""

import base64
import hashlib
import json
import random
import re
import socket
import ssl
import struct
import threading
from concurrent.futures import Future

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from host_tests.conftest import INTERPS, REPO, RUN, WIFI, run_on_device, start_cloud
from host_tests.secrets_scan import assert_clean
from host_tests.test_cloud_tencent import Mqtt, _s
from host_tests.test_faults import Board, FaultProxy, record
from host_tests.test_hostile import HostileServer, attempt_lines, packet, pki, publish, read_packet  # noqa: F401
from tools.cloud import certs
from tools.cloud.connect import _length
from tools.factory import nvsformat
from tools.factory.provision import pem_to_der

TEMPLATE, DISABLED = "SimFleetTemplate", "SimFleetOff"
CREATE = "$aws/certificates/create/json"
PROVISION = "$aws/provisioning-templates/%s/provision/json"


def thing_record(cloud, thing):
    """The emulator's record of the thing (records are keyed <template>/<claim client id>)."""
    (rec,) = [r for r in cloud.devices().get("aws", {}).values() if r.get("thing") == thing]
    return rec


def provision_topics(template=TEMPLATE):
    base = PROVISION % template
    return [CREATE + "/accepted", CREATE + "/rejected", base + "/accepted", base + "/rejected"]


def claim_files(cloud):
    return (cloud.state / "aws-claim.pem").read_text(), (cloud.state / "aws-claim.key").read_text()


def windows(der):
    """What a DER key or token would look like in a log: hex and base64 windows of it."""
    return {der.hex()[40:80], base64.b64encode(der).decode()[20:60]}


def claim_secrets(cloud):
    return windows(pem_to_der(claim_files(cloud)[1].encode(), "claim key"))


# ------------------------------------------------------------------------------------------ over raw MQTT


class Claim:
    """A claim session over raw MQTT: the four reply topics subscribed back to back with a request."""

    def __init__(self, cloud, tmp_path, client_id="raw-claim-01", cert=None, key=None):
        cert_pem, key_pem = (cert, key) if cert else claim_files(cloud)
        self.mqtt = Mqtt(cloud.ports, tls=True, cert=cert_pem, key=key_pem, tmp=tmp_path)
        self.code = self.mqtt.connect(client_id)
        self.subscribed = False

    def request(self, topic, payload, template=TEMPLATE):
        """Publish `payload` on `topic` (subscribing first, in the same write); return (reply topic, JSON)."""
        m, data = self.mqtt, b""
        if not self.subscribed:  # in one write with the request, as the firmware does (Nagle would split them)
            m.pid += 1
            data = packet(0x82, struct.pack("!H", m.pid) + b"".join(_s(t) + b"\x00" for t in provision_topics(template)))
            self.subscribed = True
        m.sock.sendall(data + packet(0x30, _s(topic) + (payload if isinstance(payload, bytes)
                                                         else json.dumps(payload).encode())))
        while True:
            kind, body = m.read()
            if kind & 0xF0 == 0x30:
                n = struct.unpack("!H", body[:2])[0]
                return body[2:2 + n].decode(), json.loads(body[2 + n:])

    def create(self):
        topic, reply = self.request(CREATE, {})
        assert topic == CREATE + "/accepted", reply
        return reply

    def register(self, token, parameters, template=TEMPLATE):
        return self.request(PROVISION % template, {"certificateOwnershipToken": token, "parameters": parameters},
                            template)

    def close(self):
        self.mqtt.close()


def test_claim_provisions_a_thing_that_logs_in(cloud, tmp_path):
    """CreateKeysAndCertificate issues an RSA-2048 key and a certificate of the emulator's CA; RegisterThing
    makes the thing from the template; that certificate then logs in as the thing, on its own topics only."""
    claim = Claim(cloud, tmp_path)
    assert claim.code == 0
    created = claim.create()
    cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
    key = serialization.load_pem_private_key(created["privateKey"].encode(), None)
    assert created["privateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----") and key.key_size == 2048
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    ca = x509.load_pem_x509_certificate((cloud.state / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert created["certificateId"] == hashlib.sha256(der).hexdigest()
    token = created["certificateOwnershipToken"]
    # the certificate is inactive until RegisterThing: it cannot log in yet
    early = Mqtt(cloud.ports, tls=True, cert=created["certificatePem"], key=created["privateKey"], tmp=tmp_path)
    assert early.connect("sim-raw-0001") == 5
    early.close()
    topic, reply = claim.register(token, {"SerialNumber": "raw-0001"})
    assert topic == PROVISION % TEMPLATE + "/accepted", reply
    assert reply == {"thingName": "sim-raw-0001", "deviceConfiguration": {"telemetry_s": "60"}}
    # single use: the same token again is rejected
    topic, again = claim.register(token, {"SerialNumber": "raw-0001"})
    assert topic.endswith("/rejected") and again["errorCode"] == "InvalidCertificateOwnershipToken", again
    # the claim policy: the provisioning topics only
    assert claim.mqtt.subscribe("dt/sim-raw-0001/telemetry") == 0x80
    claim.close()
    record = thing_record(cloud, "sim-raw-0001")
    assert record["cert_fp"] == hashlib.sha256(der).hexdigest() and record["round_trips"] == 3, record

    thing = Mqtt(cloud.ports, tls=True, cert=created["certificatePem"], key=created["privateKey"], tmp=tmp_path)
    assert thing.connect("someone-else") == 5  # client id = thing name
    thing.close()
    thing = Mqtt(cloud.ports, tls=True, cert=created["certificatePem"], key=created["privateKey"], tmp=tmp_path)
    assert thing.connect("sim-raw-0001") == 0
    assert thing.subscribe("cmd/sim-raw-0001/#") == 0 and thing.subscribe("$aws/things/sim-raw-0001/shadow/#") == 0
    assert thing.subscribe("dt/sim-raw-0002/telemetry") == 0x80 and thing.subscribe("#") == 0x80
    assert thing.subscribe(CREATE + "/accepted") == 0x80
    thing.publish("dt/sim-raw-0001/telemetry", b'{"t": 1}', qos=1)
    assert thing.ping()
    thing.close()
    assert thing_record(cloud, "sim-raw-0001")["activated"]
    # once the thing has logged in, provisioning it again is refused
    claim = Claim(cloud, tmp_path)
    topic, reply = claim.register(claim.create()["certificateOwnershipToken"], {"SerialNumber": "raw-0001"})
    assert topic.endswith("/rejected") and reply["statusCode"] == 409, reply
    claim.close()
    assert (cloud.state / "aws-claim.key").stat().st_mode & 0o777 == 0o600
    log = cloud.log()
    assert_clean(log, {token, created["privateKey"].splitlines()[3]} | windows(der[:0] + key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
                 | claim_secrets(cloud), where="the emulator's log")


@pytest.mark.parametrize("template, parameters, status, code", [
    ("NoSuchTemplate", {"SerialNumber": "ref-0001"}, 404, "ResourceNotFound"),
    (DISABLED, {"SerialNumber": "ref-0002"}, 403, "TemplateDisabled"),
    (TEMPLATE, {}, 400, "InvalidParameters"),                         # SerialNumber is required
    (TEMPLATE, {"SerialNumber": "no spaces allowed"}, 400, "InvalidParameters"),  # the template's pattern
    (TEMPLATE, {"SerialNumber": 42}, 400, "InvalidPayload"),          # parameters are strings
])
def test_register_thing_refusals(cloud, tmp_path, template, parameters, status, code):
    claim = Claim(cloud, tmp_path)
    token = claim.create()["certificateOwnershipToken"]
    claim.subscribed = False  # the other template's reply topics
    topic, reply = claim.register(token, parameters, template)
    claim.close()
    assert topic == PROVISION % template + "/rejected", reply
    assert (reply["statusCode"], reply["errorCode"]) == (status, code) and reply["errorMessage"], reply
    assert not any(r["thing"].startswith("sim-ref-") for r in cloud.devices().get("aws", {}).values())


def test_create_request_not_json_is_rejected(cloud, tmp_path):
    claim = Claim(cloud, tmp_path)
    topic, reply = claim.request(CREATE, b"not json")
    claim.close()
    assert topic == CREATE + "/rejected" and reply["errorCode"] == "InvalidPayload", reply


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = certs._name("not the emulator's CA")
    cert = certs._builder(name, name, key.public_key()).sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), certs._key_pem(key).decode()


def test_wrong_claim_certificates(cloud, tmp_path):
    """A certificate of the emulator's CA that is not the claim certificate is refused at CONNECT; one of
    another CA fails the TLS handshake."""
    pki_ = certs.Pki(str(cloud.state))
    pki_.ensure()
    cert, key, _ = pki_.issue_device_cert("not a claim")
    claim = Claim(cloud, tmp_path, cert=cert, key=key)
    assert claim.code == 5
    claim.close()
    cert, key = _self_signed(tmp_path)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError, AssertionError)):
        Claim(cloud, tmp_path, cert=cert, key=key)
    assert "certificate is neither the claim certificate nor a thing's" in cloud.log()


def test_replies_go_to_the_requesting_connection_only(cloud, tmp_path):
    """Every device subscribes to the same $aws/certificates/create/json/accepted: another claim session
    must never hear a key that was issued to someone else."""
    other = Claim(cloud, tmp_path, "raw-bystander")
    other.mqtt._send(0x82, struct.pack("!H", 1) + b"".join(_s(t) + b"\x00" for t in provision_topics()))
    assert other.mqtt.read()[0] == 0x90
    claim = Claim(cloud, tmp_path, "raw-requester")
    claim.create()
    claim.close()
    # had the reply been broadcast, it would stand before this PINGRESP on the bystander's connection
    other.mqtt._send(0xC0, b"")
    assert other.mqtt.read()[0] == 0xD0
    other.close()


# ------------------------------------------------------------------------------------------ AWS's own SDK


def test_aws_sdk_fleet_provisioning(cloud, tmp_path):
    """awsiotsdk's iotidentity client (AWS's own fleet provisioning code, unpatched) provisions against the
    emulator with only the endpoint, the port and the CA redirected, and logs in with what it got."""
    from awscrt import mqtt
    from awsiot import iotidentity, mqtt_connection_builder

    cert_pem, key_pem = claim_files(cloud)
    (tmp_path / "claim.pem").write_text(cert_pem)
    (tmp_path / "claim.key").write_text(key_pem)

    def connect(cert, key, client_id):
        conn = mqtt_connection_builder.mtls_from_path(
            endpoint="localhost", port=cloud.ports["mqtts"], cert_filepath=str(cert), pri_key_filepath=str(key),
            ca_filepath=cloud.ports["ca"], client_id=client_id, clean_session=True, keep_alive_secs=60)
        conn.connect().result(20)
        return conn

    conn = connect(tmp_path / "claim.pem", tmp_path / "claim.key", "sdk-serial-0001")
    identity = iotidentity.IotIdentityClient(conn)
    created, registered = Future(), Future()
    for subscribe, future in ((identity.subscribe_to_create_keys_and_certificate_accepted, created),
                              (identity.subscribe_to_create_keys_and_certificate_rejected, created)):
        sub, _ = subscribe(iotidentity.CreateKeysAndCertificateSubscriptionRequest(), mqtt.QoS.AT_LEAST_ONCE,
                           future.set_result)
        sub.result(20)
    for subscribe in (identity.subscribe_to_register_thing_accepted, identity.subscribe_to_register_thing_rejected):
        sub, _ = subscribe(iotidentity.RegisterThingSubscriptionRequest(template_name=TEMPLATE),
                           mqtt.QoS.AT_LEAST_ONCE, registered.set_result)
        sub.result(20)
    identity.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(),
                                                 mqtt.QoS.AT_LEAST_ONCE).result(20)
    keys = created.result(20)
    assert isinstance(keys, iotidentity.CreateKeysAndCertificateResponse), keys
    identity.publish_register_thing(iotidentity.RegisterThingRequest(
        template_name=TEMPLATE, certificate_ownership_token=keys.certificate_ownership_token,
        parameters={"SerialNumber": "sdk-serial-0001"}), mqtt.QoS.AT_LEAST_ONCE).result(20)
    thing = registered.result(20)
    conn.disconnect().result(20)
    assert isinstance(thing, iotidentity.RegisterThingResponse), thing
    assert thing.thing_name == "sim-sdk-serial-0001" and thing.device_configuration == {"telemetry_s": "60"}
    (tmp_path / "thing.pem").write_text(keys.certificate_pem)
    (tmp_path / "thing.key").write_text(keys.private_key)
    conn = connect(tmp_path / "thing.pem", tmp_path / "thing.key", thing.thing_name)
    conn.publish("dt/%s/telemetry" % thing.thing_name, b'{"sdk": 1}', mqtt.QoS.AT_LEAST_ONCE)[0].result(20)
    conn.disconnect().result(20)
    record = thing_record(cloud, thing.thing_name)
    assert record["activated"] and record["logins"] == 1, record
    assert_clean(cloud.log(), {keys.certificate_ownership_token} | windows(pem_to_der(
        keys.private_key.encode(), "key")), where="the emulator's log")


# ------------------------------------------------------------------------------------------ the board


def aws_settings(cloud, name, **extra):
    """Factory settings of an AWS board: the emulator's claim certificate, its broker, its CA."""
    s = dict(WIFI, **RUN, platform="aws", prod_id=TEMPLATE, dev_name=name, claim_cert={"file": "@cloud/aws-claim.pem"},
             claim_key={"file": "@cloud/aws-claim.key"}, mqtt_host="localhost", mqtt_port=cloud.ports["mqtts"],
             ca={"file": "@cloud/ca.pem"}, retry_ms=100, max_tries=1)
    s.update(extra)
    return s


def nvs_of(state):
    content = nvsformat.parse((state / "nvs.bin").read_bytes())
    return {k: v for k, (_, v) in content.get("dynreg", {}).items()}


def check_identity(cloud, nvs, thing):
    """The board's NVS and the emulator's record hold the same identity, and the thing has logged in."""
    rec = thing_record(cloud, thing)
    assert hashlib.sha256(nvs["dev_cert"]).hexdigest() == rec["cert_fp"] and nvs["thing_name"] == thing.encode()
    key = serialization.load_der_private_key(nvs["dev_key"], None)
    cert = x509.load_der_x509_certificate(nvs["dev_cert"])
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert rec["activated"] and rec["logins"] >= 1, rec
    return rec


def test_board_registers_and_logs_in(board, cloud, interp, tmp_path):
    """Registration boot: claim login, both APIs in three round trips, key, certificate and thing name stored;
    login boot: the thing's certificate, three reports acknowledged on dt/<thing>/telemetry."""
    name = "aws-ok-" + interp
    run = board(aws_settings(cloud, name, aws_topic="dt/{thing}/telemetry"))
    assert run.rc == 0 and run.boots == 2, run
    thing = "sim-" + name
    assert "dynreg: no device secret in NVS: registering aws device %r" % name in run.out
    assert "dynreg: aws: provisioned thing %s" % thing in run.out
    assert "registered: stored dev_key, thing_name, dev_cert in NVS; resetting" in run.out
    assert "mqtt: connecting to mqtts://localhost:%d as %s" % (cloud.ports["mqtts"], thing) in run.out
    assert run.out.count("sent, acknowledged") == 3, run
    nvs = nvs_of(tmp_path / "board")
    rec = check_identity(cloud, nvs, thing)
    assert rec["round_trips"] == 3 and rec["registrations"] == 1, rec  # the protocol's minimum
    assert nvs["claim_cert"] and nvs["claim_key"] and nvs["dev_id"] == b"aws/" + name.encode()
    assert re.search(r"cloud: mqtt login %s ok \(aws certificate; device activated\)" % thing, cloud.log())
    secrets = claim_secrets(cloud) | windows(nvs["dev_key"])
    assert_clean(run.out, secrets, derived=True, where="the board's output")
    assert "PRIVATE KEY" not in run.out and "PRIVATE KEY" not in cloud.log()


@pytest.mark.parametrize("case", ["unknown template", "bad parameters", "disabled template", "wrong claim"])
def test_board_refusals(board, cloud, interp, tmp_path, case):
    """Each refusal is one clear line naming the API and AWS's three fields; nothing is stored."""
    name = "aws-no-%s-%s" % (case.split()[0], interp[:2])
    extra, words = {
        "unknown template": ({"prod_id": "NoSuchTemplate"},
                             "aws: registration refused: RegisterThing rejected: 404 ResourceNotFound: "),
        "bad parameters": ({"aws_params": '{"SerialNumber": "a b"}'},
                           "RegisterThing rejected: 400 InvalidParameters: parameter SerialNumber does not match"),
        "disabled template": ({"prod_id": DISABLED}, "RegisterThing rejected: 403 TemplateDisabled"),
        "wrong claim": ({"claim_cert": {"file": str(tmp_path / "other.pem")},
                         "claim_key": {"file": str(tmp_path / "other.key")}},
                        "mqtt: broker refused the login (CONNACK return code 5)"),
    }[case]
    if case == "wrong claim":  # a certificate of the right CA that is not the claim certificate
        p = certs.Pki(str(cloud.state))
        p.ensure()
        cert, key, _ = p.issue_device_cert("wrong claim")
        (tmp_path / "other.pem").write_text(cert)
        (tmp_path / "other.key").write_text(key)
    run = board(aws_settings(cloud, name, **extra), max_boots=1)
    assert run.rc == 1 and run.boots == 1, run
    (last,) = [line for line in run.out.splitlines() if "giving up after 1 attempts" in line]
    assert words in last, run
    nvs = nvs_of(tmp_path / "board")
    assert not {"dev_key", "dev_cert", "thing_name", "dev_id"} & set(nvs) and nvs["claim_key"], sorted(nvs)


def test_forget_prod_erases_the_claim_after_an_accepted_login(board, cloud, interp, tmp_path):
    name = "aws-forget-" + interp[:2]
    run = board(aws_settings(cloud, name, forget_prod=1))
    assert run.rc == 0 and "aws: claim certificate and key erased from NVS (forget_prod=1)" in run.out, run
    assert run.out.index("mqtt: logged in") > run.out.index("as sim-" + name)
    nvs = nvs_of(tmp_path / "board")
    assert "claim_key" not in nvs and "claim_cert" not in nvs and nvs["dev_key"], sorted(nvs)


@pytest.fixture(scope="module")
def ec_cloud(tmp_path_factory):
    """A second emulator that issues EC P-256 keys (--aws-key ec256), for the lighter login."""
    from host_tests.conftest import Cloud

    state = tmp_path_factory.mktemp("cloud-ec")
    emu = start_cloud(state, "--aws-key", "ec256")
    yield Cloud(state, emu.ports, json.loads((REPO / "tools" / "cloud" / "registry.json").read_text()))
    assert emu.stop() == 0


@pytest.mark.parametrize("interp", INTERPS)
def test_board_with_an_ec_key(ec_cloud, tmp_path, interp):
    from host_tests.conftest import PYTHON, SIM_RUNNER
    import subprocess

    name = "aws-ec-" + interp[:2]
    (tmp_path / "s.json").write_text(json.dumps(aws_settings(ec_cloud, name)))
    out = subprocess.run([PYTHON, str(SIM_RUNNER), "--settings", str(tmp_path / "s.json"), "--interp", interp,
                          "--state", str(tmp_path / "board"), "--cloud-state", str(ec_cloud.state), "--fresh",
                          "--max-boots", "3"], cwd=REPO, capture_output=True, text=True, timeout=120).stdout
    assert out.count("sent, acknowledged") == 3, out
    nvs = nvs_of(tmp_path / "board")
    assert isinstance(serialization.load_der_private_key(nvs["dev_key"], None), ec.EllipticCurvePrivateKey)
    check_identity(ec_cloud, nvs, "sim-" + name)
    assert "ec256 certificate" in ec_cloud.log()
    assert_clean(out, claim_secrets(ec_cloud) | windows(nvs["dev_key"]), derived=True, where="the board's output")


# ------------------------------------------------------------------------------------------ power cuts


class AwsBoard(Board):
    """test_faults' board, its secret scan also covering the claim key."""

    def secrets(self):
        return super().secrets() | claim_secrets(self.cloud)


def logged_once(cloud, line, done):
    """Predicate for the proxy: true (once) when the emulator has logged `line` since now."""
    start = len(cloud.log())

    def pred():
        if not done and line in cloud.log()[start:]:
            done.append(True)
            return True
        return False
    return pred


# The protocol points under both interpreters; the NVS writes (the same flow code and simulated flash under
# either) under MicroPython, except the last one, the certificate that means "registered".
POWER_CUTS = [(when, interp) for when in ("create-reply", "register-reply", "nvs_write:3", "first-login")
              for interp in INTERPS] + [(when, "micropython") for when in ("nvs_write:1", "nvs_write:2", "nvs_commit:1")]


@pytest.mark.parametrize("when, interp", POWER_CUTS, ids=["%s-%s" % c for c in POWER_CUTS])
def test_power_cut(cloud, tmp_path, interp, when):
    """A power cut at each step of the two-step exchange and of storing its result ends provisioned and
    logged in, the board's NVS and the emulator agreeing; a lost reply only costs a new certificate."""
    name = "aws-pc-%s-%s" % (re.sub(r"[^a-z0-9]", "", when), interp[:2])
    thing = "sim-" + name
    case = record("aws-" + name, interp, 1)
    settings = aws_settings(cloud, name, max_tries=8, retry_ms=50, retry_max_ms=400)
    board = AwsBoard(cloud, tmp_path, interp, settings)
    proxy = FaultProxy(cloud.ports["mqtts"])
    if when == "create-reply":  # the key and certificate were issued; the reply never reaches the board
        proxy.plan = [("cut_server", logged_once(cloud, "CreateKeysAndCertificate claim/%s ok" % name, []),
                       board.power_cut)]
    elif when == "register-reply":  # the thing exists with the new certificate; the board never hears it
        proxy.plan = [("cut_server", logged_once(cloud, "RegisterThing claim/%s ok" % name, []), board.power_cut)]
    elif when == "first-login":  # the thing is activated; the CONNACK never reaches the board
        proxy.plan = ["pass", ("cut_server", logged_once(cloud, "mqtt login %s ok" % thing, []), board.power_cut)]
    settings["mqtt_port"] = proxy.port
    with proxy:
        board.run(fault=when if when.startswith("nvs") else None)
    assert "[sim] power cut" in board.out and board.rc == 0, board.out
    rec = check_identity(cloud, board.nvs(), thing)
    expected = {"create-reply": (1, 1), "register-reply": (2, 1), "nvs_commit:1": (1, 1), "first-login": (1, 2)}
    assert (rec["registrations"], rec["logins"]) == expected.get(when, (2, 1)), rec
    case["passed"] = True


# ------------------------------------------------------------------------------------------ hostile brokers


def _issued():
    """A key and certificate as CreateKeysAndCertificate hands them out (any CA: the board only stores them)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = certs._name("hostile-issued")
    cert = certs._builder(name, name, key.public_key()).sign(key, hashes.SHA256())
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode())


HOSTILE_CERT, HOSTILE_KEY = _issued()
HOSTILE_TOKEN = "HostileOwnershipToken" + "x" * 40
GOOD = {"certificateId": "0" * 64, "certificatePem": HOSTILE_CERT, "privateKey": HOSTILE_KEY,
        "certificateOwnershipToken": HOSTILE_TOKEN}
REGISTER = PROVISION % TEMPLATE


def aws_broker(create, register=None, suback=b"\x00" * 4, keep_open=False):
    """serve(): CONNACK; the SUBSCRIBE and CreateKeysAndCertificate request; SUBACK and `create` (bytes);
    with `register`, the RegisterThing request and `register`."""
    def serve(srv, conn):
        read_packet(conn)  # CONNECT
        conn.sendall(b"\x20\x02\x00\x00")
        kind, sub = read_packet(conn)
        assert kind == 0x82, kind
        kind, pub = read_packet(conn)
        assert kind & 0xF0 == 0x30 and pub[2:2 + len(CREATE)] == CREATE.encode(), pub[:40]
        conn.sendall(packet(0x90, sub[:2] + suback) + create)
        if register is not None:
            kind, pub = read_packet(conn)
            request = json.loads(pub[2 + int.from_bytes(pub[:2], "big"):])
            assert request["certificateOwnershipToken"] == HOSTILE_TOKEN, request
            conn.sendall(register)
        if keep_open:
            srv.stop.wait(30)
    return serve


def accepted(**fields):
    return publish(CREATE + "/accepted", json.dumps(dict(GOOD, **fields)))


HOSTILE = [
    # (name, the attempt's error, a line logged before it or None, serve)
    ("privateKey not PEM", "aws: privateKey is not a PEM RSA PRIVATE KEY", None, aws_broker(accepted(privateKey="hi"))),
    ("certificate with bad base64", "aws: certificatePem is not valid base64", None,
     aws_broker(accepted(certificatePem="-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----"))),
    ("no ownership token", "reply holds no certificateOwnershipToken", None,
     aws_broker(accepted(certificateOwnershipToken=None))),
    ("rejected with hostile text", "registration refused: CreateKeysAndCertificate rejected: \\x1b[31m", None,
     aws_broker(publish(CREATE + "/rejected", json.dumps({"statusCode": "\x1b[31m", "errorCode": "long code, " * 50,
                                                           "errorMessage": "two\nlines"})))),
    ("accepted not JSON", "CreateKeysAndCertificate reply is not a JSON object", None,
     aws_broker(publish(CREATE + "/accepted", '{"certificatePem": "' + "x" * 10))),
    ("oversized remaining length", "100000-byte packet exceeds the 6144-byte limit", None,
     aws_broker(b"\x30\xa0\x8d\x06" + b"x" * 4096)),
    ("malformed PUBLISH", "aws: malformed PUBLISH", None, aws_broker(packet(0x30, b"\x10\x00abc"))),
    ("another topic, then closed", "the broker closed the connection", "aws: ignoring a message on $aws/other",
     aws_broker(publish("$aws/other", "{}"))),
    ("SUBACK 0x80", "refused a reply subscription", None, aws_broker(b"", suback=b"\x00\x00\x80\x00")),
    ("RegisterThing rejected", "registration refused: RegisterThing rejected: 400 InvalidParameters: no",
     None, aws_broker(accepted(), publish(REGISTER + "/rejected", json.dumps(
         {"statusCode": 400, "errorCode": "InvalidParameters", "errorMessage": "no"})))),
    ("thingName with a slash", "RegisterThing reply holds no usable thingName", None,
     aws_broker(accepted(), publish(REGISTER + "/accepted", json.dumps({"thingName": "a/#", "deviceConfiguration": {}})))),
    ("silent, kept open", "CreateKeysAndCertificate: mqtt: no complete answer before the deadline", None,
     aws_broker(b"", keep_open=True)),  # last: the 2 s deadline
]


def test_hostile_brokers(board, pki, interp, tmp_path):  # noqa: F811 (pki: test_hostile's fixture)
    """Each hostile answer is one clear error for its attempt, nothing stored, then the next attempt."""
    (tmp_path / "claim.pem").write_text(HOSTILE_CERT)
    (tmp_path / "claim.key").write_text(HOSTILE_KEY)
    srv = HostileServer(pki["ctx"], [{"serve": serve} for _, _, _, serve in HOSTILE])
    s = dict(WIFI, platform="aws", prod_id=TEMPLATE, dev_name="hostile-" + interp, ca={"file": pki["ca"]},
             claim_cert={"file": str(tmp_path / "claim.pem")}, claim_key={"file": str(tmp_path / "claim.key")},
             mqtt_host="localhost", mqtt_port=srv.port, retry_ms=20, retry_max_ms=100, max_tries=len(HOSTILE),
             reg_timeout_ms=2000)
    try:
        run = board(s, max_boots=2, timeout=90)
    finally:
        srv.close()
    assert run.rc == 1 and run.boots == 1 and srv.served == len(HOSTILE), run
    errors = attempt_lines(run.out)
    assert len(errors) == len(HOSTILE), run
    pos = 0
    for (name, words, logged, _), error in zip(HOSTILE, errors):
        error = error.split("\n")[0]  # the last one runs on to the end of the output
        assert words in error, (name, error)
        if logged:
            assert run.out.find(logged, pos) >= 0, (name, run.out)
        pos = run.out.find(error, pos) + 1
    assert run.out.count("Traceback") == 1 and "registered: stored" not in run.out, run
    assert_clean(run.out, {HOSTILE_TOKEN} | windows(pem_to_der(HOSTILE_KEY.encode(), "key")), where="the board's output")
    nvs = nvs_of(tmp_path / "board")
    assert not {"dev_key", "dev_cert", "thing_name"} & set(nvs), sorted(nvs)


# ------------------------------------------------------------------------------------------ fuzzing

N_FUZZ = 250  # cases per parser and interpreter
# Runs as the board's main.py under either interpreter: one "CASE <outcome>" line per case.
FUZZ_DRIVER = r'''
import binascii
import json

from dynreg import DynregError, aws_reg, net


def canon(x):
    if isinstance(x, dict):
        return "{" + ",".join(canon(k) + ":" + canon(x[k]) for k in sorted(x)) + "}"
    if isinstance(x, list):
        return "[" + ",".join(canon(v) for v in x) + "]"
    if x is None or x is True or x is False:
        return str(x)
    if isinstance(x, int):
        return "i%%d" %% x
    return "s" + binascii.hexlify(x.encode()).decode()


class Stream:
    def __init__(self, data):
        self.data, self.at = data, 0

    def read(self, n):
        d = self.data[self.at:self.at + n]
        self.at += len(d)
        return d


for case in json.load(open(%r)):
    try:
        if case[0] == "pem":
            labels = aws_reg.KEY_LABELS if case[2] else ("CERTIFICATE",)
            r = "ok " + binascii.hexlify(aws_reg.pem_der(case[1], labels, "x")).decode()
        else:
            reply = aws_reg._reply(Stream(binascii.unhexlify(case[1])), "$aws/t", "API", net.deadline(5000))
            r = "ok " + canon(reply)
    except DynregError as e:
        r = "err " + str(e)
    print("CASE", r)
'''


def canon(x):
    """The oracle's canonical text of a JSON value (the driver's, written apart)."""
    if isinstance(x, bool) or x is None:
        return {True: "True", False: "False", None: "None"}[x]
    if isinstance(x, int):
        return "i" + str(x)
    if isinstance(x, str):
        return "s" + x.encode().hex()
    if isinstance(x, list):
        return "[%s]" % ",".join(map(canon, x))
    return "{%s}" % ",".join("%s:%s" % (canon(k), canon(v)) for k, v in sorted(x.items()))


def pem_oracle(text, key):
    labels = ("RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY") if key else ("CERTIFICATE",)
    m = re.fullmatch(r"-----BEGIN ([A-Z ]+)-----(.+)-----END \1-----", text.strip(" \t\r\n"), re.S)
    if len(text) > 6144 or not m or m.group(1) not in labels:
        return "err pem"
    body = re.sub(r"\r?\n", "", m.group(2))
    try:
        der = base64.b64decode(body, validate=True)
    except ValueError:
        return "err b64"
    if not body or base64.b64encode(der).decode() != body:
        return "err b64"
    return "ok " + der.hex() if der[:1] == b"\x30" else "err pem"


def shown_oracle(value, limit):
    raw = str(value).encode()
    text = "".join(chr(b) if 0x20 <= b <= 0x7E else "\\x%02x" % b for b in raw[:limit])
    return text[:limit] + ("..." if len(text) > limit or len(raw) > limit else "")


def reply_oracle(packets):
    for first, body in packets:
        if len(body) > 6144:
            return "err exceeds"
        if first == 0x90:
            if 0x80 in body[2:]:
                return "err subscription"
            continue
        if first >> 4 != 3:
            continue
        n = int.from_bytes(body[:2], "big") if len(body) >= 2 else 1 << 16
        start = 2 + n + (2 if first & 6 else 0)
        if start > len(body):
            return "err malformed"
        try:
            value = json.loads(body[start:])
        except ValueError:
            value = None
        value = value if type(value) is dict else None
        topic = body[2:2 + n]
        if topic == b"$aws/t/rejected":
            if value is None:
                return "err aws: registration refused: API rejected (not a JSON object)"
            return "err aws: registration refused: API rejected: %s %s: %s" % (
                shown_oracle(value.get("statusCode"), 8), shown_oracle(value.get("errorCode"), 40),
                shown_oracle(value.get("errorMessage"), 80))
        if topic == b"$aws/t/accepted":
            return "err notjson" if value is None else "ok " + canon(value)
    return "err closed"


def device_kind(line):
    """The device's outcome in the oracle's words (errors by kind, refusals and results in full)."""
    for words, kind in (("exceeds the", "err exceeds"), ("refused a reply subscription", "err subscription"),
                        ("malformed PUBLISH", "err malformed"), ("closed the connection", "err closed"),
                        ("reply is not a JSON object", "err notjson"), ("not valid base64", "err b64"),
                        ("is not a PEM", "err pem")):
        if line.startswith("err ") and words in line:
            return kind
    return line


def _ders(rng):
    keys = [rsa.generate_private_key(65537, 1024), ec.generate_private_key(ec.SECP256R1())]
    out = [k.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption()) for k in keys
           for fmt in (serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8)]
    out.append(pem_to_der(HOSTILE_CERT.encode(), "cert"))
    return out + [bytes([rng.choice((0x30, 0x02, 0x04))]) + rng.randbytes(rng.randrange(0, 300)) for _ in range(6)]


def pem_cases(rng):
    ders = _ders(rng)
    labels = ["RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "CERTIFICATE", "PUBLIC KEY", "rsa private key"]
    cases = []
    for i in range(N_FUZZ):
        b64 = base64.b64encode(rng.choice(ders)).decode()
        width = rng.choice((64, 76, 40, 1000, rng.randrange(1, 90)))
        nl = rng.choice(("\n", "\r\n", "\n", "\r\n", "\r"))
        body = nl.join(b64[j:j + width] for j in range(0, len(b64), width))
        label, end = rng.choice(labels), None
        end = label if rng.random() < 0.9 else rng.choice(labels)
        text = "%s-----BEGIN %s-----%s%s%s-----END %s-----%s" % (
            rng.choice(("", " ", "\n", "\t\r\n")), label, nl, body, rng.choice((nl, nl, "")), end,
            rng.choice(("", "\n", "\r\n ")))
        for _ in range(rng.choice((0, 0, 0, 1, 2))):  # mutations: insert, delete, replace one character
            at = rng.randrange(len(text))
            op = rng.randrange(3)
            ch = rng.choice("A=+/-\n \r@ä")
            text = text[:at] + ch + text[at:] if op == 0 else text[:at] + text[at + 1:] if op == 1 else \
                text[:at] + ch + text[at + 1:]
        if i % 50 == 7:
            text = text * 2  # two blocks
        key = label.endswith("PRIVATE KEY") if rng.random() < 0.8 else rng.random() < 0.5
        cases.append(["pem", text, key])
    return cases


def _json_value(rng, depth=0):
    kind = rng.randrange(6 if depth < 3 else 4)
    if kind == 0:
        return rng.choice((None, True, False))
    if kind == 1:
        return rng.randrange(-10 ** 12, 10 ** 12)
    if kind in (2, 3):
        return "".join(rng.choice("abcXYZ 09\"\\/\n\t\x01é中-") for _ in range(rng.randrange(0, 20)))
    if kind == 4:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {"k%d" % rng.randrange(50): _json_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def reply_cases(rng):
    cases, oracles = [], []
    for _ in range(N_FUZZ):
        packets = []
        for _ in range(rng.randrange(1, 5)):
            kind = rng.randrange(10)
            if kind == 0:
                packets.append((0x90, b"\x00\x01" + bytes(rng.choice((0, 1, 0x80)) for _ in range(4))))
            elif kind == 1:
                packets.append((0xD0, b""))
            elif kind == 2:
                packets.append((0x30, rng.randbytes(rng.randrange(0, 6))))  # a topic length past the end, often
            elif kind == 3:
                packets.append((0x30, b"x" * 6145))  # over the limit
            else:
                topic = rng.choice(("$aws/t/accepted", "$aws/t/rejected", "$aws/other", "$aws/t/acceptedx"))
                if rng.random() < 0.5:
                    value = {"statusCode": rng.choice((400, "403", None, True)), "errorCode": _json_value(rng),
                             "errorMessage": _json_value(rng)}
                    value = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
                else:
                    value = _json_value(rng) if rng.random() < 0.3 else {"thingName": _json_value(rng, 3)}
                payload = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
                if rng.random() < 0.15:
                    payload = payload[:rng.randrange(len(payload) + 1)]
                qos = rng.choice((0, 0, 1))
                packets.append((0x30 | qos << 1, _s(topic) + (b"\x00\x07" if qos else b"") + payload))
        stream = b"".join(bytes((first,)) + _length(len(body)) + body for first, body in packets)
        cases.append(["reply", stream.hex()])
        oracles.append(reply_oracle(packets))
    return cases, oracles


@pytest.mark.parametrize("interp", INTERPS)
def test_fuzz_new_parsers(interp, tmp_path):
    """PEM -> DER and the reply reader, 250 generated cases each, against oracles written apart in CPython
    (re and base64; json): the same values, the same refusals."""
    rng = random.Random(20261202)
    pems = pem_cases(rng)
    replies, oracles = reply_cases(rng)
    (tmp_path / "cases.json").write_text(json.dumps(pems + replies))
    out = run_on_device(interp, tmp_path, FUZZ_DRIVER % str(tmp_path / "cases.json"), timeout=120)
    got = [line[5:] for line in out.splitlines() if line.startswith("CASE ")]
    assert len(got) == 2 * N_FUZZ, out[-2000:]
    expected = [pem_oracle(text, key) for _, text, key in pems] + oracles
    mismatches = [(i, e, device_kind(g)) for i, (e, g) in enumerate(zip(expected, got)) if device_kind(g) != e]
    assert not mismatches, mismatches[:5]
    kinds = {e.split(" ")[0] + " " + e.split(" ")[1][:6] for e in expected}
    assert len([e for e in expected[:N_FUZZ] if e.startswith("ok")]) >= 40, "too few valid PEMs"
    assert len([e for e in oracles if e.startswith("ok")]) >= 30 and len(kinds) >= 8, kinds


def test_provision_needs_the_claim_credentials(tmp_path):
    """A batch row of an AWS board needs its claim certificate and key (no product secret); with them it
    gets Amazon Root CA 1 for an amazonaws.com endpoint, and the certificates as DER."""
    from tools.factory import provision
    from tools.factory import nvs_schema as schema

    cert, key = _issued()
    (tmp_path / "c.pem").write_text(cert)
    (tmp_path / "k.pem").write_text(key)
    cells = {"platform": "aws", "prod_id": TEMPLATE, "mqtt_host": "abc123-ats.iot.eu-west-1.amazonaws.com"}

    def plan(**more):
        path = tmp_path / "b.csv"
        row = dict(cells, **more)
        path.write_text(",".join(row) + "\n" + ",".join(row.values()) + "\n")
        return provision.plan_images(provision.read_batch(path), schema.PARTITION_SIZE)

    with pytest.raises(provision.ProvisionError, match="claim_cert and claim_key are missing"):
        plan()
    (_, entries, _), = plan(claim_cert=str(tmp_path / "c.pem"), claim_key=str(tmp_path / "k.pem"))
    assert entries["claim_cert"] == pem_to_der(cert.encode(), "c") and entries["claim_key"] == pem_to_der(
        key.encode(), "k")
    assert entries["ca"] == pem_to_der((REPO / "tools" / "factory" / "ca" / "aws.pem").read_bytes(), "ca")


LOGIN_UNITS = r'''
from dynreg import aws


class St:
    def __init__(self, values):
        self.values = values

    def text(self, key, default=None):
        return self.values.get(key, default)


class Dev:
    ident = "thing-1"

    def __init__(self, values):
        self.st, self.properties, self.got, self.sent = St(values), {}, [], []
        self.on_message = lambda topic, msg: self.got.append(msg)

    def publish(self, topic, msg, qos=0):
        self.sent.append((topic, msg, qos))
        return True


d = Dev({})
print("subs", aws.subscriptions(d))
delta = b"$aws/things/thing-1/shadow/update/delta"
print("delta", aws.handle(d, delta, b'{"version": 3, "state": {"led": 1}}'), d.properties, len(d.got))
print("bad", aws.handle(d, delta, b'{"state": 5}'), aws.handle(d, delta, b"[1"), d.properties, len(d.got))
print("other", aws.handle(d, b"cmd/thing-1/x", b"{}"))
aws.report(d, {"t": 1}, 1)
Dev.ident = "thing-2"
d2 = Dev({"aws_topic": "fleet/{thing}/up"})
aws.report(d2, {"t": 2})
print("sent", d.sent[0][0], d.sent[0][2], d2.sent[0][0])
'''


@pytest.mark.parametrize("interp", INTERPS)
def test_login_module_units(interp, tmp_path):
    """The shadow delta goes to dev.properties and on_message (a malformed one is logged and dropped); reports
    go to dt/<thing>/telemetry or NVS aws_topic with {thing} filled in."""
    out = run_on_device(interp, tmp_path, LOGIN_UNITS)
    assert "subs ('$aws/things/thing-1/shadow/update/delta',)" in out
    assert "delta True {'led': 1} 1" in out and "dynreg: aws: shadow delta led" in out
    assert "bad True True {'led': 1} 1" in out and out.count("ignoring a malformed shadow delta") == 2
    assert "other False" in out and "sent dt/thing-1/telemetry 1 fleet/thing-2/up" in out, out
