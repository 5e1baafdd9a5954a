"""Job priorities (offload.priorities): small uploads first, the plus tier ahead within a size
band; the tier stored on the upload row when it is created, the priority given by the enqueue
path, and the order bullmq really hands a mixed backlog out in."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from offload.db.uploads import Upload
from offload.jobs import INSPECT, JobRef
from offload.priorities import (
    MAX_BANDS,
    MAX_PRIORITY,
    all_priorities,
    parse_size,
    parse_size_bands,
    upload_priority,
)
from offload.settings import GiB, MiB, Settings, SettingsError
from tests.support.apigw import call
from tests.support.events import (
    invoke_enqueue,
    queue_jobs,
    s3_body,
    s3_record,
    sqs_event,
    sqs_record,
    upload_row,
)
from tests.support.harness import job_row, producer, running_worker, wait_for

KiB = 1 << 10

# --- the rule -------------------------------------------------------------------------------


def test_sizes_take_binary_units_and_refuse_anything_else():
    assert parse_size("16MiB") == 16 * MiB
    assert parse_size(" 4 gib ") == 4 * GiB
    assert parse_size("1048576") == MiB
    assert parse_size("1 KiB") == KiB
    for bad in ("16MB", "16 M", "-1", "1.5GiB", "", "MiB", "1e9", "1" * 16):
        with pytest.raises(ValueError, match="is not a size"):
            parse_size(bad)


def test_bands_are_increasing_bounds_or_none():
    assert parse_size_bands("1MiB, 1GiB") == (MiB, GiB)
    assert parse_size_bands("none") == ()
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_size_bands("1GiB,1MiB")
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_size_bands("1MiB,1MiB")
    with pytest.raises(ValueError, match="at least 1 byte"):
        parse_size_bands("0,1MiB")
    with pytest.raises(ValueError, match="at most"):
        parse_size_bands(",".join(str(n) for n in range(1, MAX_BANDS + 2)))


def test_the_setting_is_validated_at_start():
    assert Settings.from_env({}).priority_size_bands == (16 * MiB, 256 * MiB, 4 * GiB)
    assert Settings.from_env({"OFFLOAD_PRIORITY_SIZE_BANDS": "8MiB"}).priority_size_bands == (
        8 * MiB,
    )
    with pytest.raises(SettingsError, match="OFFLOAD_PRIORITY_SIZE_BANDS: 'ten' is not a size"):
        Settings.from_env({"OFFLOAD_PRIORITY_SIZE_BANDS": "ten"})


def test_smaller_bands_first_and_plus_ahead_within_a_band():
    settings = Settings()  # bands: <= 16 MiB, <= 256 MiB, <= 4 GiB, larger
    order = [
        (KiB, "plus"),
        (16 * MiB, "standard"),  # the bound belongs to its band
        (16 * MiB + 1, "plus"),
        (200 * MiB, None),  # a row from before the tier column: standard
        (GiB, "plus"),
        (GiB, "operators"),  # not a tier: standard
        (50 * GiB, "plus"),
        (None, "standard"),  # unknown size: the largest band
    ]
    priorities = [upload_priority(settings, size, tier) for size, tier in order]
    assert priorities == [1, 2, 3, 4, 5, 6, 7, 8]
    assert priorities == sorted(priorities)
    assert list(all_priorities(settings)) == list(range(1, 9))
    assert upload_priority(replace(settings, priority_size_bands=()), 50 * GiB, "plus") == 1
    widest = replace(settings, priority_size_bands=tuple(range(1, MAX_BANDS + 1)))
    assert 1 <= max(all_priorities(widest)) < MAX_PRIORITY  # bullmq's limit (and never 0)


# --- the tier on the row, the priority on the job ----------------------------------------------


def _claims(sub: str, groups: str | None) -> dict[str, str]:
    made = {"sub": sub, "token_use": "id", "aud": "exampleclientid"}
    if groups is not None:
        made["cognito:groups"] = groups
    return made


def test_an_upload_keeps_its_creators_tier_and_its_jobs_get_the_priority(
    lambda_env, settings, s3, bucket
):
    """POST /uploads stores the caller's tier on the row; the enqueue Lambda (which only sees
    the object's key) gives the upload's jobs the priority of that tier and the object's size."""
    body = {"filename": "photo.png", "size": 5, "contentType": "image/png"}
    made = {}
    for name, groups in (("plus", "plus"), ("standard", None), ("operator", "operators")):
        created = call("POST", "/uploads", body=body, claims=_claims(f"user-{name}", groups))
        assert created.status == 201, created.body
        made[name] = created.body
    rows = {name: upload_row(settings, view["key"]) for name, view in made.items()}
    assert {name: row["tier"] for name, row in rows.items()} == {
        "plus": "plus",
        "standard": "standard",
        "operator": "standard",
    }

    records = []
    for row in rows.values():
        etag = s3.put_object(Bucket=bucket, Key=row["key"], Body=b"\x89PNG\r")["ETag"].strip('"')
        records.append(sqs_record(s3_body(s3_record(bucket, row["key"], 5, etag))))
    assert invoke_enqueue(sqs_event(records)) == {"batchItemFailures": []}

    by_upload: dict[str, set[int]] = {}
    for job in queue_jobs(settings).values():
        by_upload.setdefault(job.data["upload_id"], set()).add(job.priority)
    assert by_upload == {
        rows["plus"]["id"]: {1},  # smallest band, plus: every step of the upload
        rows["standard"]["id"]: {2},
        rows["operator"]["id"]: {2},
    }


