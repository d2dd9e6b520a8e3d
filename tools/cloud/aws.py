"""AWS IoT Core fleet provisioning by claim as the emulator plays it (docs/platforms/aws.md).

Claim certificate: issued by the emulator's CA at start (state dir aws-claim.pem, aws-claim.key, 0600;
again when the CA is newer) and registered as the account's one claim certificate. Every AWS session
is mutual TLS: a CONNECT over TLS with a client certificate and no username (or the SDKs' "?SDK=..."
metrics username) is AWS's; a certificate that is neither the claim nor a provisioned thing's is
refused (CONNACK 5), one the CA did not sign fails the TLS handshake.
Claim session (any client id of 1-128 of A-Z a-z 0-9 : _ -), the claim policy: publish
$aws/certificates/create/json and $aws/provisioning-templates/<name>/provision/json, subscribe and
receive their .../accepted and .../rejected, nothing else. Replies go to the requesting connection only.
- CreateKeysAndCertificate ({} or any JSON object): accepted {"certificateId": SHA-256 hex of the DER,
  "certificatePem", "privateKey" (RSA-2048 "RSA PRIVATE KEY" as AWS issues, or EC P-256 with
  --aws-key ec256), "certificateOwnershipToken" (342 characters)}; the certificate is inactive until
  RegisterThing.
- RegisterThing {"certificateOwnershipToken", "parameters": {name: string}}: the template (registry
  product) must exist and be enabled ("dynreg"), every parameter without a "default" be given and match
  its "pattern" (standing in for a pre-provisioning hook), the token be one issued and not yet used
  (single use: a success consumes it). Accepted {"deviceConfiguration", "thingName": the template's
  "thing_name" with {Parameter} filled in}; the certificate is active and attached to the thing.
  A thing may be provisioned again (a new certificate replaces the old) until its first login.
- rejected {"statusCode", "errorCode", "errorMessage"}, the emulator's codes: 400 InvalidPayload (not
  JSON), 400 InvalidCertificateOwnershipToken, 400 InvalidParameters, 404 ResourceNotFound (unknown
  template), 403 TemplateDisabled, 409 ResourceAlreadyInUse (the thing has logged in).
Records (devices.json "aws"): "<template>/<claim client id>" -> {"thing", "cert_fp" (= certificateId),
"activated", "registrations", "logins", "round_trips"}.
Thing session: client id = the thing name (the policy the template attaches); topics dt/<thing>/...,
cmd/<thing>/... and $aws/things/<thing>/shadow/...; the first login activates the thing.
"""

import hashlib
import os
import re
import secrets
import threading

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .certs import fingerprint
from .platform import DEVICE, ATTRIBUTES, Platform, compact, json_object, log, round_trips, same, shown
from .state import write_private

OPTIONS = {"dynreg", "parameters", "thing_name", "configuration"}  # a template's options in the registry
ROUND_TRIPS = 3  # the fewest: CONNECT, SUBSCRIBE + CreateKeysAndCertificate, RegisterThing
CLAIM_CERT, CLAIM_KEY = "aws-claim.pem", "aws-claim.key"
CLAIM = ATTRIBUTES + "aws_claim"  # session attribute: a claim session
CREATE = "$aws/certificates/create/json"
PROVISION = re.compile(r"\$aws/provisioning-templates/([0-9A-Za-z_-]{1,36})/provision/json")
NAME = re.compile(r"[A-Za-z0-9:_-]{1,128}")  # client ids and thing names


def add_arguments(parser):
    parser.add_argument("--aws-key", choices=("rsa2048", "ec256"), default="rsa2048",
                        help="key CreateKeysAndCertificate issues (AWS: RSA-2048; ec256 to measure the lighter one)")


def emulate(products, store, pki, args):
    """The platform as tools/cloud/__main__.py runs it (args: its command line)."""
    for product in products.values():
        check_template(product)
    return AwsPlatform(products, store, pki, claim_certificate(pki, os.path.abspath(args.state)), args.aws_key)


