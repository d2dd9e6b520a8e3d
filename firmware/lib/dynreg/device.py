"""A device logged in to its platform: the umqtt.simple client, its identity and its topics."""

import time

from dynreg import log, mqtt


class Device:
    """What `dynreg.connect()` returns. `client` is the umqtt.simple MQTTClient for direct use."""

    def __init__(self, platform, client, pid, ident):
        self.platform = platform  # the platform module (dynreg.tencent, ...)
        self.client = client
        self.pid = pid  # product id the device logs in under
        self.ident = ident  # device name / DeviceSN / uuid, as the platform's topics spell it
        self.seq = 0  # message counter for ids and client tokens
        self.properties = {}  # properties the cloud has set (platforms with property_set)
        self.on_message = None  # user hook f(topic, msg) for messages the platform does not handle
        self._want = None
        self._got = None
        client.set_callback(self._deliver)

    def _deliver(self, topic, msg):
        if self._want is not None and topic == self._want:
            self._got = msg
        elif self.platform.handle(self, topic, msg):
            pass
        elif self.on_message:
            self.on_message(topic, msg)
        else:
            log("message on %s (%d bytes)" % (topic.decode(), len(msg)))

    def wait_for(self, topic, timeout_ms):
        """Handle incoming messages until one arrives on `topic`; return it, or None after timeout_ms."""
        self._want, self._got = topic.encode() if isinstance(topic, str) else topic, None
        try:
            self.poll(timeout_ms)
            return self._got
        finally:
            self._want = self._got = None

    def poll(self, timeout_ms):
        """Handle incoming messages for up to timeout_ms (less if a wait_for() message arrives)."""
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < timeout_ms and self._got is None:
            op = self.client.check_msg()
            if op is None:
                time.sleep_ms(20)
            elif op & 0xF0 != 0x30:
                # umqtt.simple hands back other packets after their first byte (SUBACK of subscribe())
                op, body = mqtt.read(self.client.sock, 64, op)
                if op == 0x90 and b"\x80" in body[2:]:
                    log("the broker refused a subscription")

    def subscribe(self, topics):
        """Subscribe to all `topics` (QoS 0) in one packet, without waiting: poll() takes the SUBACK."""
        self.client.pid += 1
        self.client.sock.write(mqtt.subscribe(self.client.pid, topics))

    def publish(self, topic, msg):
        """Publish `msg` (bytes or str) at QoS 0."""
        self.client.publish(topic, msg)

    def report(self, props):
        """Publish a dict of properties to the platform's telemetry topic."""
        self.platform.report(self, props)

    def close(self):
        """Disconnect from the broker."""
        self.client.disconnect()
