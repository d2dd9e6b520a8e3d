"""CPython stand-in for MicroPython's ssl module, over the host's real ssl.

Firmware written against MicroPython 1.29's ssl (micropython-lib ssl.py over
the mbedTLS `tls` module) runs unchanged:
- SSLContext(PROTOCOL_TLS_CLIENT) starts with verify_mode CERT_NONE, as on
  MicroPython; CERT_REQUIRED verifies the chain and the name, and a client
  wrap without server_hostname raises ValueError("CERT_REQUIRED requires
  server_hostname") before any byte is sent, as MicroPython's tls module does.
- load_verify_locations(cafile=None, cadata=None) and load_cert_chain(cert, key)
  take DER or PEM bytes (MicroPython: DER only) or, for str, a file path.
- A failed verification raises ValueError with mbedTLS's message; other TLS
  failures raise OSError with a negative mbedTLS code.
- Wrapped sockets have the stream methods of usocket (read(n), write(buf, n),
  setblocking, ...) and no settimeout(); they keep the raw socket's timeout.
This module is named ssl and so hides the stdlib module; the real one is
loaded from the stdlib directory under the name _host_ssl.
"""
import importlib.util
import os
import sys
import tempfile

import usocket

__all__ = [
    "CERT_NONE",
    "CERT_OPTIONAL",
    "CERT_REQUIRED",
    "MBEDTLS_VERSION",
    "PROTOCOL_TLS_CLIENT",
    "PROTOCOL_TLS_SERVER",
    "SSLContext",
    "wrap_socket",
]


def _load_host_ssl():
    path = os.path.join(os.path.dirname(os.__file__), "ssl.py")
    spec = importlib.util.spec_from_file_location("_host_ssl", path)
    module = importlib.util.module_from_spec(spec)
    # ssl.py looks itself up in sys.modules while it runs (enum conversion)
    sys.modules["_host_ssl"] = module
    spec.loader.exec_module(module)
    return module


_host = _load_host_ssl()

# MicroPython's values (tls module of the unix port)
PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1
CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
MBEDTLS_VERSION = "host " + _host.OPENSSL_VERSION

_HOST_VERIFY = {
    CERT_NONE: _host.CERT_NONE,
    CERT_OPTIONAL: _host.CERT_OPTIONAL,
    CERT_REQUIRED: _host.CERT_REQUIRED,
}
# OpenSSL verify codes -> the mbedTLS message MicroPython puts in the ValueError
_VERIFY_MESSAGES = {
    9: "The certificate validity starts in the future",
    10: "The certificate validity has expired",
    62: "The certificate Common Name (CN) does not match with the expected CN",
    64: "The certificate Common Name (CN) does not match with the expected CN",
}
_NOT_TRUSTED = "The certificate is not correctly signed by the trusted CA"


def _mbedtls_error(exc):
    """The exception MicroPython raises for a host ssl exception."""
    if isinstance(exc, _host.SSLCertVerificationError):
        return ValueError("\n%s\n" % _VERIFY_MESSAGES.get(exc.verify_code, _NOT_TRUSTED))
    if isinstance(exc, _host.SSLEOFError):
        return OSError(-0x7280, "MBEDTLS_ERR_SSL_CONN_EOF")
    if "ALERT" in str(exc).upper():
        return OSError(-0x7780, "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE")
    return OSError(-0x7200, "MBEDTLS_ERR_SSL_INVALID_RECORD")


def _is_pem(data):
    return bytes(data).lstrip().startswith(b"-----BEGIN")


def _read(path_or_data):
    if isinstance(path_or_data, str):
        with open(path_or_data, "rb") as f:
            return f.read()
    return bytes(path_or_data)


def _pem_cert(data):
    if _is_pem(data):
        return data
    try:
        return _host.DER_cert_to_PEM_cert(data).encode()
    except ValueError:
        raise ValueError("invalid cert") from None


