"""The web page in a real headless Chromium (Debian's, driven by Playwright): sign in, upload a
file of more than 20 MB as multipart straight to S3, and watch its job reach "completed".
A failing test leaves a screenshot and the page's console in test-artifacts/."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload_local import aws_resources
from tests.support.local_stack import ApiClient

MiB = 1 << 20
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = os.environ.get("OFFLOAD_CHROMIUM", "/usr/bin/chromium")
# As root, and with no route to the internet: no sandbox, and no background fetches.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def page(request) -> Iterator:
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no browser at {CHROMIUM}: run scripts/setup.sh --browser")
    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            yield page
            failed = getattr(request.node, "rep_call", None)
            if failed is not None and failed.failed:
                ARTIFACTS.mkdir(exist_ok=True)
                shot = ARTIFACTS / f"{request.node.name}.png"
                page.screenshot(path=str(shot), full_page=True)
                (ARTIFACTS / f"{request.node.name}.console.txt").write_text("\n".join(console))
                print(f"screenshot: {shot}")
        finally:
            browser.close()


def sign_in(page, info) -> None:
    page.goto(info.web_url)
    page.fill("#username", info.username)
    page.fill("#password", info.password)
    page.click("#signin-button")
    page.wait_for_selector("#file-input", state="visible", timeout=15_000)


def test_sign_in_upload_multipart_and_see_the_job_complete(local_stack, page, tmp_path):
    info = local_stack.info
    data = os.urandom(21 * MiB)  # > 8 MiB: multipart in the local stack, 5 parts of 5 MiB
    path = tmp_path / "browser upload.bin"
    path.write_bytes(data)

    sign_in(page, info)
    page.set_input_files("#file-input", str(path))
    row = page.locator("[data-testid=upload-row]").filter(has_text="browser upload.bin")
    row.and_(page.locator("[data-state=done]")).wait_for(timeout=90_000)
    upload_id = row.get_attribute("data-upload-id")
    assert upload_id

    upload = ApiClient(info).call("GET", f"/uploads/{upload_id}").body
    assert upload["type"] == "multipart" and upload["partCount"] == 5

    job = page.locator(
        f"[data-testid=job-row][data-job-name=inspect][data-upload-id='{upload_id}']"
    )
    job.and_(page.locator("[data-state=completed]")).wait_for(timeout=90_000)
    assert "manifest.json" in job.inner_text()

    jobs = ApiClient(info).call("GET", "/jobs?limit=100").body["jobs"]
    inspect = next(j for j in jobs if j["uploadId"] == upload_id and j["name"] == "inspect")
    assert inspect["result"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_first_sign_in_of_an_invited_user_sets_a_new_password(local_stack, page):
    """docs/deploy.md's first user: invited with a temporary password, which Cognito makes
    them replace at the first sign-in (NEW_PASSWORD_REQUIRED)."""
    info = local_stack.info
    cognito = aws_resources.client("cognito-idp", info.moto_endpoint)
    cognito.admin_create_user(
        UserPoolId=info.user_pool_id,
        Username="invited@example.com",
        TemporaryPassword="Temp0rary!pass",
        UserAttributes=[{"Name": "email", "Value": "invited@example.com"}],
        MessageAction="SUPPRESS",
    )
    page.goto(info.web_url)
    page.fill("#username", "invited@example.com")
    page.fill("#password", "Temp0rary!pass")
    page.click("#signin-button")
    page.wait_for_selector("#new-password", state="visible", timeout=15_000)
    page.fill("#new-password", "Brand-new-passw0rd")
    page.fill("#new-password-again", "Brand-new-passw0rd")
    page.click("#new-password-button")
    page.wait_for_selector("#file-input", state="visible", timeout=15_000)
    assert page.inner_text("#user-name") == "invited@example.com"
    client = ApiClient(info, "invited@example.com", "Brand-new-passw0rd")
    assert client.call("GET", "/jobs").status == 200
