"""The MQTT broker: amqtt 0.12 with plugins that ask the platforms, plus publish handling.

amqtt closes any client that publishes to a topic starting with "$", but Tencent devices must
publish to $sys/operation/... and $thing/up/...; CloudBroker hands every permitted publish to the
platform of the session (which may answer it, e.g. a registration request) before delivery.
Only our plugins are loaded (no anonymous login, no $SYS reports); RoundTripPlugin counts each
connection's round trips for the registration log lines.
"""

import asyncio
import ssl
import time
from functools import partial

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import ListenerType
from amqtt.mqtt.packet import DISCONNECT, PUBACK, PUBCOMP
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin

from . import mqtt5
from .connect import Replayed, as_mqtt311, client_id, read_connect
from .platform import ATTRIBUTES, DEVICE, EXPIRES, ROUND_TRIPS, RoundTrips, log, shown

PLATFORM = ATTRIBUTES + "platform"
ONE_WAY = (DISCONNECT, PUBACK, PUBCOMP)  # client packets nothing answers


def _platform(context, session):
    """The platform object that accepted this session's login, if any."""
    # plugins get a copy of the BrokerContext; the broker itself is the only place the platforms live
    broker = context._broker_instance  # noqa: SLF001 (amqtt offers no public accessor)
    return broker.platforms.get(session.attributes.get(PLATFORM)) if session else None


class AuthPlugin(BaseAuthPlugin):
    """A CONNECT is accepted when the platform that recognises it says so; nobody else logs in."""

    async def authenticate(self, *, session):
        broker = self.context._broker_instance  # noqa: SLF001
        # a session kept by a non-clean CONNECT must not carry over what an earlier login set
        for key in [k for k in session.attributes if k.startswith(ATTRIBUTES)]:
            del session.attributes[key]
        session.attributes[ROUND_TRIPS] = RoundTrips()  # the CONNECT starts round trip 1
        for platform in broker.platforms.values():
            verdict = platform.mqtt_authenticate(session)
            if verdict is not None:
                if verdict:
                    session.attributes[PLATFORM] = platform.name
                    broker.close_older(session)
                    if EXPIRES in session.attributes:
                        broker.close_at(session, session.attributes[EXPIRES])
                return verdict
        log(f"mqtt login {shown(session.client_id)} refused: no platform recognises the username")
        return False


class TopicPlugin(BaseTopicPlugin):
    """Each device may use only its own topics, as its platform defines them."""

    async def topic_filtering(self, *, session=None, topic=None, action=None):
        platform = _platform(self.context, session)
        if platform is None or not topic:
            return False
        allowed = platform.topic_allowed(session, topic, str(action))
        if not allowed and str(action) != "receive":
            log(f"mqtt {session.attributes.get(DEVICE)} {action} {shown(topic)} refused")
        return allowed


class RoundTripPlugin(BasePlugin):
    """Feeds every packet of a logged-in connection to its RoundTrips.

    amqtt runs these handlers as tasks in the order the packets were read or written, so a
    count is up to date by the time the broker handles the packet that follows.
    """

    async def on_mqtt_packet_received(self, *, packet, session=None):
        trips = session.attributes.get(ROUND_TRIPS) if session else None
        if trips and packet.fixed_header.packet_type not in ONE_WAY:
            trips.client_packet()

    async def on_mqtt_packet_sent(self, *, packet, session=None):
        trips = session.attributes.get(ROUND_TRIPS) if session else None
        if trips:
            trips.server_packet()


PLUGINS = {f"{__name__}.{plugin.__name__}": {} for plugin in (AuthPlugin, TopicPlugin, RoundTripPlugin)}


