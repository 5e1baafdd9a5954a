"""The CA file the runtimes verify PostgreSQL by (offload/db/ca/aws-database-roots.pem): the
bytes that were reviewed, and only self-signed AWS roots that outlive the deployment."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from offload.settings import DATABASE_CA_FILE

# Starfield Services Root G2 (2009) has a negative serial number, which RFC 5280 later
# disallowed; OpenSSL, hence libpq, accepts it, and cryptography warns.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")

# Changes only with a refresh (offload/db/ca/README.md): scripts/database_ca.py prints it.
SHA256 = "7a7b08f7707339a79b06cac80b6983b1428c04af754f60da952666a06b07253f"
AMAZON_TRUST_ROOTS = {
    "Amazon Root CA 1",
    "Amazon Root CA 2",
    "Amazon Root CA 3",
    "Amazon Root CA 4",
    "Starfield Services Root Certificate Authority - G2",
}


def _certs() -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(DATABASE_CA_FILE).read_bytes())


def _name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_the_file_is_the_reviewed_one() -> None:
    assert hashlib.sha256(Path(DATABASE_CA_FILE).read_bytes()).hexdigest() == SHA256


def test_only_aws_roots() -> None:
    names = [_name(cert) for cert in _certs()]
    rds = [name for name in names if name not in AMAZON_TRUST_ROOTS]
    assert set(names) >= AMAZON_TRUST_ROOTS
    assert rds and all(
        name.startswith("Amazon RDS ") and name.endswith(" G1") and "Root CA" in name
        for name in rds
    )
    for cert in _certs():
        assert cert.subject == cert.issuer, _name(cert)  # roots only: a chain ends here
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_every_root_outlives_the_deployment() -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365 * 5)
    for cert in _certs():
        assert cert.not_valid_after_utc > soon, _name(cert)


def test_the_instance_ca_has_a_root_in_every_commercial_region_it_lists() -> None:
    """The instance is pinned to rds-ca-rsa2048-g1 (stacks/database.py): each region whose
    RDS roots the file holds has that family's root, so no region works only half-way."""
    names = {_name(cert) for cert in _certs()}
    regions = {name.split()[2] for name in names if name.startswith("Amazon RDS ")}
    assert len(regions) >= 25
    for region in regions:
        assert f"Amazon RDS {region} Root CA RSA2048 G1" in names, region
