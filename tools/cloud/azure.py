"""Azure IoT Hub Device Provisioning Service and IoT Hub as the emulator plays them (docs/platforms/azure.md).

Both run on the one broker, told apart by the CONNECT username; a product is an enrollment group
under its ID scope, its secret the group's symmetric key (base64).

DPS: ClientId = registration id, Username "<scope>/registrations/<registration id>/api-version=<v>"
(anything after a "&" is ignored: the Python SDK appends ClientVersion), Password a SAS token
(sr, sig, se, skn=registration optional, any order). The session may subscribe only
$dps/registrations/res/# and publish the register PUT and the operation-status GET; each reply goes
to $dps/registrations/res/<status>/?$rid=<the request's rid>[&retry-after=<s>] of that session only.
The PUT {"registrationId": ...} is checked in this order: ID scope known, registration id of a-z 0-9 -,
enrollment enabled ("dynreg"), SAS (HMAC-SHA256 with the device key derived from the group key,
over the sr bytes as sent + "\\n" + se; se not past), body naming the same registration id. A
refusal is {"errorCode", "trackingId", "message", "timestampUtc"} with status 400 or 401 (codes
modelled on DPS's: 400004 bad registration id or body, 401002 unauthorized, 404201 unknown
operation). Success is 202 {"operationId", "status": "assigning"}; each GET is answered 202 until the
product's "polls"-th, which gets 200 with "assigned" and the registrationState (assignedHub = the
product's "hub", deviceId = the registration id), or "failed" (errorCode 400207) when the
product's "allocation" is "failed". A device may register again at any time (its key is derived:
the same identity).

IoT Hub: ClientId = deviceId, Username "<hub>/<deviceId>/?api-version=<v>[&...]", Password a SAS
token over "<hub>/devices/<deviceId>" signed with the device key (no skn); wrong, unknown or expired
is CONNACK 5. The broker closes the connection when the token's se passes. Topics: publish
devices/<id>/messages/events/... (telemetry, logged), subscribe and receive
devices/<id>/messages/devicebound/#.
"""

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import unquote

from .platform import DEVICE, EXPIRES, RECORD, Platform, Refused, compact, json_object, log, round_trips, same, shown

OPTIONS = {"secret", "dynreg", "polls", "retry_after", "hub", "allocation"}  # a product's options in the registry
POLLS = 2  # operation-status GETs a registration takes by default (the last one gets the assignment)
ROUND_TRIPS = 2 + POLLS  # CONNECT, SUBSCRIBE + PUT, then each GET
HUB = "sim-hub.azure-devices.net"
REG_ID = re.compile(r"[a-z0-9-]{1,128}")
DPS_USER = re.compile(r"([^/]+)/registrations/([^/]+)/api-version=[^&/]+(&.*)?")
HUB_USER = re.compile(r"([^/]+)/([^/]+)/\?(.*)")
RES = "$dps/registrations/res/"
PUT = "$dps/registrations/PUT/iotdps-register/?"
GET = "$dps/registrations/GET/iotdps-get-operationstatus/?"
DPS = "dynreg.azure_dps"  # session attribute: the DPS session's state


def emulate(products, store, pki, args):
    """The platform as tools/cloud/__main__.py runs it (args: its command line)."""
    for pid, product in products.items():
        check_product(pid, product.options)
    return AzurePlatform(products, store)


