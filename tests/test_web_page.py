"""The web page in a real headless Chromium (Debian's, driven by Playwright): sign in, upload a
file of more than 20 MiB as multipart straight to S3, and watch its job reach "completed"; the
page on a phone (nothing wider than the screen, file names never broken) and on a desktop;
sizes written as the CLI writes them. A failing test leaves a screenshot and the page's console
in test-artifacts/."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload_cli.progress import human_bytes
from offload_local import aws_resources
from tests.support import sigv4
from tests.support.local_stack import ApiClient

MiB = 1 << 20
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
LOCAL_STACK_KEYS = ("testing", "testing")  # the local stack's moto credentials sign its URLs
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
    # > 8 MiB: multipart in the local stack, 4 parts of 5 MiB and a short one of 1 MiB + 12,345
    data = os.urandom(21 * MiB + 12_345)
    path = tmp_path / "browser upload.bin"
    path.write_bytes(data)
    puts: list = []
    page.on("request", lambda request: request.method == "PUT" and puts.append(request))

    sign_in(page, info)
    assert page.inner_text("body").count("Signed in as") == 1  # the header, not the status too
    page.set_input_files("#file-input", str(path))
    row = page.locator("[data-testid=upload-row]").filter(has_text="browser upload.bin")
    row.and_(page.locator("[data-state=done]")).wait_for(timeout=90_000)
    upload_id = row.get_attribute("data-upload-id")
    assert upload_id

    upload = ApiClient(info).call("GET", f"/uploads/{upload_id}").body
    assert upload["type"] == "multipart" and upload["partCount"] == 5
    # Each part URL signs its part's size: moto does not check signatures, so each PUT the
    # browser sent is checked as S3 checks it (tests/support/sigv4.py), with its headers.
    sizes = {n: 5 * MiB for n in range(1, 5)} | {5: MiB + 12_345}
    assert sorted(int(sigv4.query(r.url)["partNumber"]) for r in puts) == sorted(sizes)
    for request in puts:
        number = int(sigv4.query(request.url)["partNumber"])
        headers = request.all_headers()
        assert headers["content-length"] == str(sizes[number])
        assert sigv4.signed_headers(request.url) == ["content-length", "host"]
        assert sigv4.accepts(request.url, "PUT", headers, *LOCAL_STACK_KEYS)
        other = {**headers, "content-length": str(sizes[number] - 1)}
        assert not sigv4.accepts(request.url, "PUT", other, *LOCAL_STACK_KEYS)

    job = page.locator(
        f"[data-testid=job-row][data-job-name=inspect][data-upload-id='{upload_id}']"
    )
    job.and_(page.locator("[data-state=completed]")).wait_for(timeout=90_000)
    assert "manifest.json" in job.inner_text()
    card = page.locator(f"[data-testid=upload-card][data-upload-id='{upload_id}']")
    assert card.locator("[data-testid=job-row]").count() >= 1  # its steps are in its card
    assert "browser upload.bin" in card.locator(".upload-name").inner_text()

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


# Every element of the page whose box reaches past the left or right edge of the viewport (a
# box inside a scrolling wrapper counts: the user would have to scroll it sideways).
OVERFLOWING = """() => {
  const width = document.documentElement.clientWidth;
  return [...document.body.querySelectorAll("*")]
    .filter((e) => {
      const box = e.getBoundingClientRect();
      return box.width > 0 && (box.left < -0.5 || box.right > width + 0.5);
    })
    .map((e) => `${e.tagName.toLowerCase()}.${e.className} ${e.textContent.slice(0, 40)}`);
}"""

# How each file name of the transfers, the unfinished uploads and the upload cards (their
# names, result and step links) is laid out.
FILE_NAMES = """() => [...document.querySelectorAll(
  "[data-testid=upload-row] .filename, [data-testid=resume-row] .filename, " +
  "[data-testid=upload-card] .filename")].map((e) => {
  const style = getComputedStyle(e);
  return {
    text: e.textContent,
    title: e.title,
    whiteSpace: style.whiteSpace,
    textOverflow: style.textOverflow,
    overflowX: style.overflowX,
    lines: e.getBoundingClientRect().height / parseFloat(style.lineHeight),
    cut: e.scrollWidth > e.clientWidth,
  };
})"""


def upload_through_the_page(page, paths: list[Path]) -> dict[str, str]:
    """Upload ``paths`` with the file picker and wait for their jobs to complete; returns
    file name -> upload id."""
    page.set_input_files("#file-input", [str(path) for path in paths])
    upload_ids = {}
    for path in paths:
        row = page.locator("[data-testid=upload-row]").filter(has_text=path.name)
        row.and_(page.locator("[data-state=done]")).wait_for(timeout=90_000)
        upload_ids[path.name] = row.get_attribute("data-upload-id")
    for upload_id in upload_ids.values():
        job = page.locator(f"[data-testid=job-row][data-upload-id='{upload_id}']")
        job.and_(page.locator("[data-state=completed]")).first.wait_for(timeout=90_000)
    return upload_ids


def is_part_upload(url: str) -> bool:
    return "partNumber=" in url


def leave_unfinished(page, path: Path) -> None:
    """Start a multipart upload of ``path`` whose parts S3 never gets, then reload: the page
    lists it as an unfinished upload to resume."""
    page.route(is_part_upload, lambda route: route.abort())
    page.set_input_files("#file-input", str(path))
    row = page.locator("[data-testid=upload-row]").filter(has_text=path.name)
    row.and_(page.locator("[data-upload-id]")).wait_for(timeout=30_000)
    page.reload()
    page.unroute(is_part_upload)
    page.locator("[data-testid=resume-row]").filter(has_text=path.name).wait_for(timeout=30_000)


def assert_fits_and_names_are_whole(page, names: list[str]) -> list[dict]:
    """Nothing wider than the viewport; every file name on one line (cut with an ellipsis,
    the whole name in its text and title). Returns the names' layout."""
    scroll_width, client_width = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll_width <= client_width, f"the page scrolls sideways: {scroll_width}"
    assert page.evaluate(OVERFLOWING) == []
    layout = page.evaluate(FILE_NAMES)
    shown = [item["text"] for item in layout]
    for name in names:
        assert shown.count(name) >= 2, f"{name} is not listed twice: {shown}"
    for item in layout:
        assert item["title"] == item["text"], item
        assert item["whiteSpace"] == "nowrap", item
        assert item["textOverflow"] == "ellipsis" and item["overflowX"] == "hidden", item
        assert item["lines"] < 1.5, item
    return layout


