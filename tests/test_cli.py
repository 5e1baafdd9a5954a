"""The command-line uploader (python -m offload_cli) against the local stack: real Cognito
(moto), the API behind the gateway, presigned uploads to S3, the worker, run as a subprocess the
way a user or a script runs it; plus unit tests of its pure parts."""

from __future__ import annotations

import ast
import hashlib
import importlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from offload_cli import transfer
from offload_cli.config import config_from_site
from offload_cli.progress import ProgressBar
from offload_cli.state import FileIdentity, StateStore, UploadState

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


# --- running the CLI ---------------------------------------------------------------------------


def cli_env(info, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    env.update(
        OFFLOAD_SITE=info.web_url,
        OFFLOAD_USERNAME=info.username,
        OFFLOAD_PASSWORD=info.password,
        OFFLOAD_STATE_DIR=str(state_dir),
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload_cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def only_upload(completed: subprocess.CompletedProcess[str]) -> dict:
    doc = json.loads(completed.stdout)
    assert len(doc["uploads"]) == 1, doc
    return doc["uploads"][0]


def inspect_job(upload: dict) -> dict:
    return next(job for job in upload["jobs"] if job["name"] == "inspect")


@pytest.fixture
def env(local_stack, tmp_path):
    return cli_env(local_stack.info, tmp_path / "state")


# --- end to end --------------------------------------------------------------------------------


def test_multipart_upload_waits_for_the_jobs_and_reports_the_sha256(env, tmp_path):
    path = tmp_path / "clip.mp4"
    sha256 = random_file(path, 21 * MiB + 12345)
    done = run_cli(env, "upload", "--json", "--parallel", "4", str(path))
    assert done.returncode == 0, done.stderr
    upload = only_upload(done)
    assert upload["type"] == "multipart" and upload["partCount"] == 5
    assert upload["contentType"] == "video/mp4"  # guessed from the name
    assert (upload["resumedParts"], upload["sentParts"]) == (0, 5)
    assert upload["state"] == "processed"  # its pipeline ended
    job = inspect_job(upload)
    assert job["state"] == "completed", job
    assert job["result"]["sha256"] == sha256
    assert job["result"]["size"] == path.stat().st_size
    assert [link["name"] for link in job["links"]] == ["manifest.json"]
    assert not list((tmp_path / "state").glob("*.json")), "state file left after completion"


def test_upload_waits_for_the_final_state_and_prints_result_json(local_stack, env, tmp_path):
    """``upload`` waits for the upload's final state (its pipeline's ``finalize`` has run), not
    for its jobs, then downloads result.json through the link the API hands out and prints it:
    the same document the worker wrote to S3."""
    from offload_local import aws_resources

    info = local_stack.info
    path = tmp_path / f"waited-{os.urandom(6).hex()}.bin"
    random_file(path, 3 * MiB)
    cli = subprocess.Popen(
        [sys.executable, "-m", "offload_cli", "upload", "--json", str(path)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 0, err
    upload = only_upload(subprocess.CompletedProcess([], 0, out, err))
    upload_id = upload["uploadId"]
    assert upload["state"] == "processed"
    assert upload["finished"] is True and upload["finishedAt"]
    stored = aws_resources.client("s3", info.moto_endpoint).get_object(
        Bucket=info.bucket, Key=upload["resultKey"]
    )
    assert upload["result"] == json.loads(stored["Body"].read())
    assert upload["result"]["uploadId"] == upload_id
    assert set(upload["result"]["steps"]) == {"inspect"}
    assert [link["name"] for link in upload["links"]] == ["result.json"]
    assert [job["name"] for job in upload["jobs"]][-1] == "finalize"
    assert inspect_job(upload)["result"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    shown = run_cli(env, "status", upload_id)  # the pipeline, step by step
    assert shown.returncode == 0, shown.stderr
    assert f"upload {upload_id} (single, 3.0 MiB) processed" in shown.stdout
    assert re.search(r"inspect\s+completed\s+sha256=\w+ .*\(attempt 1/\d+\)", shown.stdout)
    assert re.search(r"finalize\s+completed\s+.*\(attempt 1/\d+\)", shown.stdout)
    assert "result.json: http" in shown.stdout

    listed = run_cli(env, "uploads", "--state", "processed", "--json", "--all")
    assert listed.returncode == 0, listed.stderr
    assert upload_id in [u["id"] for u in json.loads(listed.stdout)["uploads"]]
    assert all(u["state"] == "processed" for u in json.loads(listed.stdout)["uploads"])
    table = run_cli(env, "uploads", "--limit", "100").stdout.splitlines()
    assert table[0].split() == ["UPLOAD", "STATE", "STEPS", "FILE", "CREATED"]
    (line,) = [line for line in table if line.startswith(upload_id)]
    assert line.split()[1:4] == ["processed", "2/2", path.name]


def test_single_upload_human_output(env, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"id,name\n1,offload\n")
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    done = run_cli(env, "upload", str(path))
    assert done.returncode == 0, done.stderr
    assert "(single, 18 B) processed" in done.stdout
    assert re.search(rf"inspect\s+completed\s+sha256={sha256}", done.stdout), done.stdout
    assert "manifest.json: http" in done.stdout
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal


def test_a_wrong_password_exits_3(local_stack, tmp_path):
    env = cli_env(local_stack.info, tmp_path, OFFLOAD_PASSWORD="Wrong-password-1!")
    done = run_cli(env, "jobs")
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("offload: error: sign-in refused")
    assert "NotAuthorizedException" in done.stderr
    assert done.stdout == ""


def test_a_token_the_api_refuses_exits_3(local_stack, tmp_path):
    env = cli_env(local_stack.info, tmp_path, OFFLOAD_TOKEN="not-a-token")
    done = run_cli(env, "jobs")
    assert done.returncode == 3, done.stderr
    assert "HTTP 401" in done.stderr


def test_the_password_can_come_from_stdin(local_stack, tmp_path):
    env = cli_env(local_stack.info, tmp_path)
    del env["OFFLOAD_PASSWORD"]
    done = run_cli(
        env, "jobs", "--json", "--password-stdin", stdin=local_stack.info.password + "\n"
    )
    assert done.returncode == 0, done.stderr
    assert "jobs" in json.loads(done.stdout)
    missing = run_cli(env, "jobs")  # no password anywhere, no terminal to ask on
    assert missing.returncode == 2
    assert "no password" in missing.stderr


def test_what_the_api_refuses_exits_4_with_its_message(env, tmp_path):
    path = tmp_path / "tool.exe"
    path.write_bytes(b"MZ" + b"\0" * 100)
    done = run_cli(env, "upload", "--content-type", "application/x-msdownload", str(path))
    assert done.returncode == 4, done.stderr
    assert "HTTP 400" in done.stderr and "(field contentType)" in done.stderr
    assert run_cli(env, "status", "NoSuchUpload12345678").returncode == 4


def test_an_empty_file_is_refused_before_any_request(tmp_path):
    """The API takes 1 byte or more: the CLI says so itself, exit 2, and sends nothing, not
    even the other files' uploads. Nothing listens at the API's address: a request would
    end in exit 5 after its retries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    full, empty = tmp_path / "full.txt", tmp_path / "empty.txt"
    full.write_bytes(b"data\n")
    empty.write_bytes(b"")
    api = ("--api", "http://127.0.0.1:9/", "--token", "a-token")
    done = run_cli(env, *api, "upload", "--json", str(full), str(empty))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"offload: error: {empty}: empty file: the API takes files of 1 byte or more; not sent"
    )
    assert done.stdout == ""


class RecordingApi:
    """Counts the uploads it is asked to create."""

    api_url = "http://api"

    def __init__(self) -> None:
        self.created: list[tuple] = []

    def create_upload(self, *args: object) -> dict:
        self.created.append(args)
        raise AssertionError("no upload may be created")


def test_the_uploader_refuses_an_empty_file_without_calling_the_api(tmp_path):
    """The same rule for a file emptied after the command line was checked (or a caller of the
    Uploader itself): a usage error, no ``POST /uploads``."""
    from offload_cli.errors import USAGE, UsageError
    from offload_cli.uploader import Uploader

    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    api = RecordingApi()
    uploader = Uploader(api, pool=None, store=None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="empty file") as refused:
        uploader.upload(empty)
    assert refused.value.exit_code == USAGE and api.created == []


def test_usage_errors_exit_2_without_touching_the_network(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    nowhere = run_cli(env, "--username", "u", "jobs")
    assert nowhere.returncode == 2 and "--site" in nowhere.stderr
    missing = run_cli(env, "--api", "http://127.0.0.1:9/", "upload", str(tmp_path / "nope.bin"))
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith("nope.bin: no such file")
    bad = run_cli(env, "upload", "--parallel", "0", "x")
    assert bad.returncode == 2
    assert "exit codes:" in run_cli(env, "--help").stdout


def test_status_and_jobs(env, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello\n" * 100)
    started = run_cli(env, "upload", "--json", "--no-wait", str(path))
    assert started.returncode == 0, started.stderr
    upload = only_upload(started)
    assert "jobs" not in upload  # --no-wait
    status = run_cli(env, "status", "--json", "--wait", upload["uploadId"])
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["uploadId"] == upload["uploadId"] and shown["state"] == "processed"
    job = inspect_job(shown)
    assert job["state"] == "completed"
    assert job["result"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    listed = run_cli(env, "jobs", "--json", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    assert job["id"] in [j["id"] for j in json.loads(listed.stdout)["jobs"]]
    other = tmp_path / "other.txt"  # a second job, whatever ran before this test
    other.write_bytes(b"other\n")
    assert run_cli(env, "upload", "--json", str(other)).returncode == 0
    one_page = json.loads(run_cli(env, "jobs", "--json", "--limit", "1").stdout)
    assert len(one_page["jobs"]) == 1 and one_page["nextCursor"]
    everything = json.loads(run_cli(env, "jobs", "--json", "--limit", "1", "--all").stdout)
    assert len(everything["jobs"]) >= 2 and everything["nextCursor"] is None
    assert job["id"] in [j["id"] for j in everything["jobs"]]
    table = run_cli(env, "jobs", "--upload", upload["uploadId"])
    assert table.returncode == 0
    # header + the upload's flow: its step and its finalize
    assert job["id"] in table.stdout and table.stdout.count("\n") == 3
    assert "finalize" in table.stdout


def test_resume_after_the_cli_is_killed_mid_upload(local_stack, env, tmp_path):
    from tests.support.local_stack import ApiClient, wait_until

    client = ApiClient(local_stack.info)
    state_dir = tmp_path / "state"
    path = tmp_path / "big.bin"
    sha256 = random_file(path, 40 * MiB)
    # One part at a time at 2 MiB/s: 2.5 s a part. The kill comes once two parts are in S3,
    # and must land before the last of the 8: 15 s to see the two parts and send it, however
    # slowly the loaded machine answers.
    SLOW = ("--parallel", "1", "--limit-rate", "2")  # noqa: N806
    cli = subprocess.Popen(
        [sys.executable, "-m", "offload_cli", "upload", "--json", *SLOW, str(path)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        state_file = wait_until(lambda: list(state_dir.glob("*.json")), 30, "the state file")[0]
        upload_id = json.loads(state_file.read_text())["upload_id"]

        def parts_in_s3() -> list:
            return client.call("GET", f"/uploads/{upload_id}").body["uploadedParts"]

        wait_until(lambda: len(parts_in_s3()) >= 2, 60, "two parts in S3")
        cli.send_signal(signal.SIGKILL)
        cli.wait(10)
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.communicate()
    assert cli.returncode == -signal.SIGKILL
    held = parts_in_s3()
    assert 2 <= len(held) < 8, held
    assert state_file.exists()

    resumed = run_cli(env, "upload", "--json", str(path))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming upload {upload_id}: {len(held)} of 8 parts already in S3" in resumed.stderr
    upload = only_upload(resumed)
    assert upload["uploadId"] == upload_id
    assert upload["resumedParts"] == len(held)
    assert upload["sentParts"] == 8 - len(held)
    assert upload["sentBytes"] == (8 - len(held)) * 5 * MiB
    assert inspect_job(upload)["result"]["sha256"] == sha256
    assert not state_file.exists()


def test_the_id_token_is_refreshed_once_when_the_api_refuses_it(local_stack):
    from offload_cli.api import Api, new_pool
    from offload_cli.auth import CognitoSession
    from offload_cli.config import ClientConfig, config_from_site

    info = local_stack.info
    config: ClientConfig = config_from_site(info.web_url, info.web_config())
    session = CognitoSession(config, info.username, info.password)
    good = session.token()
    session._id_token = "expired"  # as if it had expired
    api = Api(config.api_url, session, new_pool())
    assert "jobs" in api.jobs_page(1)
    assert session.token() not in ("expired", "")
    assert session.token().count(".") == 2 and good.count(".") == 2


# --- pure parts ------------------------------------------------------------------------------


def test_part_ranges_cover_the_file_exactly():
    size, part = 21 * MiB + 7, 5 * MiB
    count = transfer.part_count(size, part)
    assert count == 5
    ranges = [transfer.part_range(n, part, size) for n in range(1, count + 1)]
    assert ranges[0] == (0, part) and ranges[-1] == (20 * MiB, MiB + 7)
    assert sum(length for _, length in ranges) == size
    assert all(a + la == b for (a, la), (b, _) in itertools.pairwise(ranges))
    assert transfer.part_count(part, part) == 1 and transfer.part_count(1, part) == 1
    with pytest.raises(ValueError):
        transfer.part_range(6, part, size)


def test_site_config_resolves_api_base_against_the_site():
    site = {"apiBase": "/api", "region": "eu-west-1", "clientId": "abc", "cognitoEndpoint": ""}
    local = config_from_site("http://127.0.0.1:8000", site)
    assert local.api_url == "http://127.0.0.1:8000/api"
    assert (local.client_id, local.region, local.cognito_endpoint) == ("abc", "eu-west-1", None)
    cloud = config_from_site(
        "https://files.example.com/app/",
        {**site, "apiBase": "https://x.execute-api.eu-west-1.amazonaws.com/prod/"},
    )
    assert cloud.api_url == "https://x.execute-api.eu-west-1.amazonaws.com/prod"
    assert config_from_site("https://h/app/", {**site, "apiBase": "api"}).api_url == (
        "https://h/app/api"
    )


def test_state_file_round_trip_and_a_changed_file_is_not_resumed(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10)
    store = StateStore(tmp_path / "state")
    identity = FileIdentity.of(path)
    state = UploadState("up1", "http://api", identity.path, 10, identity.mtime_ns, 5, 2)
    store.save(state)
    assert store.load(identity, "http://api") == state
    assert store.load(identity, "http://other-api") is None
    os.utime(path, ns=(identity.mtime_ns, identity.mtime_ns + 1_000_000))
    assert store.load(FileIdentity.of(path), "http://api") is None  # changed since
    assert store.delete_upload("up1") == 1
    assert store.load(identity, "http://api") is None


class NewUploadStarted(Exception):
    pass


class PendingUploadApi:
    """The API's answer for a pending upload S3 no longer knows as a multipart upload."""

    api_url = "http://api"

    def __init__(self, view: dict):
        self.view = view

    def get_upload(self, upload_id: str) -> dict:
        return self.view

    def create_upload(self, *args: object) -> dict:
        raise NewUploadStarted


@pytest.mark.parametrize("completed", [True, False])
def test_resume_of_an_upload_s3_already_completed_does_not_upload_again(tmp_path, completed):
    """Killed after ``complete`` but before its state file was deleted: S3 has the object, the
    row is still pending (its event not processed yet) and S3 no longer knows the multipart
    upload, exactly as when the lifecycle rule aborted it. Only ``completed`` tells them apart."""
    from offload_cli.uploader import Uploader

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10)
    store = StateStore(tmp_path / "state")
    identity = FileIdentity.of(path)
    store.save(UploadState("up1", "http://api", identity.path, 10, identity.mtime_ns, 5, 2))
    view = {"id": "up1", "state": "pending", "multipartOpen": False, "uploadedParts": []}
    api = PendingUploadApi(view | {"completed": completed})
    uploader = Uploader(api, pool=None, store=store)  # type: ignore[arg-type]

    if completed:
        outcome = uploader.upload(path)
        assert outcome.upload_id == "up1" and outcome.sent_parts == 0
    else:
        with pytest.raises(NewUploadStarted):
            uploader.upload(path)  # expired: nothing to resume, the file is uploaded again
    assert store.load(identity, "http://api") is None


class FakeSource:
    batch = 3

    def __init__(self, expires_in: float = 900):
        self.calls: list[list[int]] = []
        self.expires_in = expires_in

    def part_urls(self, numbers):
        self.calls.append(list(numbers))
        return {n: f"u{n}-{len(self.calls)}" for n in numbers}, time.time() + self.expires_in


def test_part_urls_are_fetched_by_batch_and_replaced_before_expiry():
    source = FakeSource()
    urls = transfer.PartUrls(source, [1, 2, 3, 4, 5, 6, 7])
    assert [urls.get(n) for n in (1, 2, 3)] == ["u1-1", "u2-1", "u3-1"]
    assert urls.get(5) == "u5-2" and source.calls == [[1, 2, 3], [5, 6, 7]]
    assert urls.get(4) == "u4-3"
    urls.forget(4, "u4-3")  # a failed attempt: the next one gets a fresh URL
    assert urls.get(4) == "u4-4"
    short = FakeSource(expires_in=30)  # inside the margin: never reused
    urls = transfer.PartUrls(short, [1, 2])
    urls.get(1)
    urls.get(1)
    assert len(short.calls) == 2


def test_the_jobs_table_is_aligned_whatever_the_ids():
    """Real job ids (``thumbnail-`` + 40 hex digits: 50 characters), a job added from outside
    with a long id of its own, a job without upload: every column starts at the same place on
    every line."""
    from offload_cli.report import jobs_table

    jobs = [
        {
            "id": "thumbnail-" + "a" * 40,
            "name": "thumbnail",
            "state": "completed",
            "uploadId": "AxniGvRKrXztRzMmcKiXJw",
            "createdAt": "2026-12-06T10:00:00.000001Z",
        },
        {"id": "outside-" + "b" * 70, "name": "inspect", "state": "failed", "uploadId": None},
        {"id": "x", "name": "a-processor-name", "state": "retrying", "uploadId": "u1"},
    ]
    lines = jobs_table(jobs).splitlines()
    assert len(lines) == 4
    width = max(len(line) for line in lines)
    columns = ("NAME", "STATE", "UPLOAD", "CREATED")
    starts = [lines[0].index(title) for title in columns]
    for line, job in zip(lines[1:], jobs, strict=True):
        padded = line.ljust(width) + " "
        assert padded.startswith(job["id"] + " ")
        for start, name in zip(starts, ("name", "state", "uploadId", "createdAt"), strict=True):
            assert padded[start - 2 : start] == "  ", line  # two spaces before every column
            assert padded[start:].startswith((job.get(name) or "") + " "), (line, name)
    assert lines[1].endswith("2026-12-06T10:00:00.000001Z")
    assert jobs_table([]) == "JOB  NAME  STATE  UPLOAD  CREATED"


def test_sizes_are_binary_units_with_binary_names():
    from offload_cli.progress import human_bytes

    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.0 KiB"
    assert human_bytes(1536 * 1024) == "1.5 MiB"
    assert human_bytes(5 * 1024**3) == "5.0 GiB"


def test_progress_line_and_rate_limit():
    bar = ProgressBar("file.bin", 100 * MiB, done=50 * MiB)
    bar.started -= 2
    bar.done += 20 * MiB
    line = bar.line(width=100)
    assert "70.0%" in line and "70.0 MiB/100.0 MiB" in line and "10.0 MiB/s" in line
    assert "ETA 0:03" in line
    limit = transfer.RateLimit(20 * MiB)
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: [limit.take(MiB) for _ in range(3)]) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0.2 <= time.monotonic() - started < 1.0  # 6 MiB at 20 MiB/s, the first one free


def _imported_packages(folder: Path) -> dict[str, set[str]]:
    """The top-level package of every import in ``folder``'s modules (absolute imports)."""
    found: dict[str, set[str]] = {}
    for source in folder.rglob("*.py"):
        tree = ast.parse(source.read_text(), str(source))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(source.relative_to(ROOT))] = names
    return found


def test_the_cli_and_the_runtimes_import_nothing_of_each_other():
    """The CLI is a package of its own, in neither the Lambda asset nor the worker image
    (tests/infra checks both): the runtimes must not import it, and it talks to the system
    through the API only, never through the domain core."""
    runtime = ("offload", "lambdas", "fargate_worker", "offload_local")
    offenders = [
        module
        for folder in runtime
        for module, names in _imported_packages(ROOT / folder).items()
        if "offload_cli" in names
    ]
    offenders += [
        module
        for module, names in _imported_packages(ROOT / "offload_cli").items()
        if names & {*runtime, "stacks", "tests"}
    ]
    assert offenders == []
    assert not (ROOT / "offload" / "client").exists()
    assert not (ROOT / "offload" / "__main__.py").exists()


def test_the_offload_command_is_the_cli():
    """``offload`` (pyproject.toml's console script) runs what ``python -m offload_cli`` runs,
    and the distribution installs the CLI only, never the runtimes."""
    import tomllib

    from offload_cli import cli

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, _, function = project["project"]["scripts"]["offload"].partition(":")
    assert getattr(importlib.import_module(module), function) is cli.main
    assert project["tool"]["setuptools"]["packages"] == ["offload_cli"]


def _step(name: str, state: str, **fields: object) -> dict:
    return {"id": f"{name}-1", "name": name, "state": state, "attempts": 1, "maxAttempts": 3,
            "progress": None, "error": None, "superseded": False, **fields}  # fmt: skip


@pytest.mark.parametrize(
    ("state", "detected", "finished", "succeeded"),
    [
        ("processed", True, True, True),
        ("failed", True, True, False),
        ("rejected", False, True, False),
        ("aborted", False, True, False),
        ("queued", True, False, False),  # under way: the API says not finished
        ("queued", False, True, True),  # from before pipelines, every job completed
    ],
)
def test_an_upload_is_followed_to_the_final_state_the_api_reports(
    state, detected, finished, succeeded
):
    from offload_cli.follow import Followed

    steps = [_step("inspect", "completed")]
    pipeline = {
        "finished": finished if state not in ("rejected", "aborted") else False,
        "finalize": _step("finalize", "completed") if detected else None,
        "steps": steps,
    }
    item = Followed({"id": "up1", "state": state, "pipeline": pipeline})
    assert (item.finished, item.succeeded) == (finished, succeeded)
    assert [job["name"] for job in item.jobs] == ["inspect"] + (["finalize"] if detected else [])
    # From before pipelines with a failed job: finished, not a success.
    failed = {**pipeline, "steps": [_step("inspect", "failed")], "finalize": None}
    if state == "queued" and not detected:
        assert not Followed({"state": "queued", "pipeline": failed}).succeeded
    # An answer without a pipeline (or a malformed one) is not finished unless its state is.
    assert Followed({"state": state, "pipeline": "x"}).finished is (state not in ("queued",))


def test_status_text_puts_the_final_state_first_then_each_step():
    from offload_cli.follow import Followed
    from offload_cli.report import jobs_table, upload_text

    upload = {
        "id": "up1", "type": "single", "size": 2048, "filename": "a.jpg",
        "key": "uploads/u/up1/a.jpg", "state": "failed", "failedStep": "thumbnail",
        "error": "thumbnail: not an image",
        "pipeline": {
            "finished": True,
            "finalize": _step("finalize", "failed", attempts=0),
            "steps": [
                _step("inspect", "completed", result={"sha256": "ab", "size": 2048}),
                _step("thumbnail", "failed", attempts=3, error="not an image", progress=40),
                _step("inspect", "completed", superseded=True, id="inspect-0"),
            ],
        },
    }  # fmt: skip
    lines = upload_text(upload, Followed(upload)).splitlines()
    assert lines[0] == "a.jpg: upload up1 (single, 2.0 KiB) failed"
    assert lines[2] == "  failed at thumbnail: thumbnail: not an image"
    assert lines[3] == "  inspect    completed sha256=ab size=2048 (attempt 1/3)"
    assert lines[4] == "  thumbnail  failed    not an image (attempt 3/3)"
    assert lines[5].startswith("  inspect    completed (superseded) (attempt 1/3)")
    assert lines[6] == "  finalize   failed    (attempt 0/3)"
    running = _step("thumbnail", "retrying", progress=60, error="timed out", attempts=2)
    under_way = {**upload, "state": "queued", "error": None, "pipeline": {"steps": [running]}}
    last = upload_text(under_way, Followed(under_way)).splitlines()[-1]
    assert last == "  thumbnail  retrying  60%, last error: timed out (attempt 2/3)"
    table = jobs_table([{**running, "state": "completed", "superseded": True, "uploadId": "up1"}])
    assert "completed (superseded)" in table.splitlines()[1]


def test_the_uploads_table_says_how_far_each_pipeline_is():
    from offload_cli.report import uploads_table

    uploads = [
        {"id": "up1", "state": "failed", "failedStep": "thumbnail", "filename": "a b.jpg",
         "createdAt": "2026-12-06T10:00:00Z", "pipeline": {
             "finalize": _step("finalize", "failed", attempts=0),
             "steps": [_step("inspect", "completed"), _step("thumbnail", "failed"),
                       _step("inspect", "completed", superseded=True)]}},
        {"id": "up2-longer-id", "state": "pending", "filename": "c.txt", "pipeline": {}},
    ]  # fmt: skip
    lines = uploads_table(uploads).splitlines()
    assert lines[0].split() == ["UPLOAD", "STATE", "STEPS", "FILE", "CREATED"]
    state = lines[0].index("STATE")
    assert lines[1][state:].startswith("failed at thumbnail  1/3    a b.jpg  2026-12-06T10:00:00Z")
    assert lines[2].startswith("up2-longer-id") and lines[2][state:].split() == ["pending", "c.txt"]


def test_result_json_is_printed_indented_and_cannot_reach_the_terminal_raw():
    """result.json's text holds what steps wrote (metadata of the user's file): printed as
    JSON with every non-ASCII and control character escaped; not JSON, control characters
    replaced."""
    from offload_cli.report import result_json, result_text, upload_text

    raw = json.dumps({"title": "\x1b]0;pwned\x07 caf\u00e9", "n": 1}).encode()
    assert result_json(raw) == {"title": "\x1b]0;pwned\x07 caf\u00e9", "n": 1}
    text = result_text(raw)
    assert "\x1b" not in text and "\x07" not in text and "\\u001b" in text
    title = '  "title": "\\u001b]0;pwned\\u0007 caf\\u00e9",'
    assert text.splitlines() == ["{", title, '  "n": 1', "}"]
    odd = b"not json \x1b[2J\n\x9b2J"
    assert "\x1b" not in result_text(odd) and result_json(odd).startswith("not json")
    upload = {"id": "up1", "type": "single", "size": 1, "key": "k", "state": "processed"}
    lines = upload_text(upload, None, None, raw).splitlines()
    assert lines[2:4] == ["  result.json:", "    {"]
