"""AWS IoT Core fleet provisioning by claim: CreateKeysAndCertificate, then RegisterThing, on one
mutual-TLS connection made with the factory's claim certificate (docs/platforms/aws.md "Wire format").

Three round trips, the protocol's minimum: CONNECT; the four reply subscriptions and the first request
in one write (the broker handles one connection's packets in order); the second request.
Imported by the registration boot only; aws.py has the login.
"""

import gc
import json

from micropython import const

from dynreg import ConfigError, DynregError, crypto, log, mqtt, net, shown
from dynreg.aws import endpoint

# Largest MQTT packet taken during this exchange. CreateKeysAndCertificate's accepted reply holds an
# RSA-2048 key (PEM ~1.7 KB), its certificate (~1.3 KB) and the ownership token: 3.3 KB from AWS (as the
# SDK sees it), 3.1 KB from the emulator. 6 KB leaves room for a longer token; the login boot keeps max_msg.
MAX_REPLY = const(6144)
_CREATE = "$aws/certificates/create/json"
KEY_LABELS = ("RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY")


def _name_ok(text, extra, longest):
    """Is `text` 1..longest characters of A-Z a-z 0-9 and `extra`?"""
    if not isinstance(text, str) or not 0 < len(text) <= longest:
        return False
    for ch in text:
        if not ("a" <= ch <= "z" or "A" <= ch <= "Z" or "0" <= ch <= "9" or ch in extra):
            return False
    return True


def pem_der(pem, labels, what):
    """The DER bytes of `pem` (str): one PEM block whose label is one of `labels`, its body strict
    base64 over lines; DynregError naming `what` for anything else."""
    if isinstance(pem, str) and len(pem) <= MAX_REPLY:
        pem = pem.strip()
        for label in labels:
            head, tail = "-----BEGIN %s-----" % label, "-----END %s-----" % label
            if len(pem) > len(head) + len(tail) and pem.startswith(head) and pem.endswith(tail):
                body = pem[len(head):-len(tail)].replace("\r\n", "\n").replace("\n", "")
                der = crypto.b64decode(body, "aws: " + what)
                if der[:1] == b"\x30":  # a DER SEQUENCE: certificates and keys all are
                    return der
                break
    raise DynregError("aws: %s is not a PEM %s" % (what, " / ".join(labels)))


def message(kind, body):
    """(topic, JSON object or None) of a PUBLISH packet; None for any other packet."""
    if kind & 0xF0 != 0x30:
        return None
    n = body[0] << 8 | body[1] if len(body) > 1 else 0xFFFF
    at = 2 + n + (2 if kind & 6 else 0)
    if at > len(body):
        raise DynregError("aws: malformed PUBLISH")
    try:
        try:
            r = json.loads(memoryview(body)[at:])  # MicroPython parses the buffer in place: no 3 KB copy
        except TypeError:  # CPython takes bytes only
            r = json.loads(body[at:])
    except (ValueError, RuntimeError):  # RuntimeError: CPython's RecursionError on deep nesting
        r = None
    return body[2:2 + n], r if isinstance(r, dict) else None


def refusal(api, r):
    """The one line for a .../rejected reply ({"statusCode", "errorCode", "errorMessage"})."""
    if r is None:
        return "aws: registration refused: %s rejected (not a JSON object)" % api
    return "aws: registration refused: %s rejected: %s %s: %s" % (
        api, shown(r.get("statusCode"), 8), shown(r.get("errorCode"), 40), shown(r.get("errorMessage"), 80))


def _reply(s, base, api, until):
    """The JSON object published on base + "/accepted"; DynregError for base + "/rejected" or past `until`."""
    accepted, rejected = (base + "/accepted").encode(), (base + "/rejected").encode()
    while True:
        gc.collect()  # the 3 KB reply, then its parsed strings, each need one free block
        try:
            kind, body = mqtt.read(s, MAX_REPLY, None, until)
        except DynregError as e:
            raise DynregError("aws: %s: %s" % (api, e))
        if kind == 0x90:
            if b"\x80" in body[2:]:
                raise DynregError("aws: the broker refused a reply subscription (does the claim policy allow it?)")
            continue
        m = message(kind, body)
        if m is None:
            continue  # nothing else is asked for; a stray packet changes nothing
        if m[0] == rejected:
            raise DynregError(refusal(api, m[1]))
        if m[0] == accepted:
            if m[1] is None:
                raise DynregError("aws: %s reply is not a JSON object" % api)
            return m[1]
        log("aws: ignoring a message on %s" % shown(m[0]))


def _send(s, topic, payload):
    s.setblocking(True)  # writes whole; reads stay non-blocking, under the deadline
    s.write(payload if topic is None else mqtt.packet(0x30, mqtt.string(topic) + payload))
    s.setblocking(False)


def parameters(st, name):
    """The template's parameters: NVS aws_params (a JSON object of strings), else {"SerialNumber": name}."""
    text = st.text("aws_params")
    if not text:
        return {"SerialNumber": name}
    try:
        params = json.loads(text)
    except ValueError:
        params = None
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ConfigError("aws: NVS aws_params must be a JSON object of strings")
    return params


def register(st, name, ctx):
    """Provision the thing with the claim certificate; return the NVS items (key, thing name, certificate)."""
    template = st.need("prod_id")
    if not _name_ok(template, "-_", 36):
        raise ConfigError("aws: template name %r must be 1-36 of A-Z a-z 0-9 - _" % template)
    params = parameters(st, name)
    host, port = endpoint(st, ctx)
    try:
        ctx.load_cert_chain(st.secret("claim_cert"), st.secret("claim_key"))
    except (ValueError, OSError) as e:
        raise ConfigError("aws: the claim certificate/key (NVS claim_cert, claim_key) is not valid DER (%s)" % e)
    until = net.deadline(st.int("reg_timeout_ms", 30000))  # the whole exchange, however slow the broker
    s = mqtt.login(ctx, host, port, name, None, None, timeout=5)
    base = "$aws/provisioning-templates/%s/provision/json" % template
    try:
        _send(s, None, mqtt.subscribe(1, (_CREATE + "/accepted", _CREATE + "/rejected", base + "/accepted",
                                          base + "/rejected")) + mqtt.packet(0x30, mqtt.string(_CREATE) + b"{}"))
        r = _reply(s, _CREATE, "CreateKeysAndCertificate", until)
        key = pem_der(r.pop("privateKey", None), KEY_LABELS, "privateKey")  # each PEM goes once converted
        gc.collect()
        cert = pem_der(r.pop("certificatePem", None), ("CERTIFICATE",), "certificatePem")
        token = r.get("certificateOwnershipToken")
        if not isinstance(token, str) or not token:
            raise DynregError("aws: CreateKeysAndCertificate reply holds no certificateOwnershipToken")
        r = None
        _send(s, base, json.dumps({"certificateOwnershipToken": token, "parameters": params}).encode())
        token = None
        thing = _reply(s, base, "RegisterThing", until).get("thingName")
        if not _name_ok(thing, ":_-", 128):
            raise DynregError("aws: RegisterThing reply holds no usable thingName")
    finally:
        try:
            _send(s, None, b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass  # the registration connection is done with either way
        s.close()
    log("aws: provisioned thing %s" % thing)
    # dev_cert means "registered" to flow: it goes last, so a power cut between two writes leaves a board
    # that registers again, never one with a certificate and no thing name to log in as
    return [("dev_key", key), ("thing_name", thing.encode()), ("dev_cert", cert)]
