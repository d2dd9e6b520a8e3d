"""Test PKI of the cloud emulator: a CA, the server certificate, device certificates.

Everything is EC P-256 (small enough for an ESP32, mbedTLS, to parse and keep in NVS) unless a platform
hands issue_device_cert() a key of its own (AWS issues RSA-2048 as the real service does).
Certificates are valid from 2000-01-01 because a device may check them before its
clock is set (an ESP32 wakes up in the year 2000).
"""

import datetime
import hashlib
import ipaddress
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
LIFETIME = datetime.timedelta(days=365 * 30)
BASE_NAMES = ("localhost", "127.0.0.1", "::1")


def _write(path, data, private=False):
    """Write bytes atomically; private files are readable by the owner only."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(names):
    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _builder(subject, issuer, public_key):
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(datetime.datetime.now(datetime.timezone.utc) + LIFETIME))


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dynreg cloud emulator"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Pki:
    """The emulator's CA and server certificate, kept in the state directory."""

    def __init__(self, state_dir):
        self.dir = state_dir
        self.ca_pem = os.path.join(state_dir, "ca.pem")
        self.ca_der = os.path.join(state_dir, "ca.der")
        self.ca_key = os.path.join(state_dir, "ca.key")
        self.server_pem = os.path.join(state_dir, "server.pem")
        self.server_key = os.path.join(state_dir, "server.key")
        self._ca_cert = None
        self._ca_private = None

    def ensure(self, extra_names=()):
        """Create the CA (first run only) and a server certificate covering all names.

        Returns a list of what was generated, for the log. The server certificate is
        regenerated when it lacks a requested name (e.g. a new --cert-name).
        """
        made = []
        if not (os.path.exists(self.ca_pem) and os.path.exists(self.ca_key)):
            key = ec.generate_private_key(ec.SECP256R1())
            name = _name("dynreg test CA")
            cert = (_builder(name, name, key.public_key())
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                   critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                    .sign(key, hashes.SHA256()))
            _write(self.ca_key, _key_pem(key), private=True)
            _write(self.ca_pem, cert.public_bytes(serialization.Encoding.PEM))
            _write(self.ca_der, cert.public_bytes(serialization.Encoding.DER))
            for stale in (self.server_pem, self.server_key):
                if os.path.exists(stale):
                    os.remove(stale)
            made.append("CA " + self.ca_pem)
        self._load_ca()
        names = list(BASE_NAMES) + [n for n in extra_names if n not in BASE_NAMES]
        if not self._server_covers(names):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (_builder(_name(names[0]), self._ca_cert.subject, key.public_key())
                    .add_extension(_san(names), critical=False)
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                    .sign(self._ca_private, hashes.SHA256()))
            _write(self.server_key, _key_pem(key), private=True)
            _write(self.server_pem, cert.public_bytes(serialization.Encoding.PEM))
            made.append("server certificate for " + ", ".join(names))
        return made

    def _load_ca(self):
        with open(self.ca_pem, "rb") as f:
            self._ca_cert = x509.load_pem_x509_certificate(f.read())
        with open(self.ca_key, "rb") as f:
            self._ca_private = serialization.load_pem_private_key(f.read(), None)
        if not os.path.exists(self.ca_der):
            _write(self.ca_der, self._ca_cert.public_bytes(serialization.Encoding.DER))

    def _server_covers(self, names):
        if not (os.path.exists(self.server_pem) and os.path.exists(self.server_key)):
            return False
        with open(self.server_pem, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        try:
            cert.verify_directly_issued_by(self._ca_cert)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        return set(_san(names)) <= set(san)

    def issue_device_cert(self, common_name, key=None):
        """Issue a client certificate for a device (for `key`, a private key, else a new EC P-256 one);
        returns (cert PEM, key PEM (PKCS#8), sha256 hex of the cert DER)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        cert = (_builder(_name(common_name), self._ca_cert.subject, key.public_key())
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self._ca_private, hashes.SHA256()))
        der = cert.public_bytes(serialization.Encoding.DER)
        return (cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key).decode(),
                fingerprint(der))


def fingerprint(der):
    """Lowercase hex SHA-256 of a certificate's DER bytes."""
    return hashlib.sha256(der).hexdigest()

