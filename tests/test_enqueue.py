"""The enqueue Lambda in-process: moto S3 -> moto SQS -> handler -> real Redis and PostgreSQL."""

from __future__ import annotations

import json
import time

from lambdas import runtime
from offload.jobs import INSPECT, THUMBNAIL
from offload.pipelines import FINALIZE
from tests.support.events import (
    FakeContext,
    failed_ids,
    from_sqs_messages,
    insert_upload,
    job_rows,
    queue_call,
    queue_jobs,
    receive_all,
    s3_body,
    s3_record,
    s3_test_event_body,
    sql,
    sqs_event,
    sqs_record,
    step_rows,
    upload_row,
    wire_notifications,
)
from tests.support.events import (
    invoke_enqueue as invoke,
)
from tests.support.redis_acl import as_environment
from tests.support.tcpproxy import proxy_for, url_through

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 24


def _put(s3, bucket: str, key: str, body: bytes) -> str:
    return s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')


def _multipart(s3, bucket: str, key: str, sizes: tuple[int, ...]) -> str:
    mpu = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, size in enumerate(sizes, start=1):
        etag = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=mpu, PartNumber=number, Body=b"m" * size
        )["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    return s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=mpu, MultipartUpload={"Parts": parts}
    )["ETag"].strip('"')


def test_moto_notifications_for_single_and_multipart_uploads_become_jobs(
    lambda_env, settings, s3, sqs, bucket
):
    url = wire_notifications(s3, sqs, bucket)
    image_key = insert_upload(
        settings, bucket, filename="my photo+1.png", content_type="image/png", size=len(PNG)
    )
    big_size = 5 * 1024 * 1024 + 10
    big_key = insert_upload(settings, bucket, filename="big.bin", size=big_size)
    image_etag = _put(s3, bucket, image_key, PNG)
    big_etag = _multipart(s3, bucket, big_key, (5 * 1024 * 1024, 10))

    # TestEvent + image Put + multipart Put + CompleteMultipartUpload, in one batch
    messages = receive_all(sqs, url, expected=4)
    assert len(messages) == 4
    response = invoke(from_sqs_messages(messages))
    assert response == {"batchItemFailures": []}

    image, big = upload_row(settings, image_key), upload_row(settings, big_key)
    assert (image["state"], image["size_actual"], image["etag"]) == ("queued", len(PNG), image_etag)
    assert (big["state"], big["size_actual"], big["etag"]) == ("queued", big_size, big_etag)

    # the pipeline is picked by the sniffed type: PNG bytes are an image, the big one is not
    assert (image["detected_type"], big["detected_type"]) == ("image/png", "text/plain")
    rows = step_rows(settings)
    assert sorted((r["upload_id"], r["name"]) for r in rows) == sorted(
        [(image["id"], INSPECT), (image["id"], THUMBNAIL), (big["id"], INSPECT)]
    )
    parents = {r["upload_id"]: r for r in job_rows(settings) if r["name"] == FINALIZE}
    assert set(parents) == {image["id"], big["id"]}
    assert all(r["parent_id"] == parents[r["upload_id"]]["id"] for r in rows)
    assert all(p["parent_id"] is None for p in parents.values())
    jobs = queue_jobs(settings)
    # both multipart events: one flow
    assert set(jobs) == {r["id"] for r in job_rows(settings)}
    big_job = jobs[next(r["id"] for r in rows if r["upload_id"] == big["id"])]
    assert big_job.name == INSPECT
    assert big_job.data == {
        "bucket": bucket,
        "key": big_key,
        "etag": big_etag,
        "owner": big["owner"],
        "upload_id": big["id"],
    }
    assert all(r["state"] == "queued" and r["revision"] for r in rows)


def test_the_same_message_twice_and_in_one_batch_gives_one_job(lambda_env, settings, s3, bucket):
    key = insert_upload(settings, bucket, size=5)
    etag = _put(s3, bucket, key, b"hello")
    body = s3_body(s3_record(bucket, key, 5, etag))
    assert invoke(sqs_event([sqs_record(body, "m1")])) == {"batchItemFailures": []}
    assert invoke(sqs_event([sqs_record(body, "m1", receive_count=2)]))["batchItemFailures"] == []
    assert invoke(sqs_event([sqs_record(body), sqs_record(body)]))["batchItemFailures"] == []

    (row,) = step_rows(settings)
    assert sorted(queue_jobs(settings)) == sorted(r["id"] for r in job_rows(settings))
    assert len(job_rows(settings)) == 2  # the flow: finalize and inspect, once each
    events = sql(settings, "SELECT state FROM job_events WHERE job_id = %s", row["id"])
    assert [e["state"] for e in events] == ["queued"]
    assert upload_row(settings, key)["state"] == "queued"