def check_template(product):
    """Raise ValueError unless a registry template's own options are well formed."""
    fields, where = product.options, f"registry: aws/{product.pid}"
    params = fields.get("parameters", {})
    if not isinstance(params, dict) or not all(isinstance(p, dict) and set(p) <= {"pattern", "default"}
                                               for p in params.values()):
        raise ValueError(f"{where}: parameters must map names to {{\"pattern\"?, \"default\"?}}")
    for p in params.values():
        re.compile(p.get("pattern", ""))
    if not isinstance(fields.get("thing_name", ""), str) or not isinstance(fields.get("configuration", {}), dict):
        raise ValueError(f"{where}: thing_name must be a string, configuration an object")


def claim_certificate(pki, state):
    """SHA-256 of the claim certificate, issued (EC P-256: the factory's credential) when missing or older
    than the CA."""
    cert, key = os.path.join(state, CLAIM_CERT), os.path.join(state, CLAIM_KEY)
    if not (os.path.exists(cert) and os.path.exists(key)) or os.path.getmtime(cert) < os.path.getmtime(pki.ca_pem):
        cert_pem, key_pem, _ = pki.issue_device_cert("dynreg AWS fleet provisioning claim")
        write_private(key, key_pem)
        write_private(cert, cert_pem)
        log(f"generated aws claim certificate {cert}")
    with open(cert, "rb") as f:
        return fingerprint(x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER))


