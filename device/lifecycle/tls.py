"""TLS for the admin area and for pushes on a plant LAN: a self-signed certificate made on the device
at install (`phibox tls init`), and client connections that pin its SHA-256 fingerprint (no CA on
an offline plant network; the admin copies the fingerprint the device printed).

The certificate and key live in the state directory's tls/ folder (key mode 0600).
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from phibox.device.errors import ConfigError, PhiboxError
from phibox.device.fsutil import atomic_write
from phibox.device.lifecycle.state import StateDir

VALID_DAYS = 3650


class PinError(PhiboxError):
    """The server's certificate is not the one whose fingerprint was given."""


def tls_paths(state: StateDir) -> tuple[Path, Path]:
    """(certificate, key) in the state directory."""
    return state.root / "tls" / "cert.pem", state.root / "tls" / "key.pem"


def normalise(fp: str) -> str:
    """A fingerprint as 64 lower-case hex digits (accepts the AB:CD:... form)."""
    digits = fp.replace(":", "").strip().lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ConfigError(f"{fp!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return digits


def pretty(digits: str) -> str:
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2)).upper()


def fingerprint(cert_pem: Path) -> str:
    """The SHA-256 of the certificate's DER bytes, as 64 hex digits."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{cert_pem}: not a readable PEM certificate ({exc})") from exc
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def init(state: StateDir, names: list[str], force: bool = False) -> str:
    """Make a self-signed certificate for this device's names and addresses; returns its fingerprint.
    An existing one is kept unless force (devices that pinned it would refuse a new one)."""
    cert_path, key_path = tls_paths(state)
    if cert_path.exists() and not force:
        raise ConfigError(f"{cert_path} exists (fingerprint {pretty(fingerprint(cert_path))}); pass --force to "
                          "replace it, then give the new fingerprint to every `phibox push --fingerprint`")
    key = ec.generate_private_key(ec.SECP256R1())
    own = socket.gethostname()
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys([own, "localhost", *names, "127.0.0.1", "::1"]):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"phibox {own}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return fingerprint(cert_path)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a device whose certificate must have the given SHA-256 fingerprint; checked right
    after the handshake, before any request (and its token) is sent."""

    def __init__(self, host: str, port: int | None, pin: str, timeout: float) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # trust comes from the pin, not from a CA
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(host, port, timeout=timeout, context=context)
        self.pin = normalise(pin)

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) if self.sock is not None else None
        seen = hashlib.sha256(der or b"").hexdigest()
        if seen != self.pin:
            self.close()
            raise PinError(f"{self.host}:{self.port} presented a certificate with fingerprint {pretty(seen)}, not "
                           f"the pinned {pretty(self.pin)}: not sending anything (another machine, or a new "
                           "certificate: check `phibox tls show` on the device)")