def check_product(pid, options):
    """Raise ValueError when a product's own options are unusable."""
    where = f"registry: azure/{pid}"
    try:
        if not base64.b64decode(options["secret"], validate=True):
            raise ValueError
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: secret must be the group key in base64") from None
    for name, low in (("polls", 1), ("retry_after", 0)):
        value = options.get(name, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{where}: {name} must be an integer of at least {low}")
    if not isinstance(options.get("hub", HUB), str) or options.get("allocation", "assigned") not in ("assigned",
                                                                                                      "failed"):
        raise ValueError(f"{where}: hub must be a host name, allocation \"assigned\" or \"failed\"")


def derive(group_key, regid):
    """The device key the enrollment group's key gives a registration id (base64 text)."""
    digest = hmac.new(base64.b64decode(group_key), regid.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def check_sas(password, resource, key, policy):
    """Verify a SAS token for `resource` signed with the base64 `key`; return its expiry. Raises Refused."""
    prefix = "SharedAccessSignature "
    if not password.startswith(prefix):
        raise Refused("password is no SharedAccessSignature")
    fields = {}
    for part in password[len(prefix):].split("&"):
        name, eq, value = part.partition("=")
        if not eq or name in fields:
            raise Refused("malformed SAS token")
        fields[name] = value
    if not {"sr", "sig", "se"} <= set(fields) or set(fields) - {"sr", "sig", "se", "skn"}:
        raise Refused("SAS token needs sr, sig and se (and skn only)")
    if fields.get("skn", policy) != policy:
        raise Refused(f"SAS policy must be {policy or 'absent'}")
    if unquote(fields["sr"]).lower() != resource.lower():
        raise Refused("SAS token is for another resource")
    if not fields["se"].isdigit():
        raise Refused("SAS expiry is not a number")
    # the signature covers the sr value exactly as sent (%2f and %2F sign differently)
    expected = base64.b64encode(hmac.new(base64.b64decode(key), f"{fields['sr']}\n{fields['se']}".encode(),
                                         hashlib.sha256).digest()).decode()
    if not same(unquote(fields["sig"]), expected):
        raise Refused("SAS signature does not match")
    if int(fields["se"]) <= time.time():
        raise Refused("SAS token expired")
    return int(fields["se"])


def _query(text):
    """{name: value} of a topic's query part (no percent-decoding: DPS topics carry none)."""
    return dict(part.partition("=")[::2] for part in text.split("&") if part)


def _error(status, code, message):
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return status, {"errorCode": code, "trackingId": str(uuid.uuid4()), "message": message, "timestampUtc": now}


class AzurePlatform(Platform):
    """DPS registration and IoT Hub logins for the enrollment groups under "azure" in the registry."""

    name = "azure"

    def __init__(self, products, store):
        self.products = products
        self.store = store

    # -- logins --------------------------------------------------------------------------------

    def mqtt_authenticate(self, session):
        user = session.username or ""
        dps, hub = DPS_USER.fullmatch(user), HUB_USER.fullmatch(user)
        if dps:
            scope, regid = dps.group(1), dps.group(2)
            if session.client_id != regid:
                log(f"mqtt azure registration login {shown(regid)} refused: client id must be the registration id")
                return False
            key = f"{scope}/{regid}"
            session.attributes[DEVICE] = session.attributes[RECORD] = key
            session.attributes[DPS] = {"scope": scope, "regid": regid, "password": session.password or "",
                                       "rids": set(), "op": None, "polls": 0}
            log(f"mqtt azure registration login {shown(key)} ok")
            return True
        if hub and "api-version=" in hub.group(3):
            return self._hub_login(session, hub.group(1), hub.group(2))
        return None

    def _hub_login(self, session, hub, devid):
        try:
            if session.client_id != devid:
                raise Refused("client id must be the device id")
            with self.store.lock:
                key, record = self.store.find(self.name, "device_id", devid)
                if record is None or record.get("hub") != hub:
                    raise Refused("no such device on this hub (not provisioned)")
                expiry = check_sas(session.password or "", f"{hub}/devices/{devid}", record["secret"], None)
                first = not record.get("activated")
                record["activated"] = True
                record["logins"] = record.get("logins", 0) + 1
                self.store.put(self.name, key, record)
        except Refused as e:
            log(f"mqtt login {shown(devid)} refused: {e}")
            return False
        session.attributes[DEVICE] = devid
        session.attributes[RECORD] = key
        session.attributes[EXPIRES] = expiry
        log(f"mqtt login {shown(devid)} ok (azure hub {shown(hub)}; token valid {expiry - int(time.time())} s"
            f"{'; device activated' if first else ''})")
        return True

    # -- topics --------------------------------------------------------------------------------

    def topic_allowed(self, session, topic, action):
        dps = session.attributes.get(DPS)
        if dps is not None:
            if action == "subscribe":
                return topic == RES + "#"
            if action == "publish":
                return topic.startswith((PUT, GET))
            # replies go to the session that sent the request: its own rids only
            return topic.startswith(RES) and _query(topic.partition("?")[2]).get("$rid") in dps["rids"]
        prefix = f"devices/{session.attributes.get(DEVICE)}/messages/"
        if action == "publish":
            return topic.startswith(prefix + "events/")
        if action == "subscribe":
            return topic == prefix + "devicebound/#"
        return topic.startswith(prefix + "devicebound/")

    def is_registration_reply(self, session, topic_filter):
        return DPS in session.attributes and topic_filter == RES + "#"

    def on_publish(self, session, topic, payload):
        dps = session.attributes.get(DPS)
        if dps is None:  # logged, not counted in the record: devices.json is the console, edited beside us
            log(f"azure {shown(session.attributes[DEVICE])} telemetry: {len(payload)} bytes")
            return None
        query = _query(topic.partition("?")[2])
        rid = query.get("$rid")
        if not rid or len(rid) > 64:
            log(f"azure registration {shown(session.attributes[DEVICE])}: request without a usable $rid ignored")
            return []
        dps["rids"].add(rid)
        if topic.startswith(PUT):
            status, body, after = self._register(session, dps, payload)
        else:
            status, body, after = self._status(session, dps, query.get("operationId"))
        reply = f"{RES}{status}/?$rid={rid}" + ("" if after is None else f"&retry-after={after}")
        return [(reply, compact(body))]

    # -- the registration ----------------------------------------------------------------------

    def _register(self, session, dps, payload):
        key = session.attributes[DEVICE]
        product = self.products.get(dps["scope"])
        try:
            if product is None:
                raise _Refusal(*_error(401, 401002, "Unauthorized: unknown ID scope"))
            if not REG_ID.fullmatch(dps["regid"]):
                raise _Refusal(*_error(400, 400004, "Invalid registration id: lower-case letters, digits and '-'"))
            if not product.dynreg:
                raise _Refusal(*_error(401, 401002, "Unauthorized: the enrollment group is disabled"))
            try:
                check_sas(dps["password"], f"{dps['scope']}/registrations/{dps['regid']}",
                          derive(product.secret, dps["regid"]), "registration")
            except Refused as e:
                raise _Refusal(*_error(401, 401002, f"Unauthorized: {e}")) from None
            request = json_object(payload)
            if request is None or request.get("registrationId") != dps["regid"]:
                raise _Refusal(*_error(400, 400004, "Invalid request body: registrationId must be the registration id"))
        except _Refusal as e:
            log(f"azure registration {shown(key)} refused: {e.status} {e.body['errorCode']}: {e.body['message']}")
            return e.status, e.body, None
        dps["op"] = f"4.{secrets.token_hex(8)}.{uuid.uuid4()}"
        dps["polls"] = product.options.get("polls", POLLS)
        after = product.options.get("retry_after", 1)
        log(f"azure registration {shown(key)}: 202 assigning (retry-after {after} s)")
        return 202, {"operationId": dps["op"], "status": "assigning"}, after

    def _status(self, session, dps, op):
        key = session.attributes[DEVICE]
        if dps["op"] is None or op is None or not same(op, dps["op"]):
            status, body = _error(404, 404201, "Operation not found")
            log(f"azure registration {shown(key)} refused: 404 404201: operation not found")
            return status, body, None
        product = self.products[dps["scope"]]
        dps["polls"] -= 1
        after = product.options.get("retry_after", 1)
        if dps["polls"] > 0:
            return 202, {"operationId": op, "status": "assigning"}, after
        regid, trips = dps["regid"], round_trips(session)
        now = datetime.now(timezone.utc).isoformat()
        if product.options.get("allocation") == "failed":
            log(f"azure registration {shown(key)} failed: allocation (test knob) ({trips} round trips)")
            return 200, {"operationId": op, "status": "failed", "registrationState": {
                "registrationId": regid, "status": "failed", "errorCode": 400207,
                "errorMessage": "Custom allocation failed with status code: 400", "createdDateTimeUtc": now,
                "lastUpdatedDateTimeUtc": now}}, None
        hub = product.options.get("hub", HUB)
        with self.store.lock:
            record = self.store.get(self.name, key) or {"registrations": 0, "logins": 0, "activated": False}
            record.update(secret=derive(product.secret, regid), hub=hub, device_id=regid, round_trips=trips,
                          registrations=record["registrations"] + 1)
            self.store.put(self.name, key, record)
        dps["op"] = None
        log(f"azure registration {shown(key)} assigned to {hub} ({trips} round trips)")
        return 200, {"operationId": op, "status": "assigned", "registrationState": {
            "registrationId": regid, "createdDateTimeUtc": now, "assignedHub": hub, "deviceId": regid,
            "status": "assigned", "substatus": "initialAssignment", "lastUpdatedDateTimeUtc": now,
            "etag": f"\"{secrets.token_hex(8)}\""}}, None


class _Refusal(Exception):
    def __init__(self, status, body):
        super().__init__(status)
        self.status, self.body = status, body