class Rejected(Exception):
    """A .../rejected reply."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.reply = {"statusCode": status, "errorCode": code, "errorMessage": message}


def _digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


class AwsPlatform(Platform):
    """Fleet provisioning and the thing logins for the templates under "aws" in the registry."""

    name = "aws"

    def __init__(self, products, store, pki, claim_fp, key_type):
        self.products = products
        self.store = store
        self.pki = pki
        self.claim_fp = claim_fp
        self.key_type = key_type
        self.lock = threading.Lock()
        self.pending = {}  # SHA-256 of an unused ownership token -> its certificate's SHA-256 (= certificateId)

    # -- logins ---------------------------------------------------------------------------

    def mqtt_authenticate(self, session):
        der = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
        if not der or not (session.username is None or session.username.startswith("?")):
            return None
        who = session.client_id or ""
        if not NAME.fullmatch(who):
            log(f"mqtt aws login {shown(who)} refused: client id must be 1-128 of A-Z a-z 0-9 : _ -")
            return False
        fp = fingerprint(der)
        if same(fp, self.claim_fp):
            session.attributes[DEVICE] = f"claim/{who}"
            session.attributes[CLAIM] = True
            log(f"mqtt aws claim login {who} ok")
            return True
        with self.store.lock:  # a registration cannot slip in between check and activation
            key, record = self.store.find(self.name, "cert_fp", fp)
            if record is None:
                log(f"mqtt aws login {who} refused: certificate is neither the claim certificate nor a thing's")
                return False
            thing = record["thing"]
            if who != thing:
                log(f"mqtt aws login {who} refused: client id must be the thing name {thing}")
                return False
            note = "" if record.get("activated") else "; device activated"  # its first login
            record.update(activated=True, logins=record.get("logins", 0) + 1)
            self.store.put(self.name, key, record)
        session.attributes[DEVICE] = thing
        log(f"mqtt login {thing} ok (aws certificate{note})")
        return True

    # -- topics ---------------------------------------------------------------------------

    def topic_allowed(self, session, topic, action):
        if session.attributes.get(CLAIM):  # the claim policy: the provisioning APIs only
            request, _, reply = topic.rpartition("/") if topic.endswith(("/accepted", "/rejected")) else (topic, "", "")
            if request != CREATE and not PROVISION.fullmatch(request):
                return False
            return (action == "publish") == (not reply)
        thing = session.attributes[DEVICE]
        parts = topic.split("/")
        return (len(parts) > 2 and parts[0] in ("dt", "cmd") and parts[1] == thing) or \
            (len(parts) > 3 and parts[:4] == ["$aws", "things", thing, "shadow"])

    def is_registration_reply(self, session, topic_filter):
        return bool(session.attributes.get(CLAIM)) and topic_filter == CREATE + "/accepted"

    def reply_to_sender(self, session, topic):
        return topic.startswith("$aws/")

    # -- the two APIs ---------------------------------------------------------------------------

    def on_publish(self, session, topic, payload):
        if not session.attributes.get(CLAIM):
            return None  # a thing's own topics: delivered as usual
        who = session.attributes[DEVICE]
        api, base = ("CreateKeysAndCertificate", CREATE) if topic == CREATE else ("RegisterThing", topic)
        try:
            request = json_object(payload)
            if request is None:
                raise Rejected(400, "InvalidPayload", "the request is not a JSON object")
            reply, outcome = self._create() if topic == CREATE else self._register(session, topic, request)
        except Rejected as e:
            log(f"aws {api} {who} rejected: {e.reply['statusCode']} {e.reply['errorCode']}: {e}")
            return [(base + "/rejected", compact(e.reply))]
        log(f"aws {api} {who} ok ({outcome}; {round_trips(session)} round trips)")
        return [(base + "/accepted", compact(reply))]

    def _create(self):
        key = rsa.generate_private_key(65537, 2048) if self.key_type == "rsa2048" else ec.generate_private_key(
            ec.SECP256R1())
        cert_pem, _, fp = self.pki.issue_device_cert("AWS IoT Certificate", key)
        token = secrets.token_urlsafe(256)
        with self.lock:
            self.pending[_digest(token)] = fp
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()).decode()
        return {"certificateId": fp, "certificatePem": cert_pem, "privateKey": key_pem,
                "certificateOwnershipToken": token}, f"{self.key_type} certificate {fp[:12]}"

    def _register(self, session, topic, request):
        template = self.products.get(PROVISION.fullmatch(topic).group(1))
        if template is None:
            raise Rejected(404, "ResourceNotFound", "no provisioning template of that name")
        if not template.dynreg:
            raise Rejected(403, "TemplateDisabled", "the provisioning template is disabled")
        token, given = request.get("certificateOwnershipToken"), request.get("parameters", {})
        if not isinstance(token, str) or not isinstance(given, dict) or \
                not all(isinstance(v, str) for v in given.values()):
            raise Rejected(400, "InvalidPayload", "certificateOwnershipToken must be a string, parameters strings")
        values = {}
        for name, spec in template.options.get("parameters", {}).items():
            value = given.get(name, spec.get("default"))
            if value is None:
                raise Rejected(400, "InvalidParameters", f"parameter {name} is required")
            if not re.fullmatch(spec.get("pattern", ".*"), value):
                raise Rejected(400, "InvalidParameters", f"parameter {name} does not match the template")
            values[name] = value
        try:
            thing = template.options.get("thing_name", "{SerialNumber}").format(**values)
        except (KeyError, IndexError, ValueError):
            thing = ""
        if not NAME.fullmatch(thing):
            raise Rejected(400, "InvalidParameters", "the thing name the parameters make is not valid")
        with self.lock, self.store.lock:
            issued = self.pending.get(_digest(token))
            if issued is None:
                raise Rejected(400, "InvalidCertificateOwnershipToken", "unknown or already used ownership token")
            _, other = self.store.find(self.name, "thing", thing)
            if other and other.get("activated"):
                raise Rejected(409, "ResourceAlreadyInUse", "the thing is provisioned and its certificate in use")
            del self.pending[_digest(token)]  # single use
            key = f"{template.pid}/{session.client_id}"  # as the other platforms: <product>/<device's own name>
            record = self.store.get(self.name, key) or {"registrations": 0, "logins": 0}
            record.update(thing=thing, cert_fp=issued, activated=False,
                          registrations=record["registrations"] + 1, round_trips=round_trips(session))
            self.store.put(self.name, key, record)
        reply = {"deviceConfiguration": template.options.get("configuration", {}), "thingName": thing}
        return reply, f"thing {thing}, registration {record['registrations']}"