def test_an_upload_arriving_as_announced_costs_three_statements(lambda_env, settings, s3, bucket):
    """The CPU budget of the enqueue path (tests/system: our CPU per upload): the common case,
    a pending upload's object with the announced size, is one statement that checks and moves
    the row, one for every row of its flow, and the row to ``queued``. (Each statement
    borrows the container's pool once: its request count is the statement count.)"""
    key = insert_upload(settings, bucket, size=5)
    body = s3_body(s3_record(bucket, key, 5, _put(s3, bucket, key, b"hello")))
    runtime.run(runtime.pool())  # the container's pool, opened as on a cold start

    before = runtime.run(runtime.pool()).get_stats().get("requests_num", 0)
    assert invoke(sqs_event([sqs_record(body, "m1")])) == {"batchItemFailures": []}
    after = runtime.run(runtime.pool()).get_stats().get("requests_num", 0)

    assert upload_row(settings, key)["state"] == "queued" and len(job_rows(settings)) == 2
    assert after - before == 3


def test_a_late_duplicate_does_not_rerun_a_finished_job(lambda_env, settings, s3, bucket):
    key = insert_upload(settings, bucket, size=5)
    etag = _put(s3, bucket, key, b"hello")
    event = sqs_event([sqs_record(s3_body(s3_record(bucket, key, 5, etag)))])
    invoke(event)
    rows = job_rows(settings)
    # the flow ran (its step, then finalize), and retention later removed it from Redis
    for row in rows:
        sql(settings, "UPDATE jobs SET state = 'completed', attempt = 1 WHERE id = %s", row["id"])
        queue_call(as_environment(settings), lambda queue, jid=row["id"]: queue.remove(jid))
    assert invoke(event)["batchItemFailures"] == []
    assert queue_jobs(settings) == {}
    assert {row["state"] for row in job_rows(settings)} == {"completed"}


def test_a_batch_mixing_good_and_malformed_records_fails_only_the_bad_ones(
    lambda_env, settings, s3, bucket
):
    key = insert_upload(settings, bucket, size=5)
    etag = _put(s3, bucket, key, b"hello")
    bad_key = s3_record(bucket, key, 5, etag)
    bad_key["s3"]["object"]["key"] = "uploads/%ff"
    records = [
        sqs_record("not json at all", "bad-json"),
        sqs_record(s3_body(s3_record(bucket, key, 5, etag)), "good"),
        sqs_record('{"Records": [{"eventSource": "aws:s3"}]}', "missing-fields"),
        sqs_record(json.dumps({"hello": "world"}), "not-s3"),
        sqs_record(json.dumps({"Records": [bad_key]}), "bad-key-encoding"),
        sqs_record(s3_test_event_body(bucket), "test-event"),
    ]
    response = invoke(sqs_event(records))
    assert failed_ids(response) == {"bad-json", "missing-fields", "not-s3", "bad-key-encoding"}
    assert upload_row(settings, key)["state"] == "queued"
    assert len(queue_jobs(settings)) == 2  # its flow: finalize and inspect


def test_a_batch_of_only_malformed_records_reports_them_all(lambda_env):
    response = invoke(sqs_event([sqs_record("{", "a"), sqs_record("[]", "b")]))
    assert failed_ids(response) == {"a", "b"}


def test_size_mismatch_rejects_the_upload_and_enqueues_nothing(lambda_env, settings, s3, bucket):
    key = insert_upload(settings, bucket, size=10)
    etag = _put(s3, bucket, key, b"hello")
    response = invoke(sqs_event([sqs_record(s3_body(s3_record(bucket, key, 5, etag)))]))
    assert response["batchItemFailures"] == []
    row = upload_row(settings, key)
    assert row["state"] == "rejected" and row["size_actual"] == 5
    assert "5 bytes" in row["error"] and "10 were announced" in row["error"]
    assert job_rows(settings) == [] and queue_jobs(settings) == {}
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == 5  # left for lifecycle


