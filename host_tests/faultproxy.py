"""A threaded byte-level TCP proxy between the simulated board and the cloud emulator, for fault tests.

The board's settings point at the proxy's port; the proxy forwards to the emulator. TLS passes through
untouched (the proxy never looks inside), so the board still verifies the emulator's certificate.
Each accepted connection gets the next entry of `plan` (then "pass"):

  "pass"                      forward both ways
  "refuse"                    accept and close at once (the board sees a reset / EOF: connection refused)
  "hang"                      accept and never answer (held until the board gives up or the proxy stops)
  ("drop", n)                 forward, but close both sides once n bytes came from the server
  ("reply", data, tls)        answer `data` itself after the board's first request bytes, then close;
                              tls=True terminates TLS with the emulator's server certificate (so the
                              board trusts it): "HTTP/1.1 503" for HTTPS, CONNACK 3 for MQTTS
  ("cut_client", action)      call action() (e.g. cut the board's power) on the board's first bytes,
                              forward nothing, hold the connection
  ("cut_server", pred, action) forward, but at the first server chunk for which pred() is true call
                              action() instead of forwarding it, and hold (e.g. the CONNACK of a login
                              the emulator has already recorded)

`connections` counts accepted connections; `log` lists (index, mode) as they were applied.
"""

import socket
import ssl
import threading

HTTP_503 = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}")
CONNACK_UNAVAILABLE = b"\x20\x02\x00\x03"


class FaultProxy:
    def __init__(self, upstream_port, plan=(), upstream_host="127.0.0.1", certfile=None, keyfile=None):
        self.upstream = (upstream_host, upstream_port)
        self.plan = list(plan)
        self.certfile, self.keyfile = certfile, keyfile
        self.connections = 0
        self.log = []
        self._socks = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._stop.set()
        try:
            self.listener.close()
        except OSError:
            pass
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _close(s)

    def _track(self, s):
        with self._lock:
            self._socks.append(s)
        return s

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
            mode = self.plan[index] if index < len(self.plan) else "pass"
            self.log.append((index, mode if isinstance(mode, str) else mode[0]))
            threading.Thread(target=self._serve, args=(self._track(client), mode), daemon=True).start()

    def _serve(self, client, mode):
        kind = mode if isinstance(mode, str) else mode[0]
        if kind == "refuse":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            _close(client)  # RST: what a closed port looks like to the board
            return
        if kind == "hang":
            self._stop.wait()
            _close(client)
            return
        if kind == "reply":
            self._reply(client, mode[1], mode[2])
            return
        if kind == "cut_client":
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if data:
                mode[1]()
            self._stop.wait()  # hold: the board dies; never forward
            _close(client)
            return
        try:
            upstream = self._track(socket.create_connection(self.upstream, timeout=10))
            upstream.settimeout(None)
        except OSError:
            _close(client)
            return
        drop = mode[1] if kind == "drop" else None
        cut = mode[1:] if kind == "cut_server" else None
        threading.Thread(target=self._pump, args=(client, upstream, None, None), daemon=True).start()
        self._pump(upstream, client, drop, cut)

    def _pump(self, src, dst, drop, cut):
        """Copy src -> dst; with drop close both after that many bytes; with cut (pred, action) hold."""
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if cut and cut[0]():
                    cut[1]()
                    self._stop.wait()
                    break
                if drop is not None and sent + len(data) >= drop:
                    dst.sendall(data[:drop - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        _close(src)
        _close(dst)

    def _reply(self, client, data, tls):
        try:
            client.settimeout(10)
            if tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(self.certfile, self.keyfile)
                client = self._track(ctx.wrap_socket(client, server_side=True))
            got = b""
            while not got or (got.startswith(b"POST") and b"\r\n\r\n" not in got):
                chunk = client.recv(65536)
                if not chunk:
                    break
                got += chunk
            client.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        _close(client)


def _close(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