# --- the order bullmq hands a backlog out in --------------------------------------------------


def _upload(size: int | None, tier: str | None) -> Upload:
    now = datetime.now(UTC)
    upload_id = uuid.uuid4().hex
    return Upload(
        upload_id, "user-p", "test-bucket", f"uploads/user-p/{upload_id}/f", "f", None, size,
        size, None, None, None, "uploaded", None, now, now, tier=tier,
    )  # fmt: skip


def test_a_mixed_backlog_is_handed_out_small_first_then_plus_first_then_in_adding_order(
    settings,
):
    """A backlog added in the worst order (large files first), taken by one worker with one
    slot: it runs by priority, and in the order of adding within one priority."""
    settings = replace(settings, concurrency=1)
    backlog = [  # (label, size, tier), in the order added
        ("5GiB-std", 5 * GiB, "standard"),
        ("5GiB-plus", 5 * GiB, "plus"),
        ("100MiB-std", 100 * MiB, "standard"),
        ("1KiB-std-a", KiB, "standard"),
        ("100MiB-plus", 100 * MiB, "plus"),
        ("1KiB-std-b", KiB, None),
        ("1KiB-plus", KiB, "plus"),
        ("1GiB-std", GiB, "standard"),
    ]
    expected = [
        "1KiB-plus",
        "1KiB-std-a",
        "1KiB-std-b",
        "100MiB-plus",
        "100MiB-std",
        "1GiB-std",
        "5GiB-plus",
        "5GiB-std",
    ]

    async def scenario() -> dict[str, datetime]:
        ids = {}
        async with producer(settings) as prod:
            for label, size, tier in backlog:
                upload = _upload(size, tier)
                ref = JobRef(bucket="test-bucket", key=label, upload_id=upload.id, owner="user-p")
                ids[label] = await prod.enqueue_upload_job("noop", ref, upload)
            counts = await prod.queue.getJobCounts("prioritized", "wait")
            assert counts == {"prioritized": len(backlog), "wait": 0}
            async with running_worker(settings):
                await wait_for(
                    lambda: all(
                        (row := job_row(settings, job_id)) and row["state"] == "completed"
                        for job_id in ids.values()
                    ),
                    timeout_s=30,
                )
        return {label: job_row(settings, job_id)["started_at"] for label, job_id in ids.items()}

    started = asyncio.run(scenario())
    assert sorted(started, key=started.__getitem__) == expected


def test_every_job_of_an_upload_goes_through_the_enqueue_path_with_a_priority(settings):
    """A job added without a priority would go to the plain wait list, which bullmq empties
    before any prioritised job: the upload path never adds one."""

    async def scenario() -> list[int]:
        async with producer(settings) as prod:
            upload = _upload(3 * GiB, "plus")
            ref = JobRef(bucket="test-bucket", key="k", upload_id=upload.id, owner="user-p")
            job_id = await prod.enqueue_upload_job(INSPECT, ref, upload)
            job = await prod.queue.getJob(job_id)
            return [job.priority, (await prod.queue.getJobCounts("wait"))["wait"]]

    assert asyncio.run(scenario()) == [5, 0]
