"""The invariants of upload flows (issue 14), checked after a system test's fault: each upload
of the scenario ran its pipeline as one bullmq flow (its steps, children of one ``finalize``)
and ended in its final state, with its ``result.json`` naming each step.

Read from every place a flow lives: the upload and job rows and their ``job_events`` in
PostgreSQL, the job hashes in Redis (the parent links bullmq keeps: ``parentKey``, the
parent's ``:processed`` and ``:dependencies``), and the outputs in S3 (every version: the bucket
is versioned, and a re-run writes a new one). Like ``system_checks``, each check returns a
problem per broken invariant, so a failing test names every flow that breaks one.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from offload.pipelines import FINALIZE, pipeline_for
from tests.support.system_checks import JobState, Ledger
from tests.support.system_stack import SystemRun

RESULT_NAME = "result.json"
REQUEUED = "re-enqueued%"  # the reconciler's job_events message for a job Redis lost


@dataclass
class Flow:
    """One upload's flow as PostgreSQL has it: the upload row, its ``finalize`` and steps."""

    upload_id: str
    upload: dict[str, Any]
    parents: list[dict[str, Any]] = field(default_factory=list)  # rows named finalize
    steps: list[dict[str, Any]] = field(default_factory=list)  # rows with a parent_id
    strays: list[dict[str, Any]] = field(default_factory=list)  # neither: a lone job

    @property
    def parent(self) -> dict[str, Any] | None:
        return self.parents[0] if len(self.parents) == 1 else None

    @property
    def job_ids(self) -> list[str]:
        return [row["id"] for row in (*self.parents, *self.steps, *self.strays)]

    @property
    def expected_steps(self) -> list[str]:
        """The steps the upload's detected type calls for (``offload.pipelines``)."""
        return sorted(step.name for step in pipeline_for(self.upload["detected_type"]).steps)

    @property
    def result_key(self) -> str:
        return f"processed/{self.upload['owner']}/{self.upload_id}/{RESULT_NAME}"


def read_flows(run: SystemRun, ledger: Ledger) -> dict[str, Flow]:
    """Upload id -> its flow, for every upload of the ledger."""
    ids = list(ledger.uploads)
    if not ids:
        return {}
    flows = {
        row["id"]: Flow(row["id"], row)
        for row in run.sql(
            "SELECT id, owner, key, state, detected_type, failed_step, error, result_key,"
            " finished_at FROM uploads WHERE id = ANY(%s)",
            (ids,),
        )
    }
    for row in run.sql(
        "SELECT id, name, queue, upload_id, parent_id, state, result FROM jobs"
        " WHERE upload_id = ANY(%s) ORDER BY id",
        (ids,),
    ):
        flow = flows[row["upload_id"]]
        if row["parent_id"]:
            flow.steps.append(row)
        elif row["name"] == FINALIZE:
            flow.parents.append(row)
        else:
            flow.strays.append(row)
    return flows


def flow_job_count(flows: dict[str, Flow]) -> int:
    """Jobs the uploads' flows should have: a ``finalize`` and each step of their pipeline."""
    return sum(1 + len(flow.expected_steps) for flow in flows.values())


def shape_problems(flows: dict[str, Flow], ledger: Ledger) -> list[str]:
    """Each upload has one flow, the one its detected type calls for, and ended as expected:
    ``processed`` with its ``result_key``, or ``failed`` at the step the test expects
    (``ledger.expect_failed``); ``finalize``'s own result names the same key and steps."""
    problems = [f"upload {u}: no row" for u in ledger.uploads if u not in flows]
    for flow in flows.values():
        name = f"upload {flow.upload_id}"
        upload = flow.upload
        if len(flow.parents) != 1:
            problems.append(f"{name}: {len(flow.parents)} finalize jobs, not one")
            continue
        parent = flow.parents[0]
        problems += [f"{name}: job {r['id']} ({r['name']}) is in no flow" for r in flow.strays]
        problems += [
            f"{name}: step {r['id']} has parent {r['parent_id']}, not {parent['id']}"
            for r in flow.steps
            if r["parent_id"] != parent["id"]
        ]
        names = sorted(row["name"] for row in flow.steps)
        if names != flow.expected_steps:
            problems.append(f"{name}: steps {names}, its pipeline has {flow.expected_steps}")
        expected_step = ledger.expect_failed.get(flow.upload_id)
        if expected_step is not None:
            if (upload["state"], upload["failed_step"]) != ("failed", expected_step):
                problems.append(
                    f"{name}: {upload['state']} (failed step {upload['failed_step']!r}), "
                    f"expected failed at {expected_step}"
                )
            continue
        if upload["state"] != "processed" or upload["failed_step"] is not None:
            problems.append(
                f"{name}: {upload['state']} (failed step {upload['failed_step']!r}, error "
                f"{upload['error']!r}), not processed"
            )
        if upload["result_key"] != flow.result_key or upload["finished_at"] is None:
            problems.append(
                f"{name}: result key {upload['result_key']!r}, finished {upload['finished_at']}"
            )
        wanted = {"resultKey": flow.result_key, "steps": names}
        if parent["state"] != "completed" or parent["result"] != wanted:
            problems.append(f"{name}: finalize {parent['state']} with {parent['result']!r}")
    return problems