def test_keys_without_a_matching_upload_get_no_job(lambda_env, settings, s3, bucket):
    victim = insert_upload(settings, bucket, size=5)
    _, owner, upload_id, _ = victim.split("/")
    forged = [
        "uploads/someone/0123456789abcdef/file.bin",  # no such upload row
        f"uploads/attacker/{upload_id}/file.bin",  # someone else's upload id
        f"uploads/{owner}/{upload_id}/other-name.bin",  # the right id, not the handed-out key
        "uploads/not-the-layout",
        "uploads/a/b/c/d",
    ]
    records = [sqs_record(s3_body(s3_record(bucket, key, 5, "e" * 32))) for key in forged]
    assert invoke(sqs_event(records))["batchItemFailures"] == []
    assert upload_row(settings, victim)["state"] == "pending"  # untouched
    assert job_rows(settings) == [] and queue_jobs(settings) == {}


def test_test_events_other_prefixes_and_other_event_kinds_are_skipped(
    lambda_env, settings, s3, bucket
):
    key = insert_upload(settings, bucket, size=5)
    records = [
        sqs_record(s3_test_event_body(bucket)),
        sqs_record(s3_body(s3_record(bucket, "processed/u/x/manifest.json", 5, "e"))),
        sqs_record(s3_body(s3_record(bucket, key, 5, "e", event_name="ObjectRemoved:Delete"))),
    ]
    assert invoke(sqs_event(records))["batchItemFailures"] == []
    assert upload_row(settings, key)["state"] == "pending"
    assert job_rows(settings) == [] and queue_jobs(settings) == {}


def test_objects_for_aborted_or_rejected_uploads_are_acknowledged_without_a_job(
    lambda_env, settings, s3, sqs, bucket, caplog, capsys
):
    """A client may still send the bytes after its upload was aborted (or rejected): S3's real
    event is acknowledged (retrying cannot change the answer), logged, and changes nothing."""
    url = wire_notifications(s3, sqs, bucket)
    aborted = insert_upload(settings, bucket, size=5, state="aborted")
    rejected = insert_upload(settings, bucket, size=5, state="rejected")
    sql(
        settings,
        "UPDATE uploads SET error = 'object is 7 bytes, 5 were announced', size_actual = 7"
        " WHERE key = %s",
        rejected,
    )
    before = {key: upload_row(settings, key) for key in (aborted, rejected)}
    for key in before:
        _put(s3, bucket, key, b"hello")
    messages = receive_all(sqs, url, expected=3)  # TestEvent + the two objects
    caplog.clear()
    capsys.readouterr()

    assert invoke(from_sqs_messages(messages)) == {"batchItemFailures": []}
    assert {key: upload_row(settings, key) for key in before} == before  # updated_at too
    assert job_rows(settings) == [] and queue_jobs(settings) == {}
    ignored = {r.upload_id: r.reason for r in caplog.records if r.getMessage() == "event ignored"}
    assert ignored == {
        before[aborted]["id"]: "upload is aborted",
        before[rejected]["id"]: "upload is rejected",
    }
    (emf,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "_aws" in line]
    assert emf["ObjectsIgnored"] == [1.0, 1.0] and "ObjectsAccepted" not in emf


def test_the_object_is_headed_only_when_the_event_lacks_its_size(lambda_env, settings, s3, bucket):
    key = insert_upload(settings, bucket, size=5)
    etag = _put(s3, bucket, key, b"hello")
    gone = insert_upload(settings, bucket, size=5)  # row, but no object
    records = [
        sqs_record(s3_body(s3_record(bucket, key, None, None)), "head"),
        sqs_record(s3_body(s3_record(bucket, gone, None, None)), "gone"),
    ]
    assert invoke(sqs_event(records))["batchItemFailures"] == []
    row = upload_row(settings, key)
    assert (row["state"], row["size_actual"], row["etag"]) == ("queued", 5, etag)
    assert upload_row(settings, gone)["state"] == "pending"
    assert [r["upload_id"] for r in step_rows(settings)] == [row["id"]]