def test_phone_and_desktop_layouts_fit_and_keep_file_names_whole(local_stack, page, tmp_path):
    """At 390 px the job list is a column of cards, at 1280 px a table; neither scrolls
    sideways, and a file name is never broken mid-word (cut with an ellipsis instead), in the
    uploads (as a row and as an unfinished upload: its name twice) and in the jobs."""
    names = [
        "DSC_0001_very_long_camera_file_name_without_any_space_1234567890_final.bin",
        "Quarterly report of the northern region with every appendix and annex.csv",
        "a.txt",
    ]
    paths = []
    for i, name in enumerate(names):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(os.urandom(1000 + i))
    unfinished = tmp_path / "Recording_of_the_keynote_on_the_second_day_uncut_and_in_4K.mp4"
    with unfinished.open("wb") as file:
        file.truncate(9 * MiB)  # > 8 MiB: multipart, so it can be resumed
    page.set_viewport_size(PHONE)
    sign_in(page, local_stack.info)
    leave_unfinished(page, unfinished)
    upload_through_the_page(page, paths)
    names.append(unfinished.name)

    layout = assert_fits_and_names_are_whole(page, names)
    cut = {item["text"] for item in layout if item["cut"]}
    long_names = {name for name in names if len(name) > 40}
    assert long_names <= cut  # really too long for a phone: the ellipsis is what saved it

    page.set_viewport_size(DESKTOP)
    assert_fits_and_names_are_whole(page, names)


