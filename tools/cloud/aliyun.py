"""Alibaba Cloud IoT Platform as the emulator plays it (docs/platforms/aliyun.md): 一型一密 registration
over HTTPS or MQTT, the MQTT login, Alink property topics.

Products (registry "aliyun"): "secret" (ProductSecret), "dynreg" (dynamic registration on), "devices"
(DeviceNames created in the console: pre-registration, which HTTPS and authType=register need; a
record in devices.json counts too, see create_device()),
"auto_create" (registration-free, authType=regnwl, allowed), "reply" ("none": an MQTT registration
gets no pushed reply; a test knob).

HTTPS: POST /auth/register/device, form-encoded productKey, deviceName, random, sign, signMethod
(hmacsha256, hmacsha1 or hmacmd5); sign = hex HMAC(ProductSecret, "deviceName<dn>productKey<pk>random<r>").
Replies are HTTP 200 with {"code": 200, "data": {"productKey", "deviceName", "deviceSecret"},
"message": "success"} or {"code": N, "message": ...}: 460 bad request (Aliyun's "request parameter
error"), 6250 unknown product, 6100 device not pre-registered, 6289 device is already active (the
docs' codes); ours where the docs name none: 6401 wrong signature, 6402 dynamic registration off,
6403 random already used (replay).
MQTT registration: client id "<dn>.<pk>|random=<r>,authType=register|regnwl,securemode=2|-2,
signmethod=<m>[,instanceId=<id>]|" (the part before "|" is free text), username "<dn>&<pk>",
password = the same sign; TLS only. A refusal is CONNACK 5, its reason logged. Accepted, the
result is pushed on /ext/register {"productKey", "deviceName", "deviceSecret"} or /ext/regnwl
{"productKey", "deviceName", "clientId", "deviceToken"} right after CONNACK, with no SUBSCRIBE.
A random is accepted once per product and device (state dir seen-aliyun.json): a replay is refused.
Before activation a new registration issues a new secret (or token).
Login: username "<dn>&<pk>"; client id "<any>|...,securemode=2|3,signmethod=hmacsha256|hmacsha1,
timestamp=<ts>|" with password hex HMAC(DeviceSecret, "clientId<any>deviceName<dn>productKey<pk>
timestamp<ts>") (hex in any case; the timestamp is signed, not checked: the C SDK sends a fixed one),
or "<clientId>|securemode=-2,authType=connwl,...|" with password = the deviceToken. The first login
activates the device. Topics: the device's own (a topic naming <pk>/<dn> as two levels); a post on
.../thing/event/property/post is answered on .../post_reply, and after the first one of a session the
emulator sets {"led": 1} on .../thing/service/property/set and counts the set_reply answers in the
record ("commands_answered").
"""

import hashlib
import hmac
import json
import re
import secrets
from urllib.parse import parse_qs

from .platform import DEVICE, RECORD, ATTRIBUTES, Platform, Refused, compact, json_object, log, same, shown
from .state import seen_signatures, write_private

HASHES = {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1, "hmacmd5": hashlib.md5}
PRODUCT_KEY = re.compile(r"[A-Za-z0-9]{1,32}")
DEVICE_NAME = re.compile(r"[A-Za-z0-9\-_@.:]{4,32}")
CLIENT = re.compile(r"([^|]*)\|([^|]*)\|")
BAD_REQUEST, NO_DEVICE, NO_PRODUCT, ACTIVE = 460, 6100, 6250, 6289
BAD_SIGN, DYNREG_OFF, REPLAYED = 6401, 6402, 6403
PUSH = ATTRIBUTES + "aliyun_push"      # session attribute: (topic, payload) pushed after CONNACK
PROBED = ATTRIBUTES + "aliyun_probed"  # session attribute: the id of the property/set sent
ANSWERED = ATTRIBUTES + "aliyun_answered"  # session attribute: its set_reply came

OPTIONS = {"secret", "dynreg", "devices", "auto_create", "reply"}  # a product's options in the registry
ROUND_TRIPS = 1  # the fewest a registration takes: one HTTPS exchange, or CONNECT and the pushed reply


def sign(key, text, method="hmacsha256"):
    """Lowercase hex HMAC(key, text) with a signMethod name (any case)."""
    return hmac.new(key.encode(), text.encode(), HASHES[method.lower()]).hexdigest()


def registration_sign(secret, pk, dn, rnd, method="hmacsha256"):
    return sign(secret, f"deviceName{dn}productKey{pk}random{rnd}", method)


def login_sign(secret, client, dn, pk, ts, method="hmacsha256"):
    return sign(secret, f"clientId{client}deviceName{dn}productKey{pk}timestamp{ts}", method)