def _pem_key(data):
    if _is_pem(data):
        return data
    # a DER key may be PKCS#8, PKCS#1 or SEC1; let `cryptography` tell which
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_der_private_key(data, password=None)
    except ValueError:
        raise ValueError("invalid key") from None
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _TLSSocket(usocket._Stream):
    """A TLS connection with MicroPython stream methods."""

    _WOULD_BLOCK = (BlockingIOError, _host.SSLWantReadError, _host.SSLWantWriteError)

    def _once(self, func, *args):
        try:
            return super()._once(func, *args)
        except _host.SSLError as exc:
            raise _mbedtls_error(exc) from None

    def cipher(self):
        """(name, protocol, bits) of the negotiated cipher."""
        return self._sock.cipher()


class SSLContext:
    """TLS settings shared by the connections it wraps."""

    def __init__(self, protocol):
        if protocol not in (PROTOCOL_TLS_CLIENT, PROTOCOL_TLS_SERVER):
            raise ValueError("invalid protocol")
        self._server = protocol == PROTOCOL_TLS_SERVER
        host_protocol = _host.PROTOCOL_TLS_SERVER if self._server else _host.PROTOCOL_TLS_CLIENT
        self._ctx = _host.SSLContext(host_protocol)
        self._ctx.check_hostname = False
        self._ctx.verify_mode = _host.CERT_NONE
        self.verify_mode = CERT_NONE

    def load_verify_locations(self, cafile=None, cadata=None):
        """Trust the CA certificate in cafile (path) or cadata (DER or PEM bytes)."""
        if cafile:
            cadata = _read(cafile)
        cadata = bytes(cadata)
        try:
            if _is_pem(cadata):
                self._ctx.load_verify_locations(cadata=cadata.decode())
            else:
                self._ctx.load_verify_locations(cadata=cadata)
        except (_host.SSLError, ValueError):
            raise ValueError("invalid cert") from None

    def load_cert_chain(self, certfile, keyfile):
        """Use this certificate and key (paths, or DER or PEM bytes)."""
        pem = _pem_cert(_read(certfile)) + b"\n" + _pem_key(_read(keyfile))
        # the host ssl loads certificates and keys from files only
        fd, path = tempfile.mkstemp(suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            self._ctx.load_cert_chain(path)
        except _host.SSLError:
            raise ValueError("invalid key") from None
        finally:
            os.remove(path)

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None):
        """Start TLS on a connected usocket.socket; return the TLS socket."""
        ctx = self._ctx
        ctx.check_hostname = False
        if self._server:
            ctx.verify_mode = _HOST_VERIFY[self.verify_mode]
        elif self.verify_mode == CERT_REQUIRED:
            if server_hostname is None:
                raise ValueError("CERT_REQUIRED requires server_hostname")
            ctx.verify_mode = _host.CERT_REQUIRED
            ctx.check_hostname = True
        else:
            # an mbedTLS client with CERT_OPTIONAL carries on after a failed check
            ctx.verify_mode = _host.CERT_NONE
        raw = sock._sock if isinstance(sock, usocket._Stream) else sock
        timeout = sock._timeout if isinstance(sock, usocket._Stream) else raw.gettimeout()
        blocking = sock._blocking if isinstance(sock, usocket._Stream) else True
        raw.settimeout(timeout)  # the handshake blocks, honouring the timeout
        try:
            conn = ctx.wrap_socket(
                raw,
                server_side=server_side,
                do_handshake_on_connect=do_handshake_on_connect,
                server_hostname=None if server_side else server_hostname,
            )
        except _host.SSLError as exc:
            raise _mbedtls_error(exc) from None
        except TimeoutError:
            raise OSError(110, "ETIMEDOUT") from None
        return _TLSSocket(conn, timeout, blocking)


def wrap_socket(
    sock,
    server_side=False,
    key=None,
    cert=None,
    cert_reqs=CERT_NONE,
    cadata=None,
    server_hostname=None,
    do_handshake=True,
):
    """One-shot wrap, like micropython-lib's ssl.wrap_socket()."""
    ctx = SSLContext(PROTOCOL_TLS_SERVER if server_side else PROTOCOL_TLS_CLIENT)
    if cert or key:
        ctx.load_cert_chain(cert, key)
    if cadata:
        ctx.load_verify_locations(cadata=cadata)
    ctx.verify_mode = cert_reqs
    return ctx.wrap_socket(
        sock,
        server_side=server_side,
        do_handshake_on_connect=do_handshake,
        server_hostname=server_hostname,
    )