def test_a_card_per_upload_with_its_final_state_steps_and_result_link(local_stack, page):
    """Pipelines written as the flows write them (tests/support/pipeline_rows.py) into the
    stack's PostgreSQL, and result.json into its S3: the processed upload's card says so and
    links its result.json (the link fetches it), the failed one names the step and the reason
    and offers that step's Retry, a superseded step is shown as superseded; each upload's
    steps are in its own card."""
    from tests.support import pipeline_rows as rows

    info = local_stack.info
    db = rows.Db(info.database_url, info.schema)
    client = ApiClient(info)
    made = {}
    for name in ("processed photo.jpg", "failed photo.jpg"):
        body = {"filename": name, "size": 2000, "contentType": "image/jpeg"}
        made[name] = client.call("POST", "/uploads", body).body["id"]
    done, failed = made["processed photo.jpg"], made["failed photo.jpg"]
    key = rows.processed_pipeline(db, done, db.sql(
        "SELECT owner FROM uploads WHERE id = %s", (done,))[0]["owner"], ("inspect", "thumbnail"),
    )  # fmt: skip
    aws_resources.client("s3", info.moto_endpoint).put_object(
        Bucket=info.bucket, Key=key, Body=b'{"processed": true}'
    )
    rows.name_object(db, failed)
    parent = rows.add_job(db, f"finalize-{failed}", "finalize", failed, state="failed")
    rows.add_job(db, f"inspect-{failed}", "inspect", failed, state="completed", parent=parent,
                 attempt=1, progress=100)  # fmt: skip
    rows.add_job(db, f"thumbnail-{failed}", "thumbnail", failed, state="failed", parent=parent,
                 attempt=3, max_attempts=3, progress=30, error="not an image")  # fmt: skip
    rows.add_job(db, f"inspect-old-{failed}", "inspect", failed, state="completed",
                 revision="f" * 32)  # fmt: skip
    rows.set_state(db, failed, "failed", failed_step="thumbnail", error="thumbnail: not an image")

    sign_in(page, info)
    card = page.locator(f"[data-testid=upload-card][data-upload-id='{done}']")
    card.and_(page.locator("[data-state=processed]")).wait_for(timeout=30_000)
    assert card.locator("[data-role=final-state]").inner_text() == "processed"
    link = card.locator("[data-testid=result-link]")
    assert link.inner_text() == "result.json"
    with urllib.request.urlopen(link.get_attribute("href"), timeout=10) as answer:
        assert answer.read() == b'{"processed": true}'
    steps = card.locator("[data-testid=job-row]")
    names = [steps.nth(i).get_attribute("data-job-name") for i in range(steps.count())]
    assert names == ["inspect", "thumbnail", "finalize"]

    card = page.locator(f"[data-testid=upload-card][data-upload-id='{failed}']")
    assert card.get_attribute("data-state") == "failed"
    assert card.locator("[data-role=upload-error]").inner_text() == (
        "Step thumbnail failed: thumbnail: not an image"
    )
    thumbnail = card.locator("[data-testid=job-row][data-job-name=thumbnail]")
    assert "not an image" in thumbnail.inner_text() and "3 / 3" in thumbnail.inner_text()
    assert thumbnail.locator("[data-testid=retry-job]").count() == 1
    old = card.locator(f"[data-job-id='inspect-old-{failed}']")
    assert old.get_attribute("data-superseded") == "true"
    assert old.locator("[data-role=superseded]").inner_text() == "superseded"
    assert card.locator("[data-testid=result-link]").count() == 0
    assert page.locator(f"[data-testid=job-row][data-upload-id='{failed}']").count() == 4

    # An upload reaching its final state while the page is open: the status line says so.
    late = client.call(
        "POST",
        "/uploads",
        {"filename": "late photo.jpg", "size": 2000, "contentType": "image/jpeg"},
    ).body["id"]
    rows.name_object(db, late)
    rows.set_state(db, late, "queued")
    parent = rows.add_job(db, f"finalize-{late}", "finalize", late)
    rows.add_job(db, f"inspect-{late}", "inspect", late, state="active", parent=parent, progress=50)
    card = page.locator(f"[data-testid=upload-card][data-upload-id='{late}']")
    card.and_(page.locator("[data-finished=false]")).wait_for(timeout=30_000)
    assert card.locator("[data-role=final-state]").inner_text() == "processing"
    db.sql("UPDATE jobs SET state = 'completed' WHERE upload_id = %s", (late,))
    rows.set_state(db, late, "processed", result_key=f"processed/x/{late}/result.json")
    page.wait_for_function(
        "() => document.getElementById('status').textContent === 'late photo.jpg processed.'",
        timeout=30_000,
    )


def test_sizes_are_written_as_the_cli_writes_them(local_stack, page):
    """Binary units with binary names (KiB, MiB, ...) and the CLI's rounding, ties included."""
    sizes = [0, 1, 1023, 1024, 1280, 1536, 3000, 10 * 1024 - 1, MiB - 1, MiB, 21 * MiB]
    sizes += [MiB + MiB // 4, 7 * MiB // 4, 5 * 1024 * MiB + 512 * MiB, 3000 * 1024**4, 1 << 50]
    page.goto(local_stack.info.web_url)
    shown = page.evaluate(
        """async (sizes) => {
          const { formatBytes } = await import(new URL("dom.js", location.href));
          return sizes.map(formatBytes);
        }""",
        sizes,
    )
    assert shown == [human_bytes(size) for size in sizes]


def test_an_export_is_requested_and_followed_to_its_csv_link(local_stack, page):
    """The Exports section asks for a job by name (POST /jobs, `export`) and follows it with
    the job routes (GET /jobs?name=export) until its CSV link shows."""
    sign_in(page, local_stack.info)
    page.fill("#export-from", "2026-01-01")
    page.fill("#export-to", "2026-12-31")
    page.click("#export-button")
    row = page.locator("#exports [data-testid=job-row][data-job-name=export]").first
    row.and_(page.locator("[data-state=completed]")).wait_for(timeout=60_000)
    link = row.locator("a[data-link]")
    assert link.count() == 1 and link.inner_text().endswith(".csv")
    assert link.get_attribute("href").startswith("http")
    assert row.get_attribute("data-upload-id") is None
    assert page.locator("#exports-empty").is_hidden()