def event_problems(
    run: SystemRun, flows: dict[str, Flow], ledger: Ledger, reruns_allowed: bool
) -> list[str]:
    """From ``job_events``, in the order PostgreSQL stored them (their ids): ``finalize``
    started only after every step of its flow had completed, and no step started again once
    its ``finalize`` had started (a flow rebuilt with a finished step in it, a second flow).

    Without ``reruns_allowed``: every job of a flow completed exactly once and never started
    again after it completed. Scenarios that kill a worker, or a Redis that loses its last
    second of writes, may re-run a job whose completion PostgreSQL has and Redis has not (the
    status write comes first; re-runs are by design, counted by ``rerun_figures``): there a job
    completes at least once. A flow the test expects to fail (``ledger.expect_failed``) never
    completes its failing step nor its ``finalize``: each of its other steps completes."""
    ids = [job_id for flow in flows.values() for job_id in flow.job_ids]
    if not ids:
        return []
    events: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in run.sql(
        "SELECT id, job_id, state FROM job_events WHERE job_id = ANY(%s) ORDER BY id", (ids,)
    ):
        events[row["job_id"]].append((row["id"], row["state"]))

    def first(job_id: str, state: str) -> int | None:
        return next((at for at, s in events[job_id] if s == state), None)

    problems = []
    for flow in flows.values():
        parent = flow.parent
        if parent is None:
            continue  # shape_problems names it
        failing = ledger.expect_failed.get(flow.upload_id)
        for row in (parent, *flow.steps):
            job_id = row["id"]
            completions = sum(1 for _, s in events[job_id] if s == "completed")
            if failing is not None and row["name"] in (FINALIZE, failing):
                if completions:
                    problems.append(f"{row['name']} {job_id}: completed in a flow that failed")
                continue
            done_at = first(job_id, "completed")
            started_after = [
                at for at, s in events[job_id] if s == "active" and done_at and at > done_at
            ]
            if not reruns_allowed and completions != 1:
                problems.append(f"{row['name']} {job_id}: completed {completions} times")
            elif not reruns_allowed and started_after:
                problems.append(f"{row['name']} {job_id}: started again after it completed")
        parent_started = first(parent["id"], "active")
        for step in flow.steps:
            done_at = first(step["id"], "completed")
            if parent_started is not None and (done_at is None or done_at > parent_started):
                problems.append(
                    f"finalize {parent['id']} started before step {step['name']} {step['id']} "
                    "completed"
                )
            if parent_started is not None and any(
                at > parent_started for at, s in events[step["id"]] if s == "active"
            ):
                problems.append(
                    f"step {step['name']} {step['id']} started again after its finalize "
                    f"{parent['id']} started"
                )
    return problems


def redis_problems(
    run: SystemRun, flows: dict[str, Flow], ledger: Ledger, redis_lost: bool
) -> list[str]:
    """The parent links in Redis, bullmq's own: each step Redis has names its ``finalize`` as
    its parent (``parentKey`` and ``parent.id``), a completed step's key is in its parent's
    ``:processed`` hash and the parent waits on nothing (``:dependencies`` empty). A flow
    rebuilt by the reconciler after Redis lost it must pass too: a step added alone, without
    its parent link, would run and leave ``finalize`` with no way to know. Without
    ``redis_lost`` Redis must have every job of every flow."""
    import redis

    assert run.info is not None
    prefix = run.info.queue_prefix
    main = run.settings.queue_name
    problems = []
    client = redis.Redis.from_url(run.info.redis_url, socket_timeout=10, decode_responses=True)
    try:
        for flow in flows.values():
            parent = flow.parent
            if parent is None:
                continue
            parent_key = f"{prefix}:{main}:{parent['id']}"
            parent_in_redis = bool(client.exists(parent_key))
            if not parent_in_redis and not redis_lost:
                problems.append(f"finalize {parent['id']}: not in Redis")
            processed_flow = flow.upload_id not in ledger.expect_failed
            if processed_flow and parent_in_redis and client.scard(f"{parent_key}:dependencies"):
                problems.append(f"finalize {parent['id']}: still has dependencies in Redis")
            processed = set(client.hkeys(f"{parent_key}:processed")) if parent_in_redis else set()
            for step in flow.steps:
                key = f"{prefix}:{step['queue']}:{step['id']}"
                fields = client.hmget(key, "parentKey", "parent", "finishedOn")
                if fields[0] is None and fields[1] is None and not client.exists(key):
                    if not redis_lost:
                        problems.append(f"step {step['id']}: not in Redis")
                    continue
                link = json.loads(fields[1]) if fields[1] else {}
                if fields[0] != parent_key or link.get("id") != parent["id"]:
                    problems.append(
                        f"step {step['id']}: parent link {fields[0]!r} {link!r} in Redis, "
                        f"not {parent_key}"
                    )
                elif parent_in_redis and step["state"] == "completed" and key not in processed:
                    problems.append(f"step {step['id']}: not in {parent_key}:processed")
    finally:
        client.close()
    return problems