def _redis_down(monkeypatch, url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("OFFLOAD_ENQUEUE_RECORD_TIMEOUT_S", "1")
    runtime.reset()


def test_redis_down_fails_every_record_that_needs_it_and_queues_nothing(
    lambda_env, settings, s3, bucket, monkeypatch
):
    _redis_down(monkeypatch, "redis://127.0.0.1:1/0")  # nothing listens there
    keys = [insert_upload(settings, bucket, size=5) for _ in range(3)]
    etags = [_put(s3, bucket, key, b"hello") for key in keys]
    oversize = insert_upload(settings, bucket, size=99)
    oversize_etag = _put(s3, bucket, oversize, b"hello")
    records = [
        sqs_record(s3_body(s3_record(bucket, key, 5, etag)), f"good-{i}")
        for i, (key, etag) in enumerate(zip(keys, etags, strict=True))
    ]
    records.insert(1, sqs_record(s3_test_event_body(bucket), "test-event"))
    records.append(sqs_record(s3_body(s3_record(bucket, oversize, 5, oversize_etag)), "oversize"))

    started = time.monotonic()
    response = invoke(sqs_event(records))
    elapsed = time.monotonic() - started

    assert failed_ids(response) == {"good-0", "good-1", "good-2"}
    assert elapsed < 5, elapsed  # one record waited out its timeout, the others failed at once
    assert [upload_row(settings, key)["state"] for key in keys] == ["uploaded"] * 3
    assert upload_row(settings, oversize)["state"] == "rejected"  # needed PostgreSQL only
    assert queue_jobs(settings) == {}
    # The first record's flow rows are written before Redis is tried (PostgreSQL is the record
    # the reconciler replays from); the others never got that far.
    first = upload_row(settings, keys[0])["id"]
    assert sorted((r["upload_id"], r["name"]) for r in job_rows(settings)) == [
        (first, FINALIZE),
        (first, INSPECT),
    ]


def test_after_a_redis_outage_redelivered_messages_succeed(
    lambda_env, settings, s3, bucket, monkeypatch
):
    proxy = proxy_for(settings.redis_url, 6379)
    try:
        _redis_down(monkeypatch, url_through(settings.redis_url, proxy.port))
        key = insert_upload(
            settings, bucket, filename="a.png", content_type="image/png", size=len(PNG)
        )
        etag = _put(s3, bucket, key, PNG)
        event = sqs_event([sqs_record(s3_body(s3_record(bucket, key, len(PNG), etag)), "m")])
        proxy.cut()
        assert failed_ids(invoke(event)) == {"m"}
        assert upload_row(settings, key)["state"] == "uploaded"
        proxy.restore()
        assert invoke(event)["batchItemFailures"] == []  # SQS's redelivery, same container
    finally:
        runtime.reset()
        proxy.stop()
    assert upload_row(settings, key)["state"] == "queued"
    names = sorted(job.name for job in queue_jobs(settings).values())
    assert names == [FINALIZE, INSPECT, THUMBNAIL]


def test_records_left_when_the_invocation_runs_out_of_time_fail_untouched(
    lambda_env, settings, s3, bucket
):
    """The partial answer must reach Lambda before its timeout (else the whole batch returns)."""
    from lambdas import enqueue

    key = insert_upload(settings, bucket, size=5)
    etag = _put(s3, bucket, key, b"hello")
    event = sqs_event([sqs_record(s3_body(s3_record(bucket, key, 5, etag)), "late")])
    response = enqueue.handler(event, FakeContext(timeout_s=enqueue.SAFETY_MARGIN_S - 0.5))
    assert failed_ids(response) == {"late"}
    assert upload_row(settings, key)["state"] == "pending"


def test_postgres_down_fails_the_records(lambda_env, settings, s3, bucket, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/test")
    monkeypatch.setenv("OFFLOAD_ENQUEUE_RECORD_TIMEOUT_S", "1")
    runtime.reset()
    records = [
        sqs_record(s3_body(s3_record(bucket, f"uploads/u/up{i}/f", 5, "e" * 32)), f"m{i}")
        for i in range(3)
    ]
    records.append(sqs_record(s3_test_event_body(bucket), "test-event"))
    started = time.monotonic()
    assert failed_ids(invoke(sqs_event(records))) == {"m0", "m1", "m2"}
    assert time.monotonic() - started < 5
    assert queue_jobs(settings) == {}


def test_handler_imports_load_only_what_their_cold_path_needs():
    """Fresh interpreters: the enqueue handler loads psycopg and redis/bullmq with the first
    record that needs them (not at import); the queue metrics handler, which never touches
    PostgreSQL, never loads psycopg."""
    import subprocess
    import sys

    from tests.support.apigw import REPO_ROOT

    script = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
heavy = ("boto3", "psycopg", "psycopg_pool", "redis", "bullmq", "aws_xray_sdk")
print(json.dumps([m for m in heavy if m in sys.modules]))
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "POWERTOOLS_TRACE_DISABLED": "1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    loaded = {}
    for module in ("lambdas.enqueue", "lambdas.queue_metrics"):
        out = subprocess.run(
            [sys.executable, "-c", script, module],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        loaded[module] = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"lambdas.enqueue": [], "lambdas.queue_metrics": ["redis", "bullmq"]}


def test_the_pipeline_is_picked_by_one_ranged_get_per_accepted_upload(
    lambda_env, settings, s3, bucket, record_property
):
    """The content sniffing's cost in the enqueue path: exactly one GET (of the first KiB) per
    accepted upload, none for a repeated event (the type is on the row), none for a rejected
    one. Timed against moto: the whole record, and the GET alone (figures in the report)."""
    from lambdas import enqueue
    from offload import aws
    from offload.s3events import sniff_object
    from tests.support.events import FakeContext
    from tests.support.system_stack import FIGURES_PROPERTY

    count = 20
    bodies = [PNG if i % 2 else b"hello world, " * 200 for i in range(count)]
    keys = [insert_upload(settings, bucket, size=len(body)) for body in bodies]
    records = [
        sqs_record(s3_body(s3_record(bucket, key, len(body), _put(s3, bucket, key, body))))
        for key, body in zip(keys, bodies, strict=True)
    ]
    rejected = insert_upload(settings, bucket, size=99)
    records.append(
        sqs_record(s3_body(s3_record(bucket, rejected, 5, _put(s3, bucket, rejected, b"hello"))))
    )
    client = aws.s3_client(runtime.settings().s3_endpoint_url)
    gets: list[dict] = []
    client.meta.events.register("before-call.s3.GetObject", lambda params, **_: gets.append(params))
    try:
        enqueue.handler(sqs_event(records[:1]), FakeContext())  # warm: pools, scripts, client
        gets.clear()
        started = time.perf_counter()
        assert enqueue.handler(sqs_event(records[1:]), FakeContext()) == {"batchItemFailures": []}
        per_record_ms = (time.perf_counter() - started) * 1000 / (count - 1)
        assert len(gets) == count - 1  # one per accepted upload, none for the rejected one
        assert {g["headers"].get("Range") for g in gets} == {"bytes=0-1023"}
        gets.clear()
        assert enqueue.handler(sqs_event(records), FakeContext()) == {"batchItemFailures": []}
        assert gets == []  # repeated events: the detected type is on the row
    finally:
        client.meta.events.unregister("before-call.s3.GetObject")

    rows = [upload_row(settings, key) for key in keys]
    assert [row["detected_type"] for row in rows] == [
        "image/png" if i % 2 else "text/plain" for i in range(count)
    ]
    started = time.perf_counter()
    for key in keys:
        sniff_object(client, _upload_of(runtime, key))
    get_ms = (time.perf_counter() - started) * 1000 / count
    figures = f"enqueue record {per_record_ms:.1f} ms, of which the ranged GET {get_ms:.1f} ms"
    record_property(FIGURES_PROPERTY, figures)  # shown in the run's "system figures"


def _upload_of(runtime_module, key: str):
    """The upload row as the enqueue path reads it (offload.db.uploads.Upload)."""
    store = runtime_module.run(runtime_module.uploads())
    upload_id = key.split("/")[2]
    return runtime_module.run(store.get(upload_id))


def test_the_announced_type_never_picks_the_pipeline(lambda_env, settings, s3, bucket):
    """Announced as a PNG, sniffed as text: no thumbnail step (a client cannot steer its bytes
    to the image decoders, nor make a real image skip them by announcing text)."""
    fake = insert_upload(
        settings, bucket, filename="x.png", content_type="image/png", size=len(b"hello")
    )
    real = insert_upload(
        settings, bucket, filename="x.txt", content_type="text/plain", size=len(PNG)
    )
    records = [
        sqs_record(s3_body(s3_record(bucket, fake, 5, _put(s3, bucket, fake, b"hello")))),
        sqs_record(s3_body(s3_record(bucket, real, len(PNG), _put(s3, bucket, real, PNG)))),
    ]
    assert invoke(sqs_event(records)) == {"batchItemFailures": []}
    steps = {
        key: sorted(r["name"] for r in step_rows(settings, upload_row(settings, key)["id"]))
        for key in (fake, real)
    }
    assert steps == {fake: [INSPECT], real: [INSPECT, THUMBNAIL]}
