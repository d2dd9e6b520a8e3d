"""Tencent Cloud IoT Explorer / IoT Hub as the emulator plays it (docs/platforms/tencent.md).

HTTP: POST /device/register (X-TC-* signature) and the legacy POST /register/dev.
MQTT: login with a PSK signature or the issued client certificate, per-device topic rules,
answers on $sys/operation (time) and $thing/up/property (report_reply).
"""

import base64
import hashlib
import hmac
import json
import os
import re
import time
import uuid

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .certs import fingerprint
from .platform import DEVICE, Platform, Refused, compact, log, same, shown
from .state import seen_signatures

HASHES = {"hmacsha256": hashlib.sha256, "hmacsha1": hashlib.sha1}
SDK_APPID = "12010126"
# sdkappid field of the MQTT username: the C SDK sends 12010126, the Python SDK (tencent-iot-device)
# 21010406; the cloud takes both
SDK_APPIDS = (SDK_APPID, "21010406")
# Tencent allows letters, digits and :_-.@ up to 48 characters; it also keeps names topic-safe
DEVICE_NAME = re.compile(r"[A-Za-z0-9:_\-.@]{1,48}")


class RegError(Exception):
    """A refused registration: the reply's Code (current API) and code (legacy API)."""

    def __init__(self, code, legacy_code, message):
        super().__init__(message)
        self.code = code
        self.legacy_code = legacy_code
        self.message = message


def _err(code, legacy_code, message):
    return lambda detail=None: RegError(code, legacy_code, message if detail is None else detail)


INVALID = _err("InvalidParameter", 1001, "invalid request")
NO_PRODUCT = _err("ResourceNotFound.ProductNotExist", 1002, "product not exists")
BAD_SIGNATURE = _err("AuthFailure.SignatureFailure", 1003, "signature verification failed")
EXPIRED = _err("AuthFailure.SignatureExpire", 1004, "timestamp out of the allowed window")
DYNREG_OFF = _err("FailedOperation.DynamicRegisterDisabled", 1005,
                  "Not support dynamic device register, please check setting first")
NOT_PRECREATED = _err("ResourceNotFound.DeviceNotExist", 1006, "Pre create mode: device not exists")
REPLAYED = _err("AuthFailure.SignatureFailure", 1003,
                "nonce already used within the timestamp window (replayed request)")
ACTIVATED = _err("FailedOperation.DeviceAlreadyActivated", 1021, "device already activated")


def register_signature(secret, host, path, algorithm, timestamp, nonce, body):
    """X-TC-Signature of a POST /device/register request (base64 text); algorithm is signed as given."""
    h = HASHES[algorithm.lower()]
    to_sign = "\n".join(["POST", host, path, "", algorithm, str(timestamp), str(nonce),
                         h(body).hexdigest()])
    return base64.b64encode(hmac.new(secret.encode(), to_sign.encode(), h).digest()).decode()


def legacy_signature(secret, device_name, nonce, product_id, timestamp):
    """signature field of a POST /register/dev body: base64 of the hex HMAC-SHA1 text."""
    src = f"deviceName={device_name}&nonce={nonce}&productId={product_id}&timestamp={timestamp}"
    mac = hmac.new(secret.encode(), src.encode(), hashlib.sha1).hexdigest()
    return base64.b64encode(mac.encode()).decode()


def mqtt_password(psk, username, algorithm="hmacsha256"):
    """MQTT password for a PSK login: hex HMAC(base64-decoded psk, username) + ";" + algorithm."""
    mac = hmac.new(base64.b64decode(psk), username.encode(), HASHES[algorithm]).hexdigest()
    return mac + ";" + algorithm


def encrypt_payload(secret, plaintext):
    """(Len, Payload) of a reply: AES-128-CBC, key secret[:16], IV sixteen '0', zero padding."""
    padded = plaintext + b"\0" * (-len(plaintext) % 16)
    enc = Cipher(algorithms.AES(secret[:16].encode()), modes.CBC(b"0" * 16)).encryptor()
    return len(plaintext), base64.b64encode(enc.update(padded) + enc.finalize()).decode()


OPTIONS = {"secret", "dynreg", "auto_create", "auth", "devices"}  # a product's options in the registry
ROUND_TRIPS = 1  # the fewest a registration takes: one HTTP exchange


def emulate(products, store, pki, args):
    """The platform as tools/cloud/__main__.py runs it (args: its command line)."""
    return TencentPlatform(products, store, pki, args.ts_window, seen_signatures(args, "tencent"))


