"""What every emulated IoT platform offers to the HTTP servers and the MQTT broker, plus logging.

A platform module (tencent.py, ucloud.py, protco.py) subclasses Platform and overrides what it
serves; the servers know nothing about any platform's rules. MqttRegistration holds what UCloud
and Protco share: a registration session that may only send one request topic and hear one reply
topic, the registry's test knobs, round-trip counting and the login with an issued device secret.
ConsolePlatform is the registry's "console" login, which may use any topic.
"""

import hmac
import ipaddress
import json
import threading
from dataclasses import dataclass

_print_lock = threading.Lock()

ATTRIBUTES = "dynreg."  # prefix of our amqtt session attributes (cleared at each CONNECT):
DEVICE = ATTRIBUTES + "device"              # the device a session speaks for (log label)
RECORD = ATTRIBUTES + "record"              # its record key in the device store
REGISTRATION = ATTRIBUTES + "registration"  # a Registration, on registration sessions only
ROUND_TRIPS = ATTRIBUTES + "round_trips"    # RoundTrips of the connection
EXPIRES = ATTRIBUTES + "expires"            # Unix time the login's credentials expire: the broker then closes it


def log(message):
    """Print one "cloud: ..." line to stdout. Callers must never pass secrets."""
    with _print_lock:
        print("cloud: " + message, flush=True)


