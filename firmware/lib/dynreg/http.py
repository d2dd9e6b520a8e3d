"""A small HTTP/1.0 client for registration over HTTP(S): one POST, a reply of bounded size."""

from micropython import const

from dynreg import DynregError, net

MAX_HEADER = const(2048)  # bytes of HTTP status line + headers the device accepts
MAX_LINE = const(512)  # bytes of one of those lines
MAX_BODY = const(4096)  # bytes of HTTP body the device accepts


def post(host, port, path, headers, body, ctx=None, until=None, timeout=10):
    """POST `body` (bytes) and return (status, reply body bytes); reads at most MAX_HEADER + MAX_BODY bytes,
    all of it by ticks_ms `until` (default: `timeout` seconds from now) however slowly the server sends."""
    until = net.deadline(timeout * 1000) if until is None else until
    s = net.open_socket(host, port, ctx, timeout, "http")
    try:
        req = "POST %s HTTP/1.0\r\nHost: %s%s\r\nContent-Length: %d\r\n" % (
            path, host, "" if port == (443 if ctx else 80) else ":%d" % port, len(body))
        for name, value in headers:
            req += "%s: %s\r\n" % (name, value)
        s.write(req.encode() + b"\r\n" + body)
        req = None
        s.setblocking(False)
        return read_reply(s, until)
    finally:
        s.close()


def _line(s, until):
    """One header line (at most MAX_LINE bytes) read a byte at a time: the deadline holds between bytes."""
    line = b""
    while len(line) < MAX_LINE and not line.endswith(b"\n"):
        b = net.read(s, 1, until, "http")
        if not b:
            break
        line += b
    return line


def read_reply(s, until=None):
    """Read an HTTP reply from stream `s` -> (status, body) by ticks_ms `until` (None: as the stream
    blocks); DynregError on anything malformed, too long or too slow."""
    status = length = None
    budget = MAX_HEADER
    while True:
        line = _line(s, until) if until is not None else s.readline(MAX_LINE)
        budget -= len(line)
        if budget < 0 or not line.endswith(b"\n"):
            raise DynregError("http: reply headers too long or cut short")
        if status is None:
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise DynregError("http: malformed status line")
            status = int(parts[1])
        elif line in (b"\r\n", b"\n"):
            break
        else:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                value = value.strip()
                if not value.isdigit():
                    raise DynregError("http: bad Content-Length")
                length = int(value)
    if length is not None and length > MAX_BODY:
        raise DynregError("http: reply body of %d bytes exceeds %d" % (length, MAX_BODY))
    body = net.read(s, MAX_BODY + 1 if length is None else length, until, "http")
    if len(body) > MAX_BODY or (length is not None and len(body) != length):
        raise DynregError("http: reply body too long or cut short")
    return status, body
