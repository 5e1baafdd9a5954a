"""Where the API and the sign-in service are.

Either ``--site URL`` (``OFFLOAD_SITE``): the web page's own ``<site>/config.json``
(``{"apiBase", "region", "clientId", "cognitoEndpoint"}``, ``apiBase`` relative to the site),
or explicit ``--api URL --client-id ID --region R [--cognito-endpoint URL]``
(``OFFLOAD_API_URL``, ``OFFLOAD_CLIENT_ID``, ``OFFLOAD_REGION``, ``OFFLOAD_COGNITO_ENDPOINT``).
Explicit values win over the site's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import urllib3

from offload_cli.errors import UnavailableError, UsageError


@dataclass(frozen=True)
class ClientConfig:
    api_url: str  # no trailing slash
    client_id: str | None = None
    region: str | None = None
    cognito_endpoint: str | None = None  # None: AWS's own endpoint for the region


def _http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{what} must be an http(s) URL, not {value!r}")
    return value


def config_from_site(site: str, site_config: Mapping[str, Any]) -> ClientConfig:
    """The site's ``config.json`` as a :class:`ClientConfig` (``apiBase`` resolved against the
    site, as the page's browser resolves it)."""
    base = site if site.endswith("/") else site + "/"
    api_base = site_config.get("apiBase")
    if not isinstance(api_base, str) or not api_base:
        raise UsageError(f"{base}config.json has no apiBase")
    return ClientConfig(
        api_url=urljoin(base, api_base).rstrip("/"),
        client_id=site_config.get("clientId") or None,
        region=site_config.get("region") or None,
        cognito_endpoint=site_config.get("cognitoEndpoint") or None,
    )


def fetch_site_config(
    site: str, pool: urllib3.PoolManager, timeout_s: float = 15.0
) -> dict[str, Any]:
    site = _http_url(site, "--site")
    url = (site if site.endswith("/") else site + "/") + "config.json"
    try:
        answer = pool.request(
            "GET", url, timeout=timeout_s, retries=urllib3.Retry(3, backoff_factor=0.5)
        )
    except urllib3.exceptions.HTTPError as exc:
        raise UnavailableError(f"cannot reach {url}: {exc}") from exc
    if answer.status != 200:
        raise UsageError(f"{url} answered HTTP {answer.status}: is --site the web page's URL?")
    try:
        parsed = json.loads(answer.data)
    except ValueError as exc:
        raise UsageError(f"{url} is not JSON: is --site the web page's URL?") from exc
    if not isinstance(parsed, dict):
        raise UsageError(f"{url} is not a JSON object")
    return parsed


def resolve(
    *,
    site: str | None,
    api: str | None,
    client_id: str | None,
    region: str | None,
    cognito_endpoint: str | None,
    pool: urllib3.PoolManager,
) -> ClientConfig:
    """The configuration from ``--site`` and/or the explicit values (explicit ones win)."""
    base = ClientConfig(api_url="")
    if site:
        base = config_from_site(site, fetch_site_config(site, pool))
    elif not api:
        raise UsageError(
            "where is the API? give --site URL (the web page) or --api URL "
            "(or set OFFLOAD_SITE / OFFLOAD_API_URL)"
        )
    api_url = _http_url(api, "--api").rstrip("/") if api else base.api_url
    if cognito_endpoint:
        _http_url(cognito_endpoint, "--cognito-endpoint")
    return ClientConfig(
        api_url=api_url,
        client_id=client_id or base.client_id,
        region=region or base.region,
        cognito_endpoint=cognito_endpoint or base.cognito_endpoint,
    )
