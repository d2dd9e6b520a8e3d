"""CPython stand-in for MicroPython's usocket, with MicroPython stream semantics.

Behaviour copied from the MicroPython unix port (py/stream.c, ports/unix/modsocket.c):
- read(n) blocks until n bytes or EOF; read() reads to EOF; readinto(buf[, n])
  likewise; readline() stops after b"\\n"; write(buf[, n]) / write(buf, off, n)
  writes everything and returns the count; recv/send transfer once.
- Non-blocking (setblocking(False) or settimeout(0)): read/readinto/readline/
  write return None when nothing could be transferred, recv/send raise
  OSError(11) (EAGAIN).
- A timeout raises OSError(110) (ETIMEDOUT). setblocking(True) keeps a timeout
  set earlier with settimeout() (unix port; on the ESP32 port it clears it).
- getaddrinfo() failures raise OSError('[addrinfo error N]').
str is accepted wherever a buffer is, as MicroPython's buffer protocol does.
"""
import socket as _socket

AF_INET = _socket.AF_INET
AF_INET6 = _socket.AF_INET6
SOCK_STREAM = _socket.SOCK_STREAM
SOCK_DGRAM = _socket.SOCK_DGRAM
SOL_SOCKET = _socket.SOL_SOCKET
SO_REUSEADDR = _socket.SO_REUSEADDR

_EAGAIN = 11
_ETIMEDOUT = 110


def _buffer(data):
    if isinstance(data, str):
        data = data.encode()
    return memoryview(data).cast("B")


class _Stream:
    """MicroPython stream methods over a host socket (plain or TLS)."""

    # exceptions meaning "nothing to transfer now" on a non-blocking socket
    _WOULD_BLOCK = (BlockingIOError,)

    def __init__(self, sock, timeout=None, blocking=True):
        self._sock = sock
        self._timeout = timeout
        self._blocking = blocking
        self._apply_timeout()

    def _apply_timeout(self):
        self._sock.settimeout(self._timeout if self._blocking else 0.0)

    def _once(self, func, *args):
        """One host call: returns None when it would block; maps timeouts."""
        try:
            return func(*args)
        except self._WOULD_BLOCK:
            return None
        except TimeoutError:
            raise OSError(_ETIMEDOUT, "ETIMEDOUT") from None

    def setblocking(self, flag):
        """Blocking (True) or non-blocking (False); a timeout stays set."""
        self._blocking = bool(flag)
        self._apply_timeout()

    def fileno(self):
        """Host file descriptor (lets CPython's select.poll accept the object)."""
        return self._sock.fileno()

    def close(self):
        """Close the connection."""
        self._sock.close()

    def recv(self, bufsize):
        """Receive at most bufsize bytes in one call; b"" at EOF."""
        data = self._once(self._sock.recv, bufsize)
        if data is None:
            raise OSError(_EAGAIN, "EAGAIN")
        return data

    def send(self, data):
        """Send once; return the number of bytes sent."""
        count = self._once(self._sock.send, _buffer(data))
        if count is None:
            raise OSError(_EAGAIN, "EAGAIN")
        return count

    def sendall(self, data):
        """Send everything."""
        self.write(data)

    def readinto(self, buf, nbytes=None):
        """Fill buf (or its first nbytes); return the count, fewer only at EOF."""
        view = memoryview(buf).cast("B")
        if nbytes is not None:
            view = view[:nbytes]
        done = 0
        while done < len(view):
            count = self._once(self._sock.recv_into, view[done:])
            if count is None:
                return done or None
            if count == 0:
                break
            done += count
        return done

    def read(self, size=-1):
        """Read size bytes (fewer only at EOF), or everything up to EOF."""
        if size is None or size < 0:
            chunks = []
            while True:
                chunk = self._once(self._sock.recv, 4096)
                if chunk is None:
                    if not chunks:
                        return None
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        buf = bytearray(size)
        count = self.readinto(buf)
        if count is None:
            return None
        return bytes(buf[:count])

    def readline(self, limit=-1):
        """Read up to and including b"\\n", to EOF, or `limit` bytes (as MicroPython's readline(size))."""
        line = bytearray()
        while len(line) != limit:
            chunk = self._once(self._sock.recv, 1)
            if chunk is None:
                return bytes(line) if line else None
            line += chunk
            if not chunk or chunk == b"\n":
                return bytes(line)
        return bytes(line)

    def write(self, buf, *args):
        """write(buf), write(buf, n) or write(buf, off, n): send all; return count."""
        view = _buffer(buf)
        if len(args) == 1:
            view = view[: args[0]]
        elif len(args) == 2:
            view = view[args[0] : args[0] + args[1]]
        done = 0
        while done < len(view):
            count = self._once(self._sock.send, view[done:])
            if count is None:
                return done or None
            done += count
        return done


class socket(_Stream):
    """A TCP/UDP socket like MicroPython's socket.socket."""

    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0, _sock=None):
        super().__init__(_sock or _socket.socket(af, type, proto))

    def settimeout(self, value):
        """None: blocking; 0: non-blocking; seconds: blocking with a timeout."""
        self._timeout = value or None
        self._blocking = value != 0
        self._apply_timeout()

    def connect(self, address):
        """Connect to (host, port)."""
        try:
            self._sock.connect(address)
        except TimeoutError:
            raise OSError(_ETIMEDOUT, "ETIMEDOUT") from None

    def bind(self, address):
        """Bind to (host, port)."""
        self._sock.bind(address)

    def listen(self, backlog=2):
        """Accept connections."""
        self._sock.listen(backlog)

    def accept(self):
        """(socket, address) of the next incoming connection."""
        pair = self._once(self._sock.accept)
        if pair is None:
            raise OSError(_EAGAIN, "EAGAIN")
        conn, address = pair
        return socket(_sock=conn), address

    def setsockopt(self, level, option, value):
        """Set a socket option."""
        self._sock.setsockopt(level, option, value)

    def makefile(self, mode="rb", buffering=0):
        """The socket itself, as in MicroPython."""
        return self


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    """[(family, type, proto, canonname, (ip, port)), ...] for host:port.

    IPv4 unless af says otherwise: the ESP32 has no IPv6 by default, and
    socket() makes AF_INET sockets.
    """
    try:
        return _socket.getaddrinfo(host, port, af or AF_INET, type, proto, flags)
    except _socket.gaierror as exc:
        raise OSError("[addrinfo error %d]" % exc.errno) from None
