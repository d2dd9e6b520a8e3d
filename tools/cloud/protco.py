"""Protco rlink v2 as the emulator plays it (docs/platforms/protco.md): signed registration over MQTT.

Both logins sign: Username "<who>|signMethod=<hmacSha256|hmacSha1>,ts=<unix s>" (method name in
any case), Password = lowercase hex HMAC(key, "uuid=<who>,ts=<ts>"); ts must lie within
--ts-window of the emulator's clock (0 = no check).
Registration login: ClientId "register_<pid>_<unique>" (unique: 1-64 of A-Z a-z 0-9 - . : @, no
"_"), who = pid, key = the product secret. That session may only subscribe
register/v2/<pid>/<unique>/register_response and publish register/v2/<pid>/<unique>/register.
A request {"id", "ts", "code": "register", "ack": 1, "data": {"barcode"?, "replacePid"?, "secret"?}}
is answered {"res": 0, "msg": "success", "id", "ts", "code": "register", "data": {"pid", "uuid":
"rn01" + 16 hex, "secret": 32 hex, "mac": ""}} (always: "ack" is not looked at). With replacePid
(any product in the registry) and that product's secret the device belongs to replacePid.
Refusals (res, Protco's codes): 1003 not a JSON object, 1002 no id / code not "register" /
replacePid without the right secret / bad field, 1005 replacePid unknown, 1006 dynamic
registration off, 17032 already activated. Before activation a new request for the same
<pid>/<unique> keeps the uuid and issues a new secret.
Reuse: a registration password signs only "uuid=<pid>,ts=<ts>", not the unique id, so the
emulator binds each (pid, ts, password) to the first unique id registered with it, for twice
--ts-window and across restarts (state dir seen-protco.json); that signature is then refused for
any other unique id: CONNACK 5, or res 1002 for a session that logged in before. The device's own
retry with the same signature still works. The cost: two devices of one product registering in
the same second collide, and the later one registers at its next attempt.
Device login: ClientId "rlink_<uuid>_V2", who = uuid, key = the device secret; the first one
activates the device. Topics: publish rlink/v2/<pid>/<uuid>/report and .../issue_response,
subscribe .../issue and .../report_response. A report with "ack": 1 gets a report_response.
After a device's first property_report of a session the emulator sends it a "ping" and a
"property_set" {"led": 1} on .../issue (product option probe_commands) and counts the answers
to them on .../issue_response in the record ("commands_answered").
"""

import hashlib
import hmac
import re
import secrets
import time

from .platform import (ATTRIBUTES, DEVICE, RECORD, MqttRegistration, Refused, Registration,
                       RegistrationRefused, compact, json_object, log, same, shown)
from .state import seen_signatures

HASHES = {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1}
USERNAME = re.compile(r"([^|]+)\|signMethod=([^,]*),ts=(\d{1,12})")
UNIQUE = re.compile(r"[A-Za-z0-9\-.:@]{1,64}")
INVALID, FORMAT, NO_PRODUCT, NOT_ACTIVATED, BOUND = 1002, 1003, 1005, 1006, 17032
REUSED = "registration signature already used for another device id (replayed CONNECT)"
COMMANDS = ATTRIBUTES + "protco_commands"  # session attribute: {command id: code} sent, not yet answered
PROBED = ATTRIBUTES + "protco_probed"      # session attribute: the commands have been sent


def sign(key, who, ts, method="hmacSha256"):
    """Lowercase hex HMAC(key as ASCII, "uuid=<who>,ts=<ts>") with hmacSha256 or hmacSha1."""
    return hmac.new(key.encode(), f"uuid={who},ts={ts}".encode(), HASHES[method.lower()]).hexdigest()


OPTIONS = {"secret", "dynreg", "probe_commands", "res", "reply"}  # a product's options in the registry
ROUND_TRIPS = 2  # the fewest a registration takes: CONNECT, then SUBSCRIBE + PUBLISH


def emulate(products, store, pki, args):
    """The platform as tools/cloud/__main__.py runs it (args: its command line)."""
    return ProtcoPlatform(products, store, args.ts_window, seen_signatures(args, "protco"))


