"""The command-line uploader when the network, the API or S3 fail part of the time: a real HTTP
proxy (tests/support/httpproxy.py) between the CLI and the local stack fails the requests a
test names, and records every request that went by. The CLI runs as a subprocess, as a user
runs it; the part uploads run in-process, through urllib3's ProxyManager, because presigned S3
URLs name moto's own address."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from offload_cli.api import Api, new_pool
from offload_cli.auth import CognitoSession
from offload_cli.config import config_from_site
from offload_cli.follow import follow
from offload_cli.state import FileIdentity, StateStore
from offload_cli.uploader import Uploader
from offload_local import aws_resources
from tests.support import sigv4
from tests.support.httpproxy import DROP, HttpProxy, Seen
from tests.support.local_stack import ApiClient
from tests.test_cli import cli_env, inspect_job, only_upload, random_file, run_cli

MiB = 1 << 20
UNAVAILABLE = b'{"message": "service temporarily unavailable, try again"}'
JSON = {"Content-Type": "application/json"}
LOCAL_STACK_KEYS = ("testing", "testing")  # the local stack's moto credentials sign its URLs


@pytest.fixture
def api_proxy(local_stack) -> Iterator[HttpProxy]:
    """A proxy in front of the stack's gateway, as API Gateway is in front of the API."""
    with HttpProxy(local_stack.info.web_url) as proxy:
        yield proxy


@pytest.fixture
def env(local_stack, api_proxy, tmp_path) -> dict[str, str]:
    """The CLI's environment: the stack's site (sign-in) and the API through the proxy."""
    return cli_env(local_stack.info, tmp_path / "state", OFFLOAD_API_URL=api_proxy.url + "/api")


def _statuses(proxy: HttpProxy, method: str, target: str) -> list[int]:
    return [seen.status for seen in proxy.requests(method, target)]


# --- API answers ----------------------------------------------------------------------------


def test_429_5xx_and_no_answer_from_the_api_are_retried(env, api_proxy):
    api_proxy.fail("GET", r"^/api/jobs\?", [429, DROP, 502], headers=JSON, body=UNAVAILABLE)
    done = run_cli(env, "jobs", "--json")
    assert done.returncode == 0, done.stderr
    assert "jobs" in json.loads(done.stdout)
    assert _statuses(api_proxy, "GET", r"^/api/jobs\?") == [429, DROP, 502, 200]


def test_an_api_that_keeps_failing_exits_5_after_four_tries(env, api_proxy):
    api_proxy.fail("GET", r"^/api/jobs\?", [503] * 10, headers=JSON, body=UNAVAILABLE)
    done = run_cli(env, "jobs")
    assert done.returncode == 5, done.stderr
    assert done.stderr.strip() == (
        "offload: error: the API failed (GET /jobs?limit=20): HTTP 503: "
        "service temporarily unavailable, try again"
    )
    assert _statuses(api_proxy, "GET", r"^/api/jobs\?") == [503] * 4
    assert done.stdout == ""


def test_a_refusal_is_not_retried(env, api_proxy):
    done = run_cli(env, "status", "NoSuchUpload12345678")
    assert done.returncode == 4, done.stderr
    assert _statuses(api_proxy, "GET", r"^/api/uploads/") == [404]


def test_an_upload_goes_through_when_api_answers_are_lost(env, api_proxy, tmp_path):
    """The create fails before reaching the API; the complete reaches it and its answer is
    lost (a gateway timeout after the work was done): the retried complete finds the upload
    completed, and the CLI goes on to the jobs."""
    path = tmp_path / "clip.bin"
    sha256 = random_file(path, 9 * MiB)  # multipart from 8 MiB: two parts
    api_proxy.fail("POST", r"^/api/uploads$", [503], headers=JSON, body=UNAVAILABLE)
    api_proxy.fail("POST", r"^/api/uploads/[^/]+/complete$", [504], after_forwarding=True)
    done = run_cli(env, "upload", "--json", str(path), timeout=120)
    assert done.returncode == 0, done.stderr
    upload = only_upload(done)
    assert (upload["type"], upload["state"]) == ("multipart", "processed")
    assert inspect_job(upload)["result"]["sha256"] == sha256
    assert _statuses(api_proxy, "POST", r"^/api/uploads$") == [503, 201]
    assert _statuses(api_proxy, "POST", r"/complete$") == [504, 409]


# --- retry and abort ------------------------------------------------------------------------


def _failed_thumbnail(env: dict[str, str], tmp_path: Path) -> tuple[str, dict, dict]:
    """An upload whose thumbnail job fails (not an image); (upload id, inspect, thumbnail)."""
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    done = run_cli(env, "upload", "--json", str(path), timeout=120)
    assert done.returncode == 1, done.stderr  # a job failed
    upload = only_upload(done)
    jobs = {job["name"]: job for job in upload["jobs"]}
    assert jobs["thumbnail"]["state"] == "failed", jobs
    return upload["uploadId"], jobs["inspect"], jobs["thumbnail"]


