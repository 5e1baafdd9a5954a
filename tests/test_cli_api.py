"""The CLI's API client (offload_cli/api.py) facing answers that are not the API's."""

from __future__ import annotations

import pytest

from offload_cli.api import Api, new_pool
from offload_cli.auth import StaticToken
from offload_cli.errors import UnavailableError
from tests.support.httpproxy import HttpProxy


def test_a_2xx_answer_without_a_json_object_is_an_outage_not_a_crash() -> None:
    """A captive portal or a misrouted proxy answering 200 with a page: every API route answers
    a JSON object, so the CLI reports the address as unavailable (exit 5) instead of failing
    later on a missing field."""
    with HttpProxy("http://127.0.0.1:9") as portal:  # upstream never reached: the rule answers
        portal.fail(
            "GET",
            r"^/api/jobs/",
            [200],
            headers={"Content-Type": "text/html"},
            body=b"<html>Sign in to the Wi-Fi</html>",
        )
        api = Api(portal.url + "/api", StaticToken("token"), new_pool(), tries=1)
        with pytest.raises(UnavailableError, match="is not a JSON object"):
            api.get_job("job-1")
