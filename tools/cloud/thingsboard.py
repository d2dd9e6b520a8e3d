"""ThingsBoard as the emulator plays it (docs/platforms/thingsboard.md): device provisioning over MQTT.

Provisioning login: username "provision" (or client id "provision"), any password: always accepted
(CONNACK 0); that session may only publish /provision/request and subscribe /provision/response.
A request {"deviceName", "provisionDeviceKey", "provisionDeviceSecret", "credentialsType"?,
"token"? | "clientId"?, "username"?, "password"?} is answered on /provision/response with the rules
of ThingsBoard's DeviceProvisionServiceImpl, as a device profile (a product: key = its id, secret =
its "secret") configures them:
- key or secret missing, unknown key, provisioning disabled ("dynreg": false), wrong secret:
  {"status": "NOT_FOUND", "errorMsg": "Provision data was not found!"};
- a deviceName that is blank once trimmed, and per strategy:
  "Allow to create new devices" ("auto_create": true): a device of that name exists already;
  "Check for pre-provisioned devices" ("auto_create": false): the name is not in "devices":
  {"status": "FAILURE", "errorMsg": "Failed to provision device!"};
- else {"status": "SUCCESS", "credentialsType": "ACCESS_TOKEN", "credentialsValue": "<token>"}: a new
  device gets the token it sent or a new 20-character one; with "credentialsType": "MQTT_BASIC" it
  gets the clientId / username / password it sent, answered as {"credentialsType": "MQTT_BASIC",
  "credentialsValue": {"clientId", "userName", "password"}}; a pre-provisioned device gets its own
  (console-made) access token, the same every time it asks.
A request that is not a JSON object gets no reply (the server closes such a session).
Device login: username = the access token (password not looked at), or MQTT_BASIC client id, user
name and password; else CONNACK 5. Topics: publish v1/devices/me/telemetry, .../attributes,
.../rpc/response/<id> and client-side .../rpc/request/<id>; subscribe .../rpc/request/+,
.../attributes, .../attributes/response/+, .../rpc/response/+. After a device's first telemetry of a
session the emulator sends it the server-side RPC {"method": "ping", "params": {}} on
v1/devices/me/rpc/request/<id> (product option probe_commands) and counts the answers on
.../rpc/response/<id> ("rpc_answered"). "me" topics are the same for every device: each session
receives only the messages the emulator addressed to it (a provisioning reply too).
"""

import hashlib
import itertools
import re
import secrets
import string
import threading

from .platform import (ATTRIBUTES, DEVICE, RECORD, REGISTRATION, MqttRegistration, Refused, Registration,
                       compact, json_object, log, round_trips, same, shown)

PROVISION = "provision"
REQUEST, RESPONSE = "/provision/request", "/provision/response"
ME = "v1/devices/me/"
RPC_REQUEST, RPC_RESPONSE = ME + "rpc/request/", ME + "rpc/response/"
NOT_FOUND = {"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"}
FAILURE = {"errorMsg": "Failed to provision device!", "status": "FAILURE"}
TOKEN_CHARS = string.ascii_letters + string.digits
# usernames this platform claims as access tokens (the other platforms' have | & ; / ? = in them)
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9._~-]{1,128}")
INBOX = ATTRIBUTES + "tb_inbox"      # session attribute: topics addressed to this session, not yet delivered
PENDING = ATTRIBUTES + "tb_pending"  # session attribute: {rpc id: method} sent, not yet answered
PROBED = ATTRIBUTES + "tb_probed"    # session attribute: the ping has been sent

OPTIONS = {"secret", "dynreg", "auto_create", "devices", "probe_commands", "reply"}  # a product's options
ROUND_TRIPS = 2  # the fewest a provisioning takes: CONNECT, then (SUBSCRIBE +) PUBLISH


def emulate(products, store, pki, args):
    """The platform as tools/cloud/__main__.py runs it (args: its command line)."""
    for product in products.values():
        if product.reply == "other_id":
            raise ValueError(f"registry: thingsboard/{product.pid}: a provisioning request has no id: "
                             "reply \"other_id\" means nothing here")
    return ThingsBoardPlatform(products, store)


