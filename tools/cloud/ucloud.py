"""UCloud UIoT Core as the emulator plays it (docs/platforms/ucloud.md): registration over MQTT.

Registration login: ClientID "<ProductSN>.<DeviceSN>", UserName "<ProductSN>|<DeviceSN>|2",
Password = the product secret. The product must have dynamic registration on and, when it has a
whitelist (pre-authentication), list the DeviceSN; otherwise CONNACK 5. That session may only
subscribe /$system/<psn>/<dsn>/password_reply and publish /$system/<psn>/<dsn>/password; a request
{"RequestID": X} is answered {"RetCode": "0", "RequestID": X, "Password": "<16-char device secret>"}.
A new request before activation issues a new secret. Refusals (our numbering, UCloud documents
none): RetCode "1" device already activated, "2" request not understood; both carry "Message".
Device login: UserName "<psn>|<dsn>|1", Password = the device secret; the first one activates
the device. Both logins need a keepalive of 30-1200 s and no will (else CONNACK 5). A device may use the topics under /<psn>/<dsn>/ (e.g. publish .../upload,
subscribe .../set).
"""

import re
import secrets
import string

from .platform import DEVICE, MqttRegistration, Refused, Registration, RegistrationRefused, same

DEVICE_SN = re.compile(r"[A-Za-z0-9\-_@:]{4,64}")
KEEPALIVE = (30, 1200)  # seconds a CONNECT may ask for; UCloud supports no will either
SECRET_CHARS = string.ascii_lowercase + string.digits  # like the docs' example zlc3d21u5k8fq0d2
ACTIVATED = "1"
BAD_REQUEST = "2"


OPTIONS = {"secret", "dynreg", "whitelist", "retcode", "reply"}  # a product's options in the registry
ROUND_TRIPS = 2  # the fewest a registration takes: CONNECT, then SUBSCRIBE + PUBLISH


def emulate(products, store, pki, args):
    """The platform as tools/cloud/__main__.py runs it (args: its command line)."""
    return UCloudPlatform(products, store)


class UCloudPlatform(MqttRegistration):
    """Registration and MQTT rules for the products under "ucloud" in the registry."""

    name = "ucloud"
    id_field = "RequestID"
    code_field = "RetCode"
    format_error = BAD_REQUEST
    bad_request = BAD_REQUEST

    def mqtt_authenticate(self, session):
        fields = (session.username or "").split("|")
        if len(fields) != 3 or fields[2] not in ("1", "2"):
            return None
        psn, dsn, mode = fields
        try:
            product = self.products.get(psn)
            if product is None:
                raise Refused("unknown product")
            if session.client_id != f"{psn}.{dsn}":
                raise Refused("client id must be <ProductSN>.<DeviceSN>")
            if not DEVICE_SN.fullmatch(dsn):
                raise Refused("DeviceSN must be 4-64 characters of A-Z a-z 0-9 - _ @ :")
            if not KEEPALIVE[0] <= session.keep_alive <= KEEPALIVE[1]:
                raise Refused(f"keepalive {session.keep_alive} s outside {KEEPALIVE[0]}-{KEEPALIVE[1]} s")
            if session.will_flag:
                raise Refused("UCloud takes no will message")
            key = f"{psn}/{dsn}"
            password = session.password or ""
            if mode == "1":
                return self.device_login(session, key, lambda secret: _check(password, secret))
            if not same(password, product.secret):
                raise Refused("wrong product secret")
            if not product.dynreg:
                raise Refused("dynamic registration is off for this product")
            if product.whitelist is not None and dsn not in product.whitelist:
                raise Refused("DeviceSN not on the product's pre-authentication whitelist")
            base = f"/$system/{psn}/{dsn}/password"
            return self.start_registration(session, Registration(product, key, base, base + "_reply"))
        except Refused as e:
            return self.refuse_login(f"{psn}/{dsn}", e, mode == "2")

    def register(self, reg, request, request_id, record):
        record = record or {"registrations": 0, "logins": 0}
        if record.get("activated"):
            raise RegistrationRefused(ACTIVATED, "device already activated")
        record["secret"] = "".join(secrets.choice(SECRET_CHARS) for _ in range(16))
        record["activated"] = False
        record["registrations"] += 1
        return record, {"RetCode": "0", "RequestID": request_id, "Password": record["secret"]}

    def refusal(self, request_id, code, message):
        return {"RetCode": code, "RequestID": request_id, "Message": message}

    def device_topic_allowed(self, session, topic, action):
        # a filter under the device's own prefix can only match the device's own topics
        return topic.startswith(f"/{session.attributes[DEVICE]}/")


def _check(given, secret):
    if not same(given, secret):
        raise Refused("wrong device secret")