def test_retry_puts_a_failed_job_back_and_refuses_others(env, api_proxy, tmp_path):
    upload_id, inspect, thumbnail = _failed_thumbnail(env, tmp_path)

    retried = run_cli(env, "retry", "--json", thumbnail["id"])
    assert retried.returncode == 0, retried.stderr
    job = json.loads(retried.stdout)
    assert job["id"] == thumbnail["id"]
    assert job["state"] in ("queued", "active", "failed")  # a worker may already be on it
    again = run_cli(env, "status", "--json", "--wait", upload_id, timeout=120)
    assert again.returncode == 1, again.stderr  # still not an image
    ran_again = {j["name"]: j for j in json.loads(again.stdout)["jobs"]}["thumbnail"]
    assert ran_again["state"] == "failed"
    assert ran_again["attempts"] == thumbnail["attempts"] + 1

    completed = run_cli(env, "retry", inspect["id"])
    assert completed.returncode == 4, completed.stderr
    assert "HTTP 409" in completed.stderr and "only a failed job can be retried" in completed.stderr
    unknown = run_cli(env, "retry", "inspect-" + "0" * 40)
    assert unknown.returncode == 4, unknown.stderr
    assert "HTTP 404" in unknown.stderr
    # refusals are answers, not asked again
    assert _statuses(api_proxy, "POST", r"/retry$") == [200, 409]


def test_a_retry_whose_answer_was_lost_is_not_reported_as_refused(env, api_proxy, tmp_path):
    """The retry reached the API and the job went back to the queue, but the answer was lost.
    Asked again, the API refused it (409: the job was no longer failed) or, when the job had
    already failed again, ran it once more: the CLI reads the job instead, sees the retry went
    through, and says so."""
    upload_id, _, thumbnail = _failed_thumbnail(env, tmp_path)
    api_proxy.fail("POST", r"/retry$", [504], after_forwarding=True)
    retried = run_cli(env, "retry", "--json", thumbnail["id"])
    assert retried.returncode == 0, retried.stderr
    assert _statuses(api_proxy, "POST", r"/retry$") == [504]
    job = json.loads(retried.stdout)
    assert job["id"] == thumbnail["id"]
    assert (job["state"], job["attempts"]) != ("failed", thumbnail["attempts"])
    again = run_cli(env, "status", "--json", "--wait", upload_id, timeout=120)
    ran_again = {j["name"]: j for j in json.loads(again.stdout)["jobs"]}["thumbnail"]
    assert ran_again["attempts"] == thumbnail["attempts"] + 1  # retried once, not twice


def test_abort_ends_an_upload_the_api_could_not_complete(local_stack, env, api_proxy, tmp_path):
    """The parts are in S3 but ``complete`` keeps failing: the CLI exits 5 and keeps its resume
    state; ``abort`` ends the upload (its DELETE answer lost once: retried, which is harmless)
    and forgets the state. A second abort is a no-op; a completed upload cannot be aborted."""
    path = tmp_path / "big.bin"
    random_file(path, 9 * MiB)
    api_proxy.fail("POST", r"/complete$", [503] * 4, headers=JSON, body=UNAVAILABLE)
    stuck = run_cli(env, "upload", "--json", str(path), timeout=120)
    assert stuck.returncode == 5, stuck.stderr
    assert "HTTP 503" in stuck.stderr
    state = StateStore(tmp_path / "state").load(FileIdentity.of(path), api_proxy.url + "/api")
    assert state is not None
    client = ApiClient(local_stack.info)
    assert len(client.call("GET", f"/uploads/{state.upload_id}").body["uploadedParts"]) == 2

    api_proxy.fail("DELETE", r"^/api/uploads/", [504], after_forwarding=True)
    aborted = run_cli(env, "abort", state.upload_id)
    assert aborted.returncode == 0, aborted.stderr
    assert aborted.stdout.strip() == f"upload {state.upload_id} aborted"
    assert _statuses(api_proxy, "DELETE", r"^/api/uploads/") == [504, 200]
    assert client.call("GET", f"/uploads/{state.upload_id}").body["state"] == "aborted"
    s3 = aws_resources.client("s3", local_stack.info.moto_endpoint)
    open_uploads = s3.list_multipart_uploads(Bucket=local_stack.info.bucket, Prefix=state.key)
    assert open_uploads.get("Uploads", []) == []  # S3 dropped the parts
    assert not list((tmp_path / "state").glob("*.json")), "resume state left after abort"
    assert run_cli(env, "abort", state.upload_id).returncode == 0  # idempotent

    small = tmp_path / "small.txt"
    small.write_bytes(b"done\n")
    done = only_upload(run_cli(env, "upload", "--json", "--no-wait", str(small)))
    refused = run_cli(env, "abort", done["uploadId"])
    assert refused.returncode == 4, refused.stderr
    assert "already completed" in refused.stderr


