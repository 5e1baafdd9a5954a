"""A PostgreSQL of the test's own that speaks TLS, with a certificate from a CA made here.

RDS and RDS Proxy cannot run on this machine, but what the runtimes' ``sslmode=verify-full``
must do can be shown against any TLS server: accept the certificate only when it chains to
the CA file given and names the host connected to. So the tests make a CA, a server
certificate for ``localhost`` signed by it, and start a throwaway cluster (``OwnPostgres``)
with ``ssl=on``; a second CA, which signed nothing the server holds, stands for any CA the
runtimes must not trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.own_servers import OwnPostgres

SERVER_NAME = "localhost"  # the only name in the server's certificate (no IP address)


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


def make_authority(common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return Authority(key, _validity(builder).sign(key, hashes.SHA256()))


def issue_server_certificate(
    authority: Authority, dns_names: list[str], ip_addresses: tuple[str, ...] = ()
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) of a server certificate for exactly these names."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    cert = _validity(builder).sign(authority.key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class TlsPostgres:
    """A trust-auth cluster with ``ssl=on`` and a certificate for ``localhost`` from
    ``authority``; ``ca_file`` is that CA, ``other_ca_file`` one that signed nothing here."""

    def __init__(self, workdir: Path, run_id: str):
        self.authority = make_authority("offload test CA")
        self.other = make_authority("offload other test CA")
        self.ca_file = workdir / "test-ca.pem"
        self.other_ca_file = workdir / "other-ca.pem"
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(self.authority.pem())
        self.other_ca_file.write_bytes(self.other.pem())
        self.server = OwnPostgres(workdir, run_id)
        cert, key = issue_server_certificate(self.authority, [SERVER_NAME])
        self._install(cert, key)

    def _install(self, cert: bytes, key: bytes) -> None:
        datadir = self.server.datadir
        (datadir / "server.crt").write_bytes(cert)
        (datadir / "server.key").write_bytes(key)
        os.chmod(datadir / "server.key", 0o600)  # PostgreSQL refuses a key others can read
        if os.geteuid() == 0:
            for name in ("server.crt", "server.key"):
                shutil.chown(datadir / name, "postgres", "postgres")
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.server.start()

    def remove(self) -> None:
        self.server.remove()