class _SnapshotDict(dict):
    """amqtt 0.12 iterates its subscription table across awaits (_run_broadcast, retained messages);
    a client subscribing or leaving meanwhile raised "dictionary changed size during iteration" and
    lost that broadcast (seen when a connection drops mid-session, host_tests/test_faults.py).
    Iterating a snapshot avoids it."""

    def __iter__(self):
        return iter(list(dict.keys(self)))

    def items(self):
        return list(dict.items(self))

    def keys(self):
        return list(dict.keys(self))

    def values(self):
        return list(dict.values(self))


class CloudBroker(Broker):
    """amqtt Broker that lets the owning platform answer publishes ("$" topics included).

    probe_delay (seconds) holds back the SUBACK of a registration reply topic, so that a client
    that pipelines its request behind the SUBSCRIBE is told apart from one that waits.
    connect_timeout (seconds) bounds the TLS handshake and, after it, the arrival of the CONNECT.
    The broker reads the CONNECT itself (connect.py: MQTT 3.1 is accepted as 3.1.1; mqtt5.py bridges
    an MQTT 5 client's every packet) and keeps the
    open connections by client id: a login closes the older connection of its client id, as the
    clouds do and MQTT 3.1.1 requires (MQTT-3.1.4-2; amqtt forgets the older one but leaves it open).
    """

    def __init__(self, config, platforms, probe_delay=0.0, connect_timeout=10.0):
        # set before Broker.__init__: it instantiates the plugins, which look platforms up later
        self.platforms = {p.name: p for p in platforms}
        self.probe_delay = probe_delay
        self.connect_timeout = connect_timeout
        self._open = {}  # client id -> {(address, port) of the peer: asyncio.StreamWriter}
        super().__init__(config)
        self._subscriptions = _SnapshotDict(self._subscriptions)

    async def _handle_message_delivery(self, session, handler, wait_deliver):
        message = wait_deliver.result()
        if message is None or not message.topic or "#" in message.topic or "+" in message.topic:
            return await super()._handle_message_delivery(session, handler, wait_deliver)  # amqtt's verdict
        topic, data = message.topic, bytes(message.data)
        platform = self.platforms.get(session.attributes.get(PLATFORM))
        if platform is None or not platform.topic_allowed(session, topic, "publish"):
            log(f"mqtt {session.attributes.get(DEVICE)} publish {shown(topic)} refused")
            return True
        replies = platform.on_publish(session, topic, data)
        if replies is None:
            if not topic.startswith("$"):
                return await super()._handle_message_delivery(session, handler, wait_deliver)
            replies = [(topic, data)]
        for reply_topic, reply in replies:
            if platform.reply_to_sender(session, reply_topic):
                self._send_to(session, reply_topic, reply)
            else:
                await self.internal_message_broadcast(reply_topic, reply)
        return True

    def _send_to(self, session, topic, data):
        """Deliver a reply to `session` alone, at the highest QoS of its subscriptions matching `topic`
        (none: it is dropped, as a broadcast would drop it)."""
        qos = [q for f, subs in self._subscriptions.items() if self._matches(topic, f) for s, q in subs if s is session]
        handler = self._get_handler(session)
        if qos and handler:  # queued like a broadcast's publish: amqtt collects the task
            self._tasks_queue.append(asyncio.ensure_future(handler.mqtt_publish(topic, data, max(qos), retain=False)))
    async def _client_message_loop(self, client_session, handler):
        # amqtt calls this once the CONNACK is out: what the platform pushes unasked goes first
        platform = self.platforms.get(client_session.attributes.get(PLATFORM))
        for topic, data in platform.on_connected(client_session) if platform else ():
            await handler.mqtt_publish(topic, data, 0, False)
        return await super()._client_message_loop(client_session, handler)

    async def _handle_subscription(self, session, handler, subscribe_waiter):
        platform = self.platforms.get(session.attributes.get(PLATFORM))
        if self.probe_delay and platform and any(platform.is_registration_reply(session, topic)
                                                 for topic, _ in subscribe_waiter.result().topics):
            await asyncio.sleep(self.probe_delay)
        return await super()._handle_subscription(session, handler, subscribe_waiter)

    async def _create_server_instance(self, listener_name, listener_type, address, port, ssl_context):
        if listener_type != ListenerType.TCP:
            return await super()._create_server_instance(listener_name, listener_type, address, port, ssl_context)
        # as amqtt starts a TCP listener, with the handshake bounded (asyncio's default waits 60 s)
        return await asyncio.start_server(partial(self.stream_connected, listener_name=listener_name), address,
                                          port, reuse_address=True, ssl=ssl_context,
                                          ssl_handshake_timeout=self.connect_timeout if ssl_context else None)

    async def stream_connected(self, reader, writer, listener_name):
        peer = tuple(writer.get_extra_info("peername")[:2])
        why = None
        try:
            body = await asyncio.wait_for(read_connect(reader), self.connect_timeout)
            v5 = body.startswith(mqtt5.MQTT5)
            head = as_mqtt311(mqtt5.connect_as_311(body) if v5 else body)
        except asyncio.TimeoutError:
            why = f"no CONNECT within {self.connect_timeout:g} s"
        except ValueError as e:
            why = shown(e)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as e:
            why = f"{type(e).__name__} before the CONNECT"
        if why:
            log(f"mqtt connection from {shown(peer[0])} on {listener_name} closed: {why}")
            writer.close()
            return
        cid = client_id(body)
        self._open.setdefault(cid, {})[peer] = writer
        try:
            if v5:
                unsubscribes = []  # UNSUBSCRIBE filter counts, for the UNSUBACKs
                adapters = (mqtt5.Reader(head, StreamReaderAdapter(reader), unsubscribes),
                            mqtt5.Writer(StreamWriterAdapter(writer), unsubscribes))
            else:
                adapters = Replayed(head, StreamReaderAdapter(reader)), StreamWriterAdapter(writer)
            await self._client_connected(listener_name, *adapters)
        except (ConnectionError, ssl.SSLError) as e:
            # amqtt lets a client's reset escape while it closes a refused connection
            log(f"mqtt connection on {listener_name} ended: {type(e).__name__}")
        finally:
            same_id = self._open.get(cid, {})
            same_id.pop(peer, None)
            if not same_id:
                self._open.pop(cid, None)

    def close_older(self, session):
        """Close the other open connections whose CONNECT named the client id of this new login.

        Only for a clean session: amqtt takes a kept session over itself, closing its old connection."""
        if not session.clean_session:
            return
        me = (session.remote_address, session.remote_port)
        for peer, writer in list(self._open.get(session.client_id, {}).items()):
            if peer != me:
                log(f"mqtt {shown(session.client_id)} logged in again: older connection closed")
                writer.close()

    def close_at(self, session, expires):
        """Close this session's connection when its credentials expire (Unix time `expires`), as a cloud
        whose logins carry an expiry (Azure's SAS tokens) does."""
        writer = self._open.get(session.client_id, {}).get((session.remote_address, session.remote_port))
        if writer is None:
            return
        who = session.attributes.get(DEVICE)

        def close():
            if not writer.is_closing():
                log(f"mqtt {shown(who)}: login credentials expired, connection closed")
                writer.close()

        asyncio.get_running_loop().call_later(max(0.0, expires - time.time()), close)

    def bound_port(self, listener):
        """The TCP port a listener actually got (useful with port 0)."""
        return self._servers[listener].instance.sockets[0].getsockname()[1]


def broker_config(host, mqtt_port, mqtts_port, certfile, keyfile, cafile):
    """amqtt configuration: plain listener "default", TLS listener "tls" (client certs optional)."""
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{host}:{mqtt_port}"},
            "tls": {"type": "tcp", "bind": f"{host}:{mqtts_port}", "ssl": True,
                    "certfile": certfile, "keyfile": keyfile, "cafile": cafile},
        },
        "plugins": dict(PLUGINS),
    }