def digest(*parts):
    """The index a credential is found by (its SHA-256, as ThingsBoard indexes MQTT credentials by a hash):
    looking it up compares no secret byte by byte."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


class Failed(Exception):
    """A provisioning request refused: the reply (NOT_FOUND or FAILURE) and why, for the log."""

    def __init__(self, reply, why):
        super().__init__(why)
        self.reply = reply


class ThingsBoardPlatform(MqttRegistration):
    """Provisioning and MQTT rules for the device profiles under "thingsboard" in the registry."""

    name = "thingsboard"

    def __init__(self, products, store):
        super().__init__(products, store)
        self._rpc_ids = itertools.count(1)  # request ids are unique across sessions: "me" topics are shared
        self._lock = threading.Lock()

    # -- logins -------------------------------------------------------------------------------

    def mqtt_authenticate(self, session):
        user, client = session.username or "", session.client_id or ""
        if PROVISION in (user, client):
            reg = Registration(None, "", REQUEST, RESPONSE)
            session.attributes[DEVICE] = f"provision:{shown(client)}"
            session.attributes[REGISTRATION] = reg
            log(f"mqtt thingsboard provisioning login {shown(client)} ok")
            return True
        password = session.password or ""
        key, _ = self.store.find(self.name, "basic_id", digest(client, user))
        if key is not None:
            return self._login(session, key, lambda secret: _check(password, secret, "wrong MQTT_BASIC password"))
        key, _ = self.store.find(self.name, "token_id", digest(user))
        if key is not None:
            return self._login(session, key, lambda secret: _check(user, secret, "wrong access token"))
        if not TOKEN_SHAPE.fullmatch(user):
            return None
        return self.refuse_login(client, "unknown access token or MQTT_BASIC credentials", False)

    def _login(self, session, key, verify):
        try:
            return self.device_login(session, key, verify)
        except Refused as e:
            return self.refuse_login(session.client_id, e, False)

    def device_label(self, key, record):
        return record["name"]

    # -- provisioning -------------------------------------------------------------------------

    def on_publish(self, session, topic, payload):
        if session.attributes.get(REGISTRATION) is None:
            return self.on_device_publish(session, topic, payload)
        trips = round_trips(session)
        request = json_object(payload)
        if request is None:
            log(f"thingsboard provisioning {session.attributes[DEVICE]}: request is not a JSON object; no reply")
            return []
        product = self.products.get(request.get("provisionDeviceKey")) if isinstance(
            request.get("provisionDeviceKey"), str) else None
        try:
            with self.store.lock:
                key, record, reply = self._provision(product, request)
                record["round_trips"] = trips
                self.store.put(self.name, key, record)
            outcome = f"{shown(record['name'])} ok ({reply['credentialsType']}, provisioning {record['registrations']})"
        except Failed as e:
            reply, outcome = e.reply, f"refused: {e.reply['status']}: {e}"
        note = ""
        if product is not None and product.reply == "none":
            note = "; no reply: test knob"
        log(f"thingsboard provisioning {outcome} ({trips} round trips{note})")
        return [] if note else [self._send(session, RESPONSE, reply)]

    def _provision(self, product, request):
        """(record key, record, SUCCESS reply); raises Failed. Runs under store.lock."""
        name = request.get("deviceName")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise Failed(FAILURE, "deviceName is empty")
        given = request.get("provisionDeviceSecret")
        if not isinstance(given, str) or not given or product is None:
            raise Failed(NOT_FOUND, "no provision key / secret, or an unknown key")
        if not product.dynreg:
            raise Failed(NOT_FOUND, "provisioning is disabled in this device profile")
        if not same(given, product.secret):
            raise Failed(NOT_FOUND, "wrong provision secret")
        name = name.strip() if name else "".join(secrets.choice(TOKEN_CHARS) for _ in range(20))
        key = f"{product.pid}/{name}"
        if not product.auto_create:
            if name not in product.devices:
                raise Failed(FAILURE, "no pre-provisioned device of that name (check pre-provisioned devices)")
            record = self.store.get(self.name, key) or self._new(product, name, self._token({}))
        else:
            if self._exists(name):
                raise Failed(FAILURE, "a device of that name exists already (allow to create new devices)")
            record = self._new(product, name, self._credentials(request))
        record["registrations"] += 1
        if "basic_id" in record:
            value = {"clientId": record["client_id"], "userName": record["user"], "password": record["secret"]}
            return key, record, {"credentialsType": "MQTT_BASIC", "credentialsValue": value, "status": "SUCCESS"}
        return key, record, {"credentialsType": "ACCESS_TOKEN", "credentialsValue": record["secret"],
                             "status": "SUCCESS"}

    def _exists(self, name):
        """A device of that name anywhere in the tenant: provisioned, or pre-provisioned in any profile."""
        return self.store.find(self.name, "name", name)[0] is not None or any(
            name in p.devices for p in self.products.values())

    def _new(self, product, name, credentials):
        return dict(credentials, name=name, profile=product.pid, activated=False, registrations=0, logins=0,
                    rpc_answered=0)

    def _credentials(self, request):
        """What ThingsBoard stores for a new device: the MQTT_BASIC triple or the token it sent, else a new token."""
        kind = request.get("credentialsType", "ACCESS_TOKEN")
        if kind == "MQTT_BASIC":
            client, user, password = (request.get(k) or "" for k in ("clientId", "username", "password"))
            if not all(isinstance(v, str) for v in (client, user, password)):
                raise Failed(FAILURE, "MQTT_BASIC credentials must be strings")
            if client or user or password:
                if not client and not user:
                    raise Failed(FAILURE, "MQTT_BASIC: both client id and user name are empty")
                if password and not user:
                    raise Failed(FAILURE, "MQTT_BASIC: a password needs a user name")
                if self.store.find(self.name, "basic_id", digest(client, user))[0] is not None:
                    raise Failed(FAILURE, "MQTT_BASIC credentials already used by another device")
                return {"basic_id": digest(client, user), "client_id": client, "user": user, "secret": password}
        elif kind != "ACCESS_TOKEN":
            raise Failed(FAILURE, f"credentialsType {shown(kind)} not supported here")
        return self._token(request)

    def _token(self, request):
        token = request.get("token")
        if not isinstance(token, str) or not token:
            token = "".join(secrets.choice(TOKEN_CHARS) for _ in range(20))
        elif self.store.find(self.name, "token_id", digest(token))[0] is not None:
            raise Failed(FAILURE, "access token already used by another device")
        return {"token_id": digest(token), "secret": token}

    # -- logged-in devices --------------------------------------------------------------------

    def topic_allowed(self, session, topic, action):
        if action == "receive":  # every device's topics are the same: deliver only what was addressed to it
            inbox = session.attributes.get(INBOX, set())
            if topic in inbox:
                inbox.discard(topic)
                return True
            return False
        if session.attributes.get(REGISTRATION) is not None:
            return super().topic_allowed(session, topic, action)
        if action == "publish":
            return topic in (ME + "telemetry", ME + "attributes") or _numbered(topic, RPC_RESPONSE, RPC_REQUEST)
        return topic in (RPC_REQUEST + "+", ME + "attributes", ME + "attributes/response/+", RPC_RESPONSE + "+")

    def _send(self, session, topic, message):
        session.attributes.setdefault(INBOX, set()).add(topic)
        return topic, compact(message)

    def on_device_publish(self, session, topic, payload):
        device = session.attributes[DEVICE]
        message = json_object(payload)
        if topic.startswith(RPC_RESPONSE):
            self._answered(session, topic[len(RPC_RESPONSE):], message)
            return []
        if topic.startswith(RPC_REQUEST):  # client-side RPC: the SDK asks for its session limits
            log(f"thingsboard {device} client-side rpc {shown((message or {}).get('method'))}")
            return [self._send(session, RPC_RESPONSE + topic[len(RPC_REQUEST):],
                               {"maxPayloadSize": 65536, "maxInflightMessages": 100, "rateLimits": {}})]
        out = []
        if topic == ME + "telemetry" and not session.attributes.get(PROBED):
            session.attributes[PROBED] = True
            record = self.store.get(self.name, session.attributes[RECORD]) or {}
            product = self.products.get(record.get("profile"))
            if product is not None and product.probe_commands:
                with self._lock:
                    rpc = str(next(self._rpc_ids))
                session.attributes.setdefault(PENDING, {})[rpc] = "ping"
                out.append(self._send(session, RPC_REQUEST + rpc, {"method": "ping", "params": {}}))
                log(f"thingsboard {device} sent telemetry; sent rpc ping (id {rpc})")
        return out

    def _answered(self, session, rpc, message):
        method = session.attributes.get(PENDING, {}).pop(rpc, None)
        device = session.attributes[DEVICE]
        if method is None:
            log(f"thingsboard {device} answered an rpc the emulator did not send ({shown(rpc)})")
            return
        self.count(session, "rpc_answered")
        log(f"thingsboard {device} answered rpc {method}: {shown(message)}")


def _numbered(topic, *prefixes):
    """Is topic <prefix><digits> for one of the prefixes?"""
    return any(topic.startswith(p) and topic[len(p):].isdigit() for p in prefixes)


def _check(given, secret, why):
    if not same(given, secret):
        raise Refused(why)