class ProtcoPlatform(MqttRegistration):
    """Registration and MQTT rules for the products under "protco" in the registry."""

    name = "protco"
    id_field = "id"
    code_field = "res"
    format_error = FORMAT
    bad_request = INVALID

    def __init__(self, products, store, ts_window, seen):
        super().__init__(products, store)
        self.ts_window = ts_window
        self.seen = seen  # state.SeenOnce of registration signatures (pid, ts, password) -> unique

    # -- logins ---------------------------------------------------------------------------

    def mqtt_authenticate(self, session):
        match = USERNAME.fullmatch(session.username or "")
        if match is None:
            return None
        who, method, ts = match.groups()
        try:
            if method.lower() not in HASHES:
                raise Refused("signMethod must be hmacSha256 or hmacSha1")
            if self.ts_window and abs(time.time() - int(ts)) > self.ts_window:
                raise Refused("ts out of the allowed window")

            def verify(key):
                if not same(sign(key, who, ts, method), (session.password or "").lower()):
                    raise Refused("wrong signature")

            client = session.client_id or ""
            if client == f"rlink_{who}_V2":
                key, _ = self.store.find(self.name, "uuid", who)
                if key is None:
                    raise Refused("unknown uuid")
                return self.device_login(session, key, verify)
            if not client.startswith(f"register_{who}_"):
                raise Refused("client id must be register_<pid>_<unique> or rlink_<uuid>_V2")
            product = self.products.get(who)
            if product is None:
                raise Refused("unknown product")
            unique = client[len(f"register_{who}_"):]
            if not UNIQUE.fullmatch(unique):
                raise Refused("unique must be 1-64 characters of A-Z a-z 0-9 - . : @")
            verify(product.secret)
            proof = (who, ts, (session.password or "").lower())
            if self.seen.first(proof) not in (None, unique):
                raise Refused(REUSED)
            base = f"register/v2/{who}/{unique}/register"
            return self.start_registration(session, Registration(product, f"{who}/{unique}", base,
                                                                 base + "_response", proof))
        except Refused as e:
            registration = (session.client_id or "").startswith("register_")
            return self.refuse_login(session.client_id if registration else who, e, registration)

    def device_label(self, key, record):
        return f"{record['pid']}/{record['uuid']}"

    # -- registration -----------------------------------------------------------------------

    def register(self, reg, request, request_id, record):
        if request.get("code") != "register":
            raise RegistrationRefused(INVALID, "invalid parameter: code must be \"register\"")
        data = request.get("data", {})
        if not isinstance(data, dict):
            raise RegistrationRefused(INVALID, "invalid parameter: data must be an object")
        if not reg.product.dynreg:
            raise RegistrationRefused(NOT_ACTIVATED, "service not activated")
        pid = self._product_of(reg.product, data)
        barcode = data.get("barcode")
        if barcode is not None and not isinstance(barcode, str):
            raise RegistrationRefused(INVALID, "invalid parameter: barcode must be a string")
        record = record or {"registrations": 0, "logins": 0, "commands_answered": 0}
        if record.get("activated"):
            raise RegistrationRefused(BOUND, "device is bound")
        # the signature covers pid and ts only, not the unique id: the first unique id registered with
        # it owns it, so a captured CONNECT cannot register (or take) another device's id
        unique = reg.key.split("/", 1)[1]
        if self.seen.claim(reg.proof, unique) not in (None, unique):
            raise RegistrationRefused(INVALID, REUSED)
        record.setdefault("uuid", "rn01" + secrets.token_hex(8))
        record.update(pid=pid, secret=secrets.token_hex(16), activated=False,
                      registrations=record["registrations"] + 1)
        if barcode is not None:
            record["barcode"] = barcode
        log(f"protco {reg.key} is device {pid}/{record['uuid']} (registration {record['registrations']})")
        return record, {"res": 0, "msg": "success", "id": request_id, "ts": int(time.time()), "code": "register",
                        "data": {"pid": pid, "uuid": record["uuid"], "secret": record["secret"], "mac": ""}}

    def _product_of(self, product, data):
        """The product the device will belong to: its own, or replacePid proven by that one's secret."""
        replace = data.get("replacePid")
        if replace is None:
            return product.pid
        target = self.products.get(replace) if isinstance(replace, str) else None
        if target is None:
            raise RegistrationRefused(NO_PRODUCT, "product does not exist (replacePid)")
        given = data.get("secret")
        if not isinstance(given, str) or not same(given, target.secret):
            raise RegistrationRefused(INVALID, "invalid parameter: replacePid needs that product's secret")
        return target.pid

    def refusal(self, request_id, code, message):
        return {"res": code, "msg": message, "id": request_id, "ts": int(time.time()), "code": "register",
                "data": {}}

    # -- logged-in devices --------------------------------------------------------------------

    def device_topic_allowed(self, session, topic, action):
        base = f"rlink/v2/{session.attributes[DEVICE]}/"
        kinds = ("report", "issue_response") if action == "publish" else ("issue", "report_response")
        return topic in (base + kind for kind in kinds)

    def on_device_publish(self, session, topic, payload):
        device = session.attributes[DEVICE]
        base = f"rlink/v2/{device}/"
        message = json_object(payload) or {}
        if topic == base + "issue_response":
            self._answered(session, message)
            return None
        out = [(topic, payload)]
        if message.get("ack") == 1:
            out.append((base + "report_response", compact({"id": message.get("id"), "ts": int(time.time()),
                                                           "code": message.get("code"), "res": 0,
                                                           "msg": "success"})))
        if message.get("code") == "property_report" and not session.attributes.get(PROBED):
            session.attributes[PROBED] = True
            product = self.products.get(device.split("/", 1)[0])
            if product is not None and product.probe_commands:
                out += self._commands(session, base + "issue")
        return out

    def _commands(self, session, topic):
        """A ping and a property_set for the device, remembered to match the answers."""
        sent = session.attributes.setdefault(COMMANDS, {})
        out = []
        for code, data in (("ping", {}), ("property_set", {"properties": {"led": 1}})):
            command_id = "cmd-" + secrets.token_hex(4)
            sent[command_id] = code
            out.append((topic, compact({"id": command_id, "ts": int(time.time()), "code": code, "data": data})))
        log(f"protco {session.attributes[DEVICE]} reported; sent ping and property_set")
        return out

    def _answered(self, session, message):
        command_id = message.get("id")
        code = session.attributes.get(COMMANDS, {}).pop(command_id, None) if isinstance(command_id, str) else None
        device = session.attributes[DEVICE]
        if code is None:
            log(f"protco {device} answered a command the emulator did not send ({shown(command_id)})")
            return
        with self.store.lock:
            record = self.store.get(self.name, session.attributes[RECORD])
            record["commands_answered"] = record.get("commands_answered", 0) + 1
            self.store.put(self.name, session.attributes[RECORD], record)
        log(f"protco {device} answered {code}: res {shown(message.get('res'))}")