def params(text):
    """The comma-separated key=value list between the bars of a client id, as a dict (None if malformed)."""
    out = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq or key in out:
            return None
        out[key] = value
    return out


def new_record():
    return {"registrations": 0, "logins": 0, "commands_answered": 0, "activated": False}


def create_device(path, pk, dn):
    """Pre-register DeviceName `dn` of product `pk` in a devices.json (running emulator or not), as the
    console's "add device" does; an existing record is kept."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {}
    data.setdefault("aliyun", {}).setdefault(f"{pk}/{dn}", new_record())
    write_private(path, json.dumps(data, indent=1, sort_keys=True))


def emulate(products, store, pki, args):
    """The platform as tools/cloud/__main__.py runs it (args: its command line)."""
    return AliyunPlatform(products, store, seen_signatures(args, "aliyun"))


class Rejected(Exception):
    """A refused registration: Aliyun's reply code and message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class AliyunPlatform(Platform):
    """Registration and MQTT rules for the products under "aliyun" in the registry."""

    name = "aliyun"

    def __init__(self, products, store, seen):
        self.products = products
        self.store = store
        self.seen = seen  # state.SeenOnce of (pk, dn, random): each random registers once

    # -- registration (both transports) ----------------------------------------------------------

    def _register(self, pk, dn, rnd, method, given, nwl, trips):
        """Apply the rules; the new record's reply fields. Raises Rejected."""
        product = self.products.get(pk)
        if product is None:
            raise Rejected(NO_PRODUCT, "product not found")
        if not DEVICE_NAME.fullmatch(dn or "") or not rnd or method.lower() not in HASHES:
            raise Rejected(BAD_REQUEST, "request parameter error")
        if not same(registration_sign(product.secret, pk, dn, rnd, method), given.lower()):
            raise Rejected(BAD_SIGN, "sign check failed")
        if not product.dynreg:
            raise Rejected(DYNREG_OFF, "dynamic registration is off for this product")
        if nwl and not product.auto_create:
            raise Rejected(DYNREG_OFF, "registration-free (regnwl) is off for this product")
        key = f"{pk}/{dn}"
        with self.store.lock:
            record = self.store.get(self.name, key)
            if not nwl and dn not in product.devices and record is None:
                raise Rejected(NO_DEVICE, "device not found (not pre-registered)")
            record = record or new_record()
            if record.get("activated"):
                raise Rejected(ACTIVE, "device is already active")
            if self.seen.claim((pk, dn, rnd)) is not None:
                raise Rejected(REPLAYED, "random already used (replayed request)")
            reply = {"productKey": pk, "deviceName": dn}
            if nwl:
                record.pop("secret", None)
                record.update(client_id=f"{pk}.{dn}.{secrets.token_hex(6)}", token=secrets.token_hex(16))
                reply.update(clientId=record["client_id"], deviceToken=record["token"])
            else:
                record.pop("token", None)
                record["secret"] = secrets.token_urlsafe(24)[:32]
                reply["deviceSecret"] = record["secret"]
            record.update(activated=False, registrations=record["registrations"] + 1, round_trips=trips)
            self.store.put(self.name, key, record)
        log(f"aliyun registration {key} ok ({'regnwl' if nwl else 'device secret'}, registration "
            f"{record['registrations']}, {trips} round trip{'s' if trips != 1 else ''})")
        return reply

    def http_routes(self):
        return {"/auth/register/device": self._http_register}

    def _http_register(self, req):
        try:
            try:
                form = parse_qs((req.body or b"").decode("ascii"), keep_blank_values=True, strict_parsing=True)
            except (UnicodeDecodeError, ValueError):
                form = None
            fields = ("productKey", "deviceName", "random", "sign", "signMethod")
            if req.method != "POST" or not form or any(len(form.get(f, ())) != 1 for f in fields):
                raise Rejected(BAD_REQUEST, "request parameter error")
            pk, dn, rnd, given, method = (form[f][0] for f in fields)
            data = self._register(pk, dn, rnd, method, given, False, 1)
            return 200, {"code": 200, "data": data, "message": "success"}
        except Rejected as e:
            log(f"aliyun registration over https refused: code {e.code}: {e.message}")
            return 200, {"code": e.code, "message": e.message}

    # -- MQTT logins ---------------------------------------------------------------------------

    def mqtt_authenticate(self, session):
        dn, amp, pk = (session.username or "").partition("&")
        found = CLIENT.fullmatch(session.client_id or "")
        if not amp or not PRODUCT_KEY.fullmatch(pk) or found is None:
            return None
        given, fields = session.password or "", params(found.group(2))
        try:
            if fields is None:
                raise Refused("client id parameters are not key=value pairs")
            auth = fields.get("authType")
            if auth in ("register", "regnwl"):
                return self._mqtt_register(session, pk, dn, fields, given, auth == "regnwl")
            key = f"{pk}/{dn}"
            with self.store.lock:
                record = self.store.get(self.name, key)
                if auth == "connwl":
                    if fields.get("securemode") != "-2":
                        raise Refused("connwl needs securemode=-2")
                    if not record or not record.get("token") or not same(found.group(1), record["client_id"]):
                        raise Refused("unknown registration-free clientId")
                    if not same(given, record["token"]):
                        raise Refused("wrong deviceToken")
                else:
                    method, ts = fields.get("signmethod", ""), fields.get("timestamp", "")
                    if method.lower() not in HASHES or not ts or fields.get("securemode") not in ("2", "3"):
                        raise Refused("client id needs securemode=2|3, signmethod and timestamp")
                    if not record or not record.get("secret"):
                        raise Refused("device has no device secret (not registered)")
                    if not same(login_sign(record["secret"], found.group(1), dn, pk, ts, method), given.lower()):
                        raise Refused("wrong signature")
                first = not record.get("activated")
                record.update(activated=True, logins=record.get("logins", 0) + 1)
                self.store.put(self.name, key, record)
            session.attributes[DEVICE] = session.attributes[RECORD] = key
            log(f"mqtt login {key} ok (aliyun{', ' + auth if auth else ''}{'; device activated' if first else ''})")
            return True
        except Refused as e:
            log(f"mqtt aliyun login {shown(pk)}/{shown(dn)} refused: {e}")
            return False

    def _mqtt_register(self, session, pk, dn, fields, given, nwl):
        if session.ssl_object is None:
            raise Refused("dynamic registration needs TLS")
        if fields.get("securemode") not in ("2", "-2"):
            raise Refused("securemode must be 2 or -2")
        try:
            reply = self._register(pk, dn, fields.get("random"), fields.get("signmethod", ""), given, nwl, 1)
        except Rejected as e:
            # the platform answers a refused registration with a CONNACK code only
            raise Refused(f"registration: code {e.code}: {e.message}")
        product = self.products[pk]
        session.attributes[DEVICE] = f"{pk}/{dn}"
        if product.reply != "none":
            session.attributes[PUSH] = ("/ext/regnwl" if nwl else "/ext/register", compact(reply))
        return True

    def on_connected(self, session):
        push = session.attributes.pop(PUSH, None)
        return [push] if push else []

    # -- logged-in devices ---------------------------------------------------------------------

    def topic_allowed(self, session, topic, action):
        if RECORD not in session.attributes:
            return False  # a registration session: the reply comes unasked, nothing else is allowed
        pk, dn = session.attributes[DEVICE].split("/", 1)
        levels = topic.split("/")
        return any(levels[i:i + 2] == [pk, dn] for i in range(len(levels) - 1)) and "#" not in levels[:-1]

    def on_publish(self, session, topic, payload):
        pk, dn = session.attributes[DEVICE].split("/", 1)
        base = f"/sys/{pk}/{dn}/thing/"
        message = json_object(payload) or {}
        if topic == base + "service/property/set_reply":
            self._answered(session, message)
            return None
        if topic != base + "event/property/post":
            return None
        ok = isinstance(message.get("params"), dict)
        out = [(topic + "_reply", compact({"code": 200 if ok else 460, "data": {}, "id": message.get("id"),
                                           "message": "success" if ok else "request parameter error",
                                           "method": "thing.event.property.post", "version": "1.0"}))]
        if ok and not session.attributes.get(PROBED):
            session.attributes[PROBED] = secrets.token_hex(4)
            out.append((base + "service/property/set", compact({
                "method": "thing.service.property.set", "id": session.attributes[PROBED],
                "params": {"led": 1}, "version": "1.0.0"})))
            log(f"aliyun {pk}/{dn} reported; set property led=1")
        return out

    def _answered(self, session, message):
        device = session.attributes[DEVICE]
        if session.attributes.get(ANSWERED) or message.get("id") != session.attributes.get(PROBED):
            log(f"aliyun {device} answered a property/set the emulator did not send ({shown(message.get('id'))})")
            return
        session.attributes[ANSWERED] = True  # a second answer is not counted
        with self.store.lock:
            record = self.store.get(self.name, session.attributes[RECORD])
            record["commands_answered"] = record.get("commands_answered", 0) + 1
            self.store.put(self.name, session.attributes[RECORD], record)
        log(f"aliyun {device} answered property/set: code {shown(message.get('code'))}")
