"""Rebuild ``offload/db/ca/aws-database-roots.pem``: the CAs the runtimes verify PostgreSQL by.

    python scripts/database_ca.py global-bundle.pem

``global-bundle.pem`` is RDS's certificate bundle, downloaded by whoever refreshes it from
https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem (offload/db/ca/README.md).
The output holds:

- every RDS root CA of that bundle (``Amazon RDS <region> Root CA ... G1``, self-signed), the
  ``Beta`` and ``Preview`` ones left out (no production endpoint chains to them): the instance,
  which the workers reach directly, presents a certificate under one of them;
- Amazon Trust Services' roots (Amazon Root CA 1 to 4, Starfield Services Root G2), taken from
  the certifi package the dev lock pins by hash: RDS Proxy, which the Lambdas reach, presents
  an ACM certificate under them.

It then prints the file's SHA-256, for ``tests/test_database_ca.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "offload" / "db" / "ca" / "aws-database-roots.pem"
AMAZON_TRUST_ROOTS = (
    "Amazon Root CA 1",
    "Amazon Root CA 2",
    "Amazon Root CA 3",
    "Amazon Root CA 4",
    "Starfield Services Root Certificate Authority - G2",
)
NOT_PRODUCTION = ("Beta", "Preview")


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def rds_roots(bundle: bytes) -> list[x509.Certificate]:
    roots = []
    for cert in x509.load_pem_x509_certificates(bundle):
        name = common_name(cert)
        words = name.split()
        if (
            name.startswith("Amazon RDS ")
            and "Root CA" in name
            and not any(word in words for word in NOT_PRODUCTION)
            and cert.subject == cert.issuer
        ):
            roots.append(cert)
    return sorted(roots, key=common_name)


def amazon_trust_roots() -> list[x509.Certificate]:
    found = {
        common_name(cert): cert
        for cert in x509.load_pem_x509_certificates(Path(certifi.where()).read_bytes())
    }
    missing = [name for name in AMAZON_TRUST_ROOTS if name not in found]
    if missing:
        raise SystemExit(f"certifi {certifi.__version__} lacks {missing}")
    return [found[name] for name in AMAZON_TRUST_ROOTS]


def render(certs: list[x509.Certificate]) -> bytes:
    return b"".join(
        f"# {common_name(cert)}\n".encode() + cert.public_bytes(Encoding.PEM) for cert in certs
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="RDS's global-bundle.pem, as downloaded")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    rds = rds_roots(args.bundle.read_bytes())
    if not rds:
        raise SystemExit(f"{args.bundle}: no RDS root CA in it")
    content = render(rds + amazon_trust_roots())
    args.output.write_bytes(content)
    print(f"{args.output}: {len(rds)} RDS roots + {len(AMAZON_TRUST_ROOTS)} Amazon Trust roots")
    print(f"sha256 {hashlib.sha256(content).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