# --- part uploads ---------------------------------------------------------------------------

S3_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def _part(target: str) -> int:
    match = re.search(r"[?&]partNumber=(\d+)", target)
    assert match, target
    return int(match[1])


def test_each_part_goes_out_with_the_length_its_url_signed(local_stack, tmp_path):
    """Each part URL signs its part's exact size (``content-length``), so S3 refuses a part
    sent with another length, or chunked (no length). moto does not check signatures: each PUT
    the CLI sent is checked here as S3 checks it (tests/support/sigv4.py), with the headers the
    proxy saw. Five parts, the last one short (1 MiB + 12,345 bytes)."""
    info = local_stack.info
    config = config_from_site(info.web_url, info.web_config())
    path = tmp_path / "signed.bin"
    size = 4 * 5 * MiB + MiB + 12_345
    random_file(path, size)
    with HttpProxy() as proxy:
        pool = urllib3.ProxyManager(proxy.url, retries=False)
        api = Api(config.api_url, CognitoSession(config, info.username, info.password), pool)
        uploader = Uploader(api, pool, store=StateStore(tmp_path / "state"), parallel=3)
        outcome = uploader.upload(path)
        puts = [s for s in proxy.seen if s.method == "PUT"]

    assert outcome.upload["partCount"] == 5 and outcome.sent_bytes == size
    assert sorted(_part(s.target) for s in puts) == [1, 2, 3, 4, 5]
    assert {s.status for s in puts} == {200}
    for seen in puts:
        length = 5 * MiB if _part(seen.target) < 5 else MiB + 12_345
        headers = {name.lower(): value for name, value in seen.headers.items()}
        assert headers["content-length"] == str(length) and "transfer-encoding" not in headers
        url = f"http://{headers['host']}{seen.target}"
        assert sigv4.signed_headers(url) == ["content-length", "host"]
        assert sigv4.accepts(url, "PUT", headers, *LOCAL_STACK_KEYS)
        other = {**headers, "content-length": str(length + 1)}
        assert not sigv4.accepts(url, "PUT", other, *LOCAL_STACK_KEYS)
    assert ApiClient(info).call("GET", f"/uploads/{outcome.upload_id}").body["size"] == size


def _put_at(seen: list[Seen], number: int, status: int) -> int:
    """Where the PUT of part ``number`` that got ``status`` is in the proxy's record."""
    return next(
        index
        for index, s in enumerate(seen)
        if s.method == "PUT" and (s.status, _part(s.target)) == (status, number)
    )


def test_a_failed_part_is_sent_again_with_a_fresh_url(local_stack, tmp_path):
    """S3 answers 503 SlowDown to one part and nothing at all to another: each is sent again
    with a URL fetched anew from the API (the failed one is dropped), and the object S3
    assembles is the file, byte for byte."""
    info = local_stack.info
    config = config_from_site(info.web_url, info.web_config())
    path = tmp_path / "parts.bin"
    sha256 = random_file(path, 3 * 5 * MiB)  # three parts of 5 MiB
    with HttpProxy() as proxy:
        part = r"[?&]partNumber={}(&|$)"
        proxy.fail("PUT", part.format(2), [503], body=S3_SLOW_DOWN)
        proxy.fail("PUT", part.format(3), [DROP])
        pool = urllib3.ProxyManager(proxy.url, retries=False)
        api = Api(config.api_url, CognitoSession(config, info.username, info.password), pool)
        uploader = Uploader(api, pool, store=StateStore(tmp_path / "state"), parallel=3, tries=3)
        outcome = uploader.upload(path)
        followed, timed_out = follow(
            Api(config.api_url, api.auth, new_pool()), [outcome.upload_id], 120
        )
        seen = list(proxy.seen)

    assert not timed_out
    jobs = followed[outcome.upload_id].jobs
    assert [job["result"]["sha256"] for job in jobs if job["name"] == "inspect"] == [sha256]
    puts = [(s.status, _part(s.target)) for s in seen if s.method == "PUT"]
    assert sorted(puts) == [(DROP, 3), (200, 1), (200, 2), (200, 3), (503, 2)]
    # each failed part was sent again only after the API handed out a new URL for it
    for number, failure in ((2, 503), (3, DROP)):
        tries = seen[_put_at(seen, number, failure) : _put_at(seen, number, 200)]
        asked = [
            json.loads(s.body)["partNumbers"]
            for s in tries
            if s.method == "POST" and s.target.endswith("/parts")
        ]
        assert any(number in numbers for numbers in asked), (number, asked)
