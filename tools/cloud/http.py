"""HTTP and HTTPS registration servers: threads that hand each POST to a platform's route."""

import json
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .platform import Request, log, shown

MAX_BODY = 4096
# an oversized body is read (up to this much) and dropped, so the client sees the reply, not a reset
MAX_DRAIN = 1 << 20


def host_without_port(value):
    """The Host header as sent, minus any ":port" ("[::1]:8443" -> "[::1]")."""
    value = (value or "").strip()
    if value.startswith("["):
        return value[:value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dynreg-cloud"
    timeout = 15

    def version_string(self):
        return self.server_version

    def setup(self):
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            # handshake here, in the connection's thread, so a stalled client blocks nobody else
            self.connection.do_handshake()

    def do_POST(self):  # noqa: N802 (http.server naming)
        self._dispatch()

    def do_GET(self):  # noqa: N802
        self._dispatch()

    def _dispatch(self):
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get(path)
        body = self._read_body()
        if route is None:
            log(f"http {self.command} {shown(path)}: no such route")
            self._reply(404, {"Response": {"Error": {"Code": "InvalidAction", "Message": "no such path"},
                                           "RequestId": ""}})
            return
        request = Request(self.command, path, host_without_port(self.headers.get("Host")), self.headers, body)
        try:
            status, reply = route(request)
        except Exception as e:  # a bug in a route must not leave the device without an answer
            log(f"http {path}: internal error {type(e).__name__}")
            status, reply = 500, {"Response": {"Error": {"Code": "InternalError", "Message": "internal error"},
                                               "RequestId": ""}}
        self._reply(status, reply)

    def _read_body(self):
        """The body (at most MAX_BODY bytes), or None when absent-length, chunked, too large or short."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return None
        if length < 0:
            return None
        if length > MAX_BODY:
            left = min(length, MAX_DRAIN)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            self.close_connection = True
            return None
        body = self.rfile.read(length) if length else b""
        return body if len(body) == length else None

    def _reply(self, status, reply):
        data = json.dumps(reply, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002 (http.server signature)
        """Silence the default access log; routes log what matters."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, routes, scheme):
        self.routes = routes
        self.scheme = scheme
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        log(f"{self.scheme} connection from {client_address[0]} failed: {shown(sys.exc_info()[1], 120)}")


def start_servers(host, http_port, https_port, routes, certfile, keyfile):
    """Start the HTTP and HTTPS servers in daemon threads; returns both servers (see .server_address)."""
    plain = _Server((host, http_port), routes, "http")
    secure = _Server((host, https_port), routes, "https")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    secure.socket = context.wrap_socket(secure.socket, server_side=True, do_handshake_on_connect=False)
    for server in (plain, secure):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                         name=f"cloud-{server.scheme}", daemon=True).start()
    return plain, secure