def output_problems(run: SystemRun, ledger: Ledger, flows: dict[str, Flow]) -> list[str]:
    """S3 has, under ``processed/<owner>/``, each upload's ``result.json`` and each step's
    outputs (the ``*_key`` values of the steps' results) and nothing else. Every version of a
    ``result.json`` (a re-run of ``finalize`` writes one more) says what the rows say: the
    upload, its ``finalize`` job, and each step by name with its job id and its result (only
    ``finalizedAt`` may differ); every version of a manifest has the sha256 of the bytes sent,
    and so has the ``inspect`` step's result."""
    from offload_local import aws_resources

    assert run.info is not None
    s3 = aws_resources.client("s3", run.info.moto_endpoint)
    bucket = run.info.bucket

    def versions_of(prefix: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = defaultdict(list)
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            for version in page.get("Versions", []):
                found[version["Key"]].append(version["VersionId"])
        return found

    def read(key: str, version_id: str) -> Any:
        body = s3.get_object(Bucket=bucket, Key=key, VersionId=version_id)["Body"].read()
        return json.loads(body)

    problems = []
    expected: set[str] = set()
    for flow in flows.values():
        if flow.parent is None:
            continue
        data = ledger.uploads[flow.upload_id]
        digest = hashlib.sha256(data).hexdigest()
        steps = {row["name"]: {"jobId": row["id"], "result": row["result"]} for row in flow.steps}
        wanted = {
            "uploadId": flow.upload_id,
            "owner": flow.upload["owner"],
            "key": flow.upload["key"],
            "steps": steps,
            "finalizeJobId": flow.parent["id"],
        }
        if flow.upload_id not in ledger.expect_failed:
            expected.add(flow.result_key)
        for step in flow.steps:
            result = step["result"] or {}
            expected.update(v for k, v in result.items() if k.endswith("_key"))
            if step["name"] == "inspect" and result.get("sha256") != digest:
                problems.append(f"inspect {step['id']}: sha256 {result.get('sha256')!r}")
            if result.get("manifest_key"):
                for version_id in versions_of(result["manifest_key"]).get(
                    result["manifest_key"], []
                ):
                    if read(result["manifest_key"], version_id)["sha256"] != digest:
                        problems.append(f"{result['manifest_key']}: a version with another sha256")
        versions = versions_of(flow.result_key).get(flow.result_key, [])
        if flow.upload_id in ledger.expect_failed:
            problems += [f"{flow.result_key}: written for a flow that failed" for _ in versions[:1]]
            continue
        if not versions:
            problems.append(f"upload {flow.upload_id}: no {flow.result_key}")
        for version_id in versions:
            document = read(flow.result_key, version_id)
            seen = {
                "uploadId": document.get("uploadId"),
                "owner": document.get("owner"),
                "key": (document.get("source") or {}).get("key"),
                "steps": document.get("steps"),
                "finalizeJobId": document.get("finalizeJobId"),
            }
            if seen != wanted:
                problems.append(f"{flow.result_key} ({version_id}): {seen!r}, not {wanted!r}")
    owners = {flow.upload["owner"] for flow in flows.values()}
    for owner in owners:
        problems += [
            f"unexpected output {key}"
            for key in versions_of(f"processed/{owner}/")
            if key not in expected
        ]
    return problems


def flow_problems(
    run: SystemRun,
    ledger: Ledger,
    *,
    reruns_allowed: bool = False,
    redis_lost: bool = False,
) -> list[str]:
    """Every flow invariant above, for every upload of the ledger."""
    flows = read_flows(run, ledger)
    problems = shape_problems(flows, ledger)
    problems += event_problems(run, flows, ledger, reruns_allowed)
    problems += redis_problems(run, flows, ledger, redis_lost)
    problems += output_problems(run, ledger, flows)
    return problems


def flow_figures(run: SystemRun, ledger: Ledger, states: dict[str, JobState]) -> dict[str, int]:
    """How the flows ended and how many the reconciler put back (a job of theirs re-enqueued)."""
    flows = read_flows(run, ledger)
    flow_jobs = {job_id: flow.upload_id for flow in flows.values() for job_id in flow.job_ids}
    requeued = run.sql(
        "SELECT DISTINCT job_id FROM job_events WHERE job_id = ANY(%s) AND message LIKE %s",
        (list(flow_jobs), REQUEUED),
    )
    return {
        "uploads": len(flows),
        "uploads_processed": sum(f.upload["state"] == "processed" for f in flows.values()),
        "uploads_failed": sum(f.upload["state"] == "failed" for f in flows.values()),
        "flow_jobs": len(flow_jobs),
        "flow_jobs_completed_more_than_once": sum(
            states[j].completed_events > 1 for j in flow_jobs if j in states
        ),
        "flows_requeued_by_reconciler": len({flow_jobs[row["job_id"]] for row in requeued}),
    }