def shown(value, limit=64):
    """Text from the network made safe for a log line: printable ASCII, bounded length."""
    text = ascii(str(value))[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def same(a, b):
    """Constant-time comparison of two texts."""
    return hmac.compare_digest(a.encode(), b.encode())


def compact(obj):
    """JSON without spaces, as bytes."""
    return json.dumps(obj, separators=(",", ":")).encode()


class Refused(Exception):
    """A refused MQTT login; the text says why (never a secret)."""


class RoundTrips:
    """Round trips of one connection, as its client experiences them.

    The CONNECT starts the first one; afterwards a client packet starts a new one when the server
    has sent something since the client's previous packet (a pipelined SUBSCRIBE + PUBLISH is one
    round trip, a client that waits for the SUBACK before publishing makes two). Packets that
    expect no answer (DISCONNECT, PUBACK, PUBCOMP) start none.
    """

    def __init__(self):
        self.count = 1
        self._answered = False

    def server_packet(self):
        """The server sent a packet on this connection."""
        self._answered = True

    def client_packet(self):
        """The client sent a packet that expects an answer."""
        if self._answered:
            self.count += 1
            self._answered = False


def round_trips(session):
    """Round trips the session's connection has made so far (0 when not counted)."""
    trips = session.attributes.get(ROUND_TRIPS)
    return trips.count if trips else 0


class Request:
    """An HTTP request as the platforms see it.

    host: the Host header without any ":port" ("" when absent); headers: case-insensitive
    (email.message.Message); body: the raw bytes, or None when it was too large, chunked or
    cut short (the route answers with its own "invalid request" error).
    """

    def __init__(self, method, path, host, headers, body):
        self.method = method
        self.path = path
        self.host = host
        self.headers = headers
        self.body = body


class Platform:
    """Base class: a platform that serves nothing. All hooks may be called from any thread."""

    name = ""

    def http_routes(self):
        """{path: handler}; handler(Request) -> (HTTP status, JSON-able reply). POST only."""
        return {}

    def mqtt_authenticate(self, session):
        """True/False for a CONNECT this platform recognises (amqtt Session), None if not its own.

        On success it must set session.attributes[DEVICE]; the broker then sends this session's
        topic checks and publishes to this platform only.
        """
        return None

    def topic_allowed(self, session, topic, action):
        """May this session do action ("publish", "subscribe", "receive") on topic/filter?"""
        return False

    def on_publish(self, session, topic, payload):
        """A permitted publish: the list of (topic, bytes) messages to send instead of it (the
        list may hold the original), or None to deliver it to subscribers as usual."""
        return None

    def is_registration_reply(self, session, topic_filter):
        """Is this the reply topic of a registration session? (--probe-delay-ms delays its SUBACK.)"""
        return False

    def reply_to_sender(self, session, topic):
        """Does a reply on_publish made for `topic` go to the publishing session only, not to every
        subscriber? (AWS's reserved topics are shared by all devices; their answers are not.)"""
        return False
    def on_connected(self, session):
        """(topic, bytes) messages sent to this session right after its CONNACK, unasked: no SUBSCRIBE
        needed (Aliyun pushes a registration's result so)."""
        return []


class ConsolePlatform(Platform):
    """The registry's "console" login: any topic, "$" ones included, to watch devices or command them.

    Over plain TCP it is refused from anywhere but this machine unless plain_tcp is set: whoever
    sees its password on the LAN could command every device.
    """

    name = "console"

    def __init__(self, console, plain_tcp=False):
        self.console = console  # registry.Console or None
        self.plain_tcp = plain_tcp

    def mqtt_authenticate(self, session):
        if self.console is None or session.username != self.console.username:
            return None
        if session.ssl_object is None and not self.plain_tcp and not _loopback(session.remote_address):
            log(f"mqtt console login {shown(session.client_id)} from {shown(session.remote_address)} refused: "
                "plain TCP from another machine (use the TLS port, or --console-over-tcp)")
            return False
        if not same(session.password or "", self.console.password):
            log(f"mqtt console login {shown(session.client_id)} refused: wrong password")
            return False
        session.attributes[DEVICE] = "console"
        log(f"mqtt console login {shown(session.client_id)} ok")
        return True

    def topic_allowed(self, session, topic, action):
        return True


def _loopback(address):
    """Is the peer address this machine (127.0.0.0/8, ::1, or IPv4 loopback mapped into IPv6)?"""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


@dataclass(frozen=True)
class Registration:
    """A registration session: the product it proved, the device record it is about, its two topics."""

    product: object   # registry.Product
    key: str          # record key in the device store
    request_topic: str
    reply_topic: str
    proof: tuple = () # what the login signed, when the platform refuses its reuse (Protco)


class RegistrationRefused(Exception):
    """A registration request answered with an error code (the platform's own numbering)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class MqttRegistration(Platform):
    """Base of the platforms whose devices fetch their secret over MQTT (UCloud, Protco).

    A subclass recognises the CONNECTs (mqtt_authenticate: start_registration or device_login),
    answers a well-formed request (register), shapes error replies (refusal) and rules the
    topics of logged-in devices (device_topic_allowed, on_device_publish). This class answers
    the request with the registry's test knobs applied, counts round trips and logs.
    Records in the store hold "secret", "activated", "registrations", "logins", "round_trips".
    """

    id_field = ""          # the request id's JSON field, echoed in the reply
    code_field = ""        # the reply's status field
    format_error = None    # code for a request that is not a JSON object
    bad_request = None     # code for a request without a usable id or with bad fields

    def __init__(self, products, store):
        self.products = products
        self.store = store

    # -- to override ---------------------------------------------------------------------

    def register(self, reg, request, request_id, record):
        """Apply the rules to a request with a valid id. record: the stored one or None.
        Returns (new record, success reply); raises RegistrationRefused. Runs under store.lock."""
        raise NotImplementedError

    def refusal(self, request_id, code, message):
        """The error reply for a request."""
        raise NotImplementedError

    def device_label(self, key, record):
        """How the logs and topic rules name a logged-in device."""
        return key

    def device_topic_allowed(self, session, topic, action):
        """topic_allowed for a session logged in with a device secret."""
        return False

    def on_device_publish(self, session, topic, payload):
        """on_publish for a session logged in with a device secret."""
        return None

    # -- logins -------------------------------------------------------------------------------

    def refuse_login(self, who, reason, registration):
        """Log a refused CONNECT (a registration login or not); returns False for mqtt_authenticate."""
        log(f"mqtt {self.name + ' registration ' if registration else ''}login {shown(who)} refused: {reason}")
        return False

    def start_registration(self, session, reg):
        """Accept a CONNECT made with the product secret; returns True for mqtt_authenticate."""
        session.attributes[DEVICE] = reg.key
        session.attributes[RECORD] = reg.key
        session.attributes[REGISTRATION] = reg
        log(f"mqtt {self.name} registration login {reg.key} ok")
        return True

    def device_login(self, session, key, verify):
        """Check a CONNECT made with a device secret: verify(secret) raises Refused when wrong.
        The first success activates the device. Returns True; raises Refused."""
        # under the lock so that a registration cannot slip in between check and activation
        with self.store.lock:
            record = self.store.get(self.name, key)
            if not record or not record.get("secret"):
                raise Refused("device has no device secret (not registered)")
            verify(record["secret"])
            first = not record.get("activated")
            record["activated"] = True
            record["logins"] = record.get("logins", 0) + 1
            self.store.put(self.name, key, record)
        label = self.device_label(key, record)
        session.attributes[DEVICE] = label
        session.attributes[RECORD] = key
        log(f"mqtt login {label} ok ({self.name}{'; device activated' if first else ''})")
        return True

    def count(self, session, field):
        """Add one to a counter of the session's device record."""
        with self.store.lock:
            record = self.store.get(self.name, session.attributes[RECORD])
            record[field] = record.get(field, 0) + 1
            self.store.put(self.name, session.attributes[RECORD], record)

    # -- topics and requests ------------------------------------------------------------------

    def topic_allowed(self, session, topic, action):
        reg = session.attributes.get(REGISTRATION)
        if reg is None:
            return self.device_topic_allowed(session, topic, action)
        return topic == (reg.request_topic if action == "publish" else reg.reply_topic)

    def is_registration_reply(self, session, topic_filter):
        reg = session.attributes.get(REGISTRATION)
        return reg is not None and topic_filter == reg.reply_topic

    def on_publish(self, session, topic, payload):
        reg = session.attributes.get(REGISTRATION)
        if reg is None:
            return self.on_device_publish(session, topic, payload)
        trips = round_trips(session)
        product = reg.product
        request_id = None
        try:
            request = json_object(payload)
            if request is None:
                raise RegistrationRefused(self.format_error, "request is not a JSON object")
            request_id = request.get(self.id_field)
            if not _valid_id(request_id):
                request_id = None
                raise RegistrationRefused(self.bad_request, f"{self.id_field} missing or not a string or integer")
            if product.forced_code is not None and str(product.forced_code) != "0":
                raise RegistrationRefused(product.forced_code, "refused by the registry's test knob")
            with self.store.lock:
                record, reply = self.register(reg, request, request_id, self.store.get(self.name, reg.key))
                record["round_trips"] = trips
                self.store.put(self.name, reg.key, record)
            if product.forced_code is not None:
                reply[self.code_field] = product.forced_code  # e.g. a number where the docs send a string
            outcome = "ok"
        except RegistrationRefused as e:
            reply = self.refusal(request_id, e.code, e.message)
            outcome = f"refused: {self.code_field} {e.code}: {e.message}"
        replies, note = [reply], ""
        if product.reply == "none":
            replies, note = [], "; no reply: test knob"
        elif product.reply == "other_id":
            decoy = self.refusal(f"other-{request_id}", self.bad_request, "reply to another request (test knob)")
            replies, note = [decoy, reply], "; reply for another request first: test knob"
        log(f"{self.name} registration {reg.key} {outcome} ({trips} round trips{note})")
        return [(reg.reply_topic, compact(r)) for r in replies]


def json_object(payload):
    """The payload as a JSON object (dict), or None."""
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _valid_id(value):
    """A request id: a non-empty string of at most 64 characters, or an integer."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and 0 < len(value) <= 64)
