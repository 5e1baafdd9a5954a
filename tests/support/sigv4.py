"""S3's check of a presigned (SigV4 query) URL, recomputed with botocore's own signer.

moto does not verify signatures, so a test cannot watch S3 refuse a request whose headers do
not match what a URL signed. Instead it recomputes the signature S3 would expect for the
request as sent (the URL's method, path, query without ``X-Amz-Signature``, and the values of
the headers ``X-Amz-SignedHeaders`` names) with the URL's own date, scope and expiry, and the
credentials that signed it, and compares it with the URL's ``X-Amz-Signature``: equal means S3
accepts the request, different means S3 answers 403 SignatureDoesNotMatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def signed_headers(url: str) -> list[str]:
    """The header names the URL's signature covers (``X-Amz-SignedHeaders``)."""
    return query(url)["X-Amz-SignedHeaders"].split(";")


def expected_signature(
    url: str, method: str, headers: Mapping[str, str], access_key: str, secret_key: str
) -> str:
    """The signature S3 computes for ``method`` ``url`` carrying ``headers``: only the headers
    the URL says it signed are taken (``host`` from the URL when not given)."""
    parts = urlsplit(url)
    fields = query(url)
    access, date, region, service, _ = fields["X-Amz-Credential"].split("/")
    assert access == access_key, "the URL was signed with other credentials"
    # The query as the URL has it (botocore takes the pairs as encoded), minus the signature.
    kept = [pair for pair in parts.query.split("&") if not pair.startswith("X-Amz-Signature=")]
    unsigned = urlunsplit(parts._replace(query="&".join(kept)))
    names = signed_headers(url)
    lowered = {name.lower(): value for name, value in headers.items()}
    sent = {name: lowered[name] for name in names if name in lowered}
    sent.setdefault("host", parts.netloc)
    request = AWSRequest(method=method, url=unsigned, headers=sent)
    request.context["timestamp"] = fields["X-Amz-Date"]
    signer = S3SigV4QueryAuth(
        Credentials(access_key, secret_key), service, region, expires=int(fields["X-Amz-Expires"])
    )
    # The URL already carries every X-Amz-* parameter but the signature: sign it as it is, at
    # its own date (add_auth would take the current time and add the parameters again).
    canonical = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical)
    assert date == fields["X-Amz-Date"][:8]
    return signer.signature(string_to_sign, request)


def accepts(
    url: str, method: str, headers: Mapping[str, str], access_key: str, secret_key: str
) -> bool:
    """Whether S3 would take this request's signature (expiry aside)."""
    signature = expected_signature(url, method, headers, access_key, secret_key)
    return signature == query(url)["X-Amz-Signature"]
