"""A plain-TCP MQTT proxy between the simulated board and the emulator's broker that frames packets both
ways, so tests act at exact protocol points and wait on the packets it saw (never on a sleep).

Each connection forwards packet by packet. `rule = (direction, pred, action)` fires once, on the first
packet (conn, first byte, body) for which pred is true travelling in `direction` ("up": board to broker,
"down": broker to board): "cut" closes the connection instead of forwarding the packet, "cut_after"
forwards it and then closes, "stall" swallows it and everything after it both ways (the connection
stays open: a broker that stopped answering). `inject(data)` writes raw bytes to the board on the
newest connection between two broker packets. `upstream` may change (an emulator restarted on new ports).
"""

import socket
import threading

from host_tests.test_hostile import packet, read_packet  # noqa: F401  (packet: for the tests' injections)

UP, DOWN = "up", "down"


class Conn:
    """One proxied connection: what went each way, and the lock that keeps writes to the board whole."""

    def __init__(self, index, client):
        self.index, self.client, self.upstream = index, client, None
        self.packets = []  # (direction, first byte, body) in the order forwarded
        self.closed = self.stalled = False
        self.lock = threading.Lock()

    def sent(self, direction, kind):
        """Packets of type `kind` (high nibble) forwarded in `direction`."""
        return [(f, b) for d, f, b in self.packets if d == direction and f & 0xF0 == kind]

    def close(self):
        self.closed = True
        for s in (self.client, self.upstream):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


class MqttProxy:
    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.conns = []
        self.rule = None
        self.cond = threading.Condition()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self._stop = True
        self.listener.close()
        for c in list(self.conns):
            c.close()

    def wait(self, pred, timeout=60, what="event"):
        """Block until pred() is true (checked whenever a packet passes or a connection changes)."""
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise AssertionError("proxy: no %s within %s s" % (what, timeout))

    def newest(self):
        return self.conns[-1] if self.conns else None

    def live(self):
        """The newest connection that is open and has a CONNACK 0 through, or None."""
        c = self.newest()
        if c and not c.closed and any(f == 0x20 and b[1:2] == b"\x00" for d, f, b in c.packets if d == DOWN):
            return c
        return None

    def inject(self, data, conn=None):
        c = conn or self.newest()
        with c.lock:
            c.client.sendall(data)

    def cut(self, conn=None):
        c = conn or self.newest()
        c.close()
        self._notify()

    def _notify(self):
        with self.cond:
            self.cond.notify_all()

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            conn = Conn(len(self.conns), client)
            try:
                conn.upstream = socket.create_connection(self.upstream, timeout=10)
                conn.upstream.settimeout(None)
            except OSError:
                client.close()
                conn.closed = True
            with self.cond:
                self.conns.append(conn)
                self.cond.notify_all()
            if not conn.closed:
                threading.Thread(target=self._pump, args=(conn, UP), daemon=True).start()
                threading.Thread(target=self._pump, args=(conn, DOWN), daemon=True).start()

    def _pump(self, conn, direction):
        src, dst = (conn.client, conn.upstream) if direction == UP else (conn.upstream, conn.client)
        try:
            while True:
                first, body = read_packet(src)
                if conn.stalled:
                    continue
                action = None
                with self.cond:
                    rule = self.rule
                    if rule and rule[0] == direction and rule[1](conn, first, body):
                        self.rule, action = None, rule[2]
                if action == "stall":
                    conn.stalled = True
                    self._notify()
                    continue
                if action == "cut":
                    break
                with conn.lock:
                    dst.sendall(packet(first, body))
                with self.cond:
                    conn.packets.append((direction, first, body))
                    self.cond.notify_all()
                if action == "cut_after":
                    break
        except OSError:
            pass
        conn.close()
        self._notify()