class TencentPlatform(Platform):
    """Registration and MQTT rules for the products under "tencent" in the registry."""

    name = "tencent"

    def __init__(self, products, store, pki, ts_window, seen):
        self.products = products
        self.store = store
        self.pki = pki
        self.ts_window = ts_window
        self.seen = seen  # state.SeenOnce of (api, pid, dn, nonce, timestamp), kept 2 windows

    def http_routes(self):
        return {"/device/register": self._device_register, "/register/dev": self._register_dev}

    # -- HTTP registration -------------------------------------------------------------

    def _device_register(self, req):
        request_id = str(uuid.uuid4())
        try:
            body = self._json_body(req)
            pid, dn = body.get("ProductId"), body.get("DeviceName")
            self._check_names(pid, dn)
            product = self._product(pid)
            algorithm = req.headers.get("X-TC-Algorithm") or ""
            timestamp = req.headers.get("X-TC-Timestamp") or ""
            nonce = req.headers.get("X-TC-Nonce") or ""
            given = req.headers.get("X-TC-Signature") or ""
            if algorithm.lower() not in HASHES or _decimal(timestamp) is None or not nonce or not given:
                raise BAD_SIGNATURE("missing or unsupported X-TC-Algorithm/Timestamp/Nonce/Signature")
            # the docs spell it HmacSha256, SDKs send and sign lower case: accept the name signed either way
            matches = [same(register_signature(product.secret, req.host, req.path, name, timestamp, nonce,
                                                req.body), given)
                       for name in {algorithm, algorithm.lower()}]
            if not any(matches):
                raise BAD_SIGNATURE()
            self._check_time(int(timestamp))
            self._check_replay(("device", pid, dn, nonce, timestamp))
            plaintext, kind, count = self._issue(product, dn)
        except RegError as e:
            log(f"tencent {req.path} {shown(_key_of(req))} refused: {e.code}: {e.message}")
            return 200, {"Response": {"Error": {"Code": e.code, "Message": e.message},
                                      "RequestId": request_id}}
        length, payload = encrypt_payload(product.secret, plaintext)
        log(f"tencent {req.path} {pid}/{dn} ok ({kind}, registration {count})")
        return 200, {"Response": {"Len": length, "Payload": payload, "RequestId": request_id}}

    # The legacy API: the same checks and issue as _device_register above, but another request and reply
    # format (its error codes and JSON shape), hence a handler of its own.
    def _register_dev(self, req):
        try:
            body = self._json_body(req)
            pid, dn = body.get("productId"), body.get("deviceName")
            nonce, timestamp, given = body.get("nonce"), body.get("timestamp"), body.get("signature")
            self._check_names(pid, dn)
            # signed as decimal text: accept them as JSON numbers or as digit strings
            nonce, timestamp = _decimal(nonce), _decimal(timestamp)
            if nonce is None or timestamp is None or not isinstance(given, str):
                raise INVALID("nonce and timestamp must be integers, signature a string")
            product = self._product(pid)
            if not same(legacy_signature(product.secret, dn, nonce, pid, timestamp), given):
                raise BAD_SIGNATURE()
            self._check_time(int(timestamp))
            self._check_replay(("legacy", pid, dn, nonce, timestamp))
            plaintext, kind, count = self._issue(product, dn)
        except RegError as e:
            log(f"tencent {req.path} {shown(_key_of(req))} refused: {e.legacy_code}: {e.message}")
            return 200, {"code": e.legacy_code, "message": e.message}
        length, payload = encrypt_payload(product.secret, plaintext)
        log(f"tencent {req.path} {pid}/{dn} ok ({kind}, registration {count})")
        return 200, {"code": 0, "message": "", "len": length, "payload": payload}

    @staticmethod
    def _json_body(req):
        if req.method != "POST":
            raise INVALID("only POST is supported")
        if req.body is None:
            raise INVALID("request body missing, too large or chunked")
        try:
            body = json.loads(req.body)
        except (ValueError, UnicodeDecodeError):
            raise INVALID("request body is not JSON") from None
        if not isinstance(body, dict):
            raise INVALID("request body must be a JSON object")
        return body

    @staticmethod
    def _check_names(pid, dn):
        if not isinstance(pid, str) or not pid:
            raise INVALID("product id missing")
        if not isinstance(dn, str) or not DEVICE_NAME.fullmatch(dn):
            raise INVALID("device name must be 1-48 characters of A-Z a-z 0-9 : _ - . @")

    def _product(self, pid):
        product = self.products.get(pid)
        if product is None:
            raise NO_PRODUCT()
        return product

    def _check_time(self, timestamp):
        if self.ts_window and abs(time.time() - timestamp) > self.ts_window:
            raise EXPIRED()

    def _check_replay(self, key):
        """Refuse a signed request seen before: the same nonce and timestamp for the same device and
        product, within the timestamp window (a request older than the window is refused as expired
        anyway, so only the window needs remembering; the store keeps it across restarts). Called
        after the signature check, so forged requests cannot use up nonces."""
        if self.seen.claim(key) is not None:
            raise REPLAYED()

    def _issue(self, product, dn):
        """Apply the console rules, then issue new credentials. Returns (plaintext, kind, count)."""
        if not product.dynreg:
            raise DYNREG_OFF()
        if not product.auto_create and dn not in product.devices:
            raise NOT_PRECREATED()
        key = f"{product.pid}/{dn}"
        with self.store.lock:
            record = self.store.get(self.name, key) or {"registrations": 0, "logins": 0}
            if record.get("activated"):
                raise ACTIVATED()
            # registering again before the first login replaces the credentials (section 1.3)
            record.pop("psk", None)
            record.pop("cert_fp", None)
            if product.auth == "cert":
                cert, private_key, record["cert_fp"] = self.pki.issue_device_cert(key)
                reply = {"encryptionType": 1, "clientCert": cert, "clientKey": private_key}
            else:
                record["psk"] = base64.b64encode(os.urandom(16)).decode()
                reply = {"encryptionType": 2, "psk": record["psk"]}
            record["activated"] = False
            record["registrations"] += 1
            record["round_trips"] = 1  # one HTTP request and its reply
            self.store.put(self.name, key, record)
        return json.dumps(reply, separators=(",", ":")).encode(), product.auth, record["registrations"]

    # -- MQTT --------------------------------------------------------------------------

    def mqtt_authenticate(self, session):
        fields = (session.username or "").split(";")
        if len(fields) != 4 or fields[1] not in SDK_APPIDS:
            return None
        # under the lock so that a registration cannot slip in between check and activation
        with self.store.lock:
            try:
                key, kind = self._login(session, fields[0], fields[3])
            except Refused as e:
                log(f"mqtt login {shown(fields[0])} refused: {e}")
                return False
            record = self.store.get(self.name, key)
            first = not record.get("activated")
            record["activated"] = True
            record["logins"] = record.get("logins", 0) + 1
            self.store.put(self.name, key, record)
        session.attributes[DEVICE] = key
        log(f"mqtt login {key} ok ({kind}{'; device activated' if first else ''})")
        return True

    def _login(self, session, client, expiry):
        """Check a CONNECT; returns (device key, "psk, <algorithm>" | "cert") or raises Refused."""
        if session.client_id != client:
            raise Refused("client id differs from the username's ProductId+DeviceName")
        pids = [p for p in self.products if client.startswith(p) and len(client) > len(p)]
        if not pids:
            raise Refused("unknown product")
        product = self.products[max(pids, key=len)]
        key = f"{product.pid}/{client[len(product.pid):]}"
        record = self.store.get(self.name, key)
        if product.auth == "cert":
            # certificate products: the TLS client certificate is the credential, the password is not checked
            der = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
            if not record or not record.get("cert_fp") or not der:
                raise Refused("no issued client certificate presented over TLS")
            if not same(fingerprint(der), record["cert_fp"]):
                raise Refused("client certificate is not the one issued to this device")
            return key, "cert"
        if not record or not record.get("psk"):
            raise Refused("device has no device secret (not registered)")
        if not expiry.isdigit() or int(expiry) <= time.time():
            raise Refused("login expiry missing or in the past")
        mac, _, algorithm = (session.password or "").partition(";")
        if algorithm not in HASHES:
            raise Refused("password must end in ;hmacsha256 or ;hmacsha1")
        if not same(mqtt_password(record["psk"], session.username, algorithm), mac.lower() + ";" + algorithm):
            raise Refused("wrong password")
        return key, "psk, " + algorithm

    def topic_allowed(self, session, topic, action):
        pid, dn = session.attributes[DEVICE].split("/", 1)
        if topic.startswith(f"{pid}/{dn}/"):
            return True
        parts = topic.split("/")
        if action == "publish":
            return _thing(parts, "up", pid, dn) or topic == f"$sys/operation/{pid}/{dn}"
        return _thing(parts, "down", pid, dn) or topic == f"$sys/operation/result/{pid}/{dn}"

    def on_publish(self, session, topic, payload):
        if not topic.startswith("$"):
            return None  # the device's own topics: delivered as usual
        key = session.attributes[DEVICE]
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            message = None
        if not isinstance(message, dict):
            message = {}
        if topic == f"$sys/operation/{key}":
            if message.get("type") != "get" or "time" not in (message.get("resource") or []):
                log(f"mqtt {key} $sys/operation request not understood, ignored")
                return []
            now_ms = int(time.time() * 1000)
            reply = {"type": "get", "time": now_ms // 1000, "ntptime1": now_ms, "ntptime2": now_ms}
            log(f"mqtt {key} time request answered")
            return [(f"$sys/operation/result/{key}", compact(reply))]
        if topic == f"$thing/up/property/{key}" and message.get("method") == "report":
            reply = {"method": "report_reply", "clientToken": message.get("clientToken"),
                     "code": 0, "status": "success"}
            log(f"mqtt {key} property report answered")
            return [(f"$thing/down/property/{key}", compact(reply))]
        return None


def _thing(parts, direction, pid, dn):
    """Is parts $thing/<direction>/<one level>/<pid>/<dn>?"""
    return (len(parts) == 5 and parts[0] == "$thing" and parts[1] == direction and parts[2] != ""
            and "#" not in parts[2] and parts[3] == pid and parts[4] == dn)


def _decimal(value):
    """Decimal text of a non-negative integer given as JSON number or digit string, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return value
    return None


def _key_of(req):
    """Best-effort "pid/dn" of a request for log lines, from either API's body."""
    try:
        body = json.loads(req.body or b"")
        return f"{body.get('ProductId', body.get('productId'))}/{body.get('DeviceName', body.get('deviceName'))}"
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "?"
