"""What use costs: per 1,000 uploads of a given size, and per month for a stated workload.

The per-upload counts follow the code's own flow (docs/design.md): the client creates the
upload (one API call), sends the bytes straight to S3 (one presigned POST up to
``single_upload_max_bytes``, else a multipart upload of ``part_size`` parts), completes it and
reads its status; S3's event goes through SQS to the enqueue Lambda; a worker reads the object
once, writes its outputs and publishes the final state on EventBridge. Sizes and prices come
from the templates (Lambda memory, the task's vCPU/memory and concurrency, Spot share, the
lifecycle rules) and the price table; what the templates cannot say is an :class:`Assumptions`
field, printed with the report and overridable on the command line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from stacks.cost.baseline import public_ip, spot_share
from stacks.cost.model import Line
from stacks.cost.prices import Prices
from stacks.cost.templates import Templates

MiB = 1024**2
DEFAULT_WORKLOAD = "10000 uploads/day of 500 MB"
GiB = 1024**3
DAYS_PER_MONTH = 730 / 24
UPLOADS_PREFIX = "uploads/"
# Lifecycle rules skip objects under 128 KiB (the bucket's transition minimum).
TRANSITION_MINIMUM_BYTES = 128 * 1024
_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": MiB, "GIB": GiB}
_WORKLOAD = re.compile(
    r"^\s*([\d][\d,_]*)\s*uploads?\s*(?:/|per|a)\s*day\s+of\s+([\d.]+)\s*([KMG]i?B|B)\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Workload:
    uploads_per_day: int
    upload_bytes: int

    @property
    def uploads_per_month(self) -> float:
        return self.uploads_per_day * DAYS_PER_MONTH

    def __str__(self) -> str:
        return f"{self.uploads_per_day:,} uploads/day of {size_text(self.upload_bytes)}"


def size_text(size: int) -> str:
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?B|B)\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"size {text!r}: a number and a unit (500 MB, 2 GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_workload(text: str) -> Workload:
    """``"10000 uploads/day of 500 MB"`` (also ``10,000 uploads per day of 2 GiB``)."""
    match = _WORKLOAD.match(text)
    if not match:
        raise ValueError(f"workload {text!r}: say e.g. '10000 uploads/day of 500 MB'")
    count = int(re.sub(r"[,_]", "", match.group(1)))
    size = int(float(match.group(2)) * _UNITS[match.group(3).upper()])
    if count < 1 or size < 1:
        raise ValueError(f"workload {text!r}: at least one upload of at least one byte")
    return Workload(uploads_per_day=count, upload_bytes=size)


@dataclass(frozen=True, kw_only=True)
class Assumptions:
    """What the templates cannot say. Defaults: the runtime's own defaults (restated, not
    imported: this tool imports no runtime code) or stated estimates."""

    # offload/settings.py defaults: OFFLOAD_SINGLE_UPLOAD_MAX_BYTES, OFFLOAD_PART_SIZE_MIB
    single_upload_max_bytes: int = 100 * MiB
    part_size_bytes: int = 16 * MiB
    # create + complete + two status reads (the page polls until processed)
    api_calls_per_upload: int = 4
    api_call_seconds: float = 0.2
    enqueue_seconds: float = 0.3
    # processing speed of one job slot: bench/README.md measures ~1 GB/s of inspect against a
    # local S3; real S3 gives 100-250 MB/s per stream, so 100 MB/s is the conservative side.
    processing_mb_per_s: float = 100.0
    job_overhead_seconds: float = 2.0
    outputs_per_upload: int = 2  # result.json and the step outputs, small (not transitioned)
    s3_reads_per_upload: int = 3  # enqueue HEAD, worker HEAD + GET
    sqs_requests_per_upload: int = 3  # S3's send, the poller's receive and delete
    events_per_upload: int = 1  # Upload Processed / Upload Failed
    log_kb_per_upload: float = 10.0
    keep_days: int = 365  # objects are never expired by the stacks: a year's storage

    def describe(self) -> list[str]:
        return [f"{f.name} = {getattr(self, f.name)}" for f in fields(self)]


@dataclass(frozen=True)
class Facts:
    """What the templates say about the cost of one upload."""

    api_memory_gb: float
    enqueue_memory_gb: float
    task_vcpu: float
    task_gb: float
    concurrency: int
    spot: float
    public_ip: bool
    standard_days: int
    archive_class: str
    max_tasks: int


def facts(t: Templates) -> Facts:
    memory = {}
    for fn in t.resources("AWS::Lambda::Function"):
        handler = str(fn.properties.get("Handler", ""))
        memory[handler] = int(fn.properties.get("MemorySize", 128)) / 1024
    task = next(t.resources("AWS::ECS::TaskDefinition"))
    env = {
        e["Name"]: e["Value"]
        for c in task.properties["ContainerDefinitions"]
        for e in c.get("Environment", [])
    }
    service = next(t.resources("AWS::ECS::Service"))
    target = next(t.resources("AWS::ApplicationAutoScaling::ScalableTarget"))
    standard_days, archive = 10**9, "STANDARD"
    for bucket in t.resources("AWS::S3::Bucket"):
        for rule in bucket.properties.get("LifecycleConfiguration", {}).get("Rules", []):
            if rule.get("Prefix") == UPLOADS_PREFIX and rule.get("Transitions"):
                first = rule["Transitions"][0]
                standard_days, archive = int(first["TransitionInDays"]), first["StorageClass"]
    return Facts(
        api_memory_gb=memory["lambdas.api.handler"],
        enqueue_memory_gb=memory["lambdas.enqueue.handler"],
        task_vcpu=int(task.properties["Cpu"]) / 1024,
        task_gb=int(task.properties["Memory"]) / 1024,
        concurrency=int(env.get("OFFLOAD_CONCURRENCY", 1)),
        spot=spot_share(service.properties),
        public_ip=public_ip(service.properties),
        standard_days=standard_days,
        archive_class=archive,  # CloudFormation's names are the table's
        max_tasks=int(target.properties["MaxCapacity"]),
    )


def s3_puts(size: int, a: Assumptions) -> int:
    if size <= a.single_upload_max_bytes:
        return 1
    return math.ceil(size / a.part_size_bytes) + 2  # create, the parts, complete


def job_seconds(size: int, a: Assumptions) -> float:
    return size / (a.processing_mb_per_s * 1000**2) + a.job_overhead_seconds


def storage_days(f: Facts, a: Assumptions) -> tuple[int, int]:
    """Days in STANDARD and (billed) days in the archive class over ``keep_days``."""
    standard = min(f.standard_days, a.keep_days)
    archived = a.keep_days - standard
    return standard, archived


def per_thousand(size: int, t: Templates, p: Prices, a: Assumptions | None = None) -> list[Line]:
    """The cost of 1,000 uploads of ``size`` bytes, from upload to ``keep_days`` of storage."""
    a = a or Assumptions()
    f = facts(t)
    n = 1000
    gb = size / GiB
    standard, archived = storage_days(f, a)
    transitions = archived > 0 and size >= TRANSITION_MINIMUM_BYTES
    if transitions:
        archived = max(archived, int(p.get("s3", "minimumDays", f.archive_class)))
    task_hours = n * job_seconds(size, a) / f.concurrency / 3600
    vcpu_price = (1 - f.spot) * p.price("fargate", "vcpuHour") + f.spot * p.price(
        "fargate", "spotVcpuHour"
    )
    gb_price = (1 - f.spot) * p.price("fargate", "gbHour") + f.spot * p.price(
        "fargate", "spotGbHour"
    )
    lambda_calls = a.api_calls_per_upload + 1
    lines = [
        Line(
            item="S3 PUT/POST requests (upload parts, outputs)",
            count=n * (s3_puts(size, a) + a.outputs_per_upload) / 1000,
            unit_price=p.price("s3", "putPer1000"),
            quantity=1,
            unit="1k requests",
        ),
        Line(
            item="S3 GET/HEAD requests",
            count=n * a.s3_reads_per_upload / 1000,
            unit_price=p.price("s3", "getPer1000"),
            quantity=1,
            unit="1k requests",
        ),
        Line(
            item=f"S3 STANDARD storage ({standard} days)",
            count=n * gb * standard / DAYS_PER_MONTH,
            unit_price=p.price("s3", "gbMonth", "STANDARD"),
            quantity=1,
            unit="GB-month",
        ),
    ]
    if transitions:
        lines += [
            Line(
                item=f"S3 lifecycle transitions to {f.archive_class}",
                count=n / 1000,
                unit_price=p.price("s3", "transitionPer1000", f.archive_class),
                quantity=1,
                unit="1k requests",
            ),
            Line(
                item=f"S3 {f.archive_class} storage ({archived} days billed)",
                count=n * gb * archived / DAYS_PER_MONTH,
                unit_price=p.price("s3", "gbMonth", f.archive_class),
                quantity=1,
                unit="GB-month",
            ),
        ]
    lines += [
        Line(
            item=f"Lambda requests ({a.api_calls_per_upload} API calls + 1 enqueue)",
            count=n * lambda_calls / 1e6,
            unit_price=p.price("lambda", "perMillionRequests"),
            quantity=1,
            unit="M requests",
        ),
        Line(
            item="Lambda compute (API and enqueue)",
            count=n
            * (
                a.api_calls_per_upload * a.api_call_seconds * f.api_memory_gb
                + a.enqueue_seconds * f.enqueue_memory_gb
            ),
            unit_price=p.price("lambda", "gbSecond"),
            quantity=1,
            unit="GB-s",
        ),
        Line(
            item="API Gateway REST requests",
            count=n * a.api_calls_per_upload / 1e6,
            unit_price=p.price("apigateway", "restPerMillionRequests"),
            quantity=1,
            unit="M requests",
        ),
        Line(
            item="SQS requests (S3 events)",
            count=n * a.sqs_requests_per_upload / 1e6,
            unit_price=p.price("sqs", "perMillionRequests"),
            quantity=1,
            unit="M requests",
        ),
        Line(
            item=f"Fargate vCPU ({job_seconds(size, a):.1f} s a job at "
            f"{a.processing_mb_per_s:g} MB/s, {f.concurrency} jobs a task)",
            count=task_hours * f.task_vcpu,
            unit_price=vcpu_price,
            quantity=1,
            unit="vCPU-h",
        ),
        Line(
            item="Fargate memory",
            count=task_hours * f.task_gb,
            unit_price=gb_price,
            quantity=1,
            unit="GB-h",
        ),
    ]
    if f.public_ip:
        lines.append(
            Line(
                item="public IPv4 of the running worker tasks",
                count=task_hours,
                unit_price=p.price("vpc", "publicIpv4Hour"),
                quantity=1,
                unit="h",
            )
        )
    lines += [
        Line(
            item="EventBridge events (final state)",
            count=n * a.events_per_upload / 1e6,
            unit_price=p.price("eventbridge", "perMillionCustomEvents"),
            quantity=1,
            unit="M events",
        ),
        Line(
            item=f"CloudWatch Logs ingestion ({a.log_kb_per_upload:g} KB an upload)",
            count=n * a.log_kb_per_upload * 1000 / 1000**3,
            unit_price=p.price("cloudwatch", "logsIngestGb"),
            quantity=1,
            unit="GB",
        ),
        Line(
            item="X-Ray traces (API calls and enqueue)",
            count=n * lambda_calls / 1e6,
            unit_price=p.price("xray", "perMillionTracesRecorded"),
            quantity=1,
            unit="M traces",
        ),
    ]
    return lines


def monthly(
    workload: Workload, t: Templates, p: Prices, a: Assumptions | None = None
) -> list[Line]:
    """A month of the workload once it has run for ``keep_days``: the per-1,000 lines scaled
    to the month's uploads, except storage, which is the stock then held (STANDARD for the
    days before the transition, the archive class after)."""
    a = a or Assumptions()
    f = facts(t)
    scale = workload.uploads_per_month / 1000
    lines = []
    for line in per_thousand(workload.upload_bytes, t, p, a):
        if "storage" in line.item:
            continue
        lines.append(Line(**{**line.__dict__, "count": line.count * scale}))
    standard, archived = storage_days(f, a)
    daily_gb = workload.uploads_per_day * workload.upload_bytes / GiB
    lines.append(
        Line(
            item=f"S3 STANDARD storage held ({standard} days of uploads)",
            count=daily_gb * standard,
            unit_price=p.price("s3", "gbMonth", "STANDARD"),
            quantity=1,
            unit="GB-month",
        )
    )
    if archived:
        lines.append(
            Line(
                item=f"S3 {f.archive_class} storage held (day {standard + 1} to {a.keep_days})",
                count=daily_gb * archived,
                unit_price=p.price("s3", "gbMonth", f.archive_class),
                quantity=1,
                unit="GB-month",
            )
        )
    return lines


def average_tasks(workload: Workload, t: Templates, a: Assumptions | None = None) -> float:
    a = a or Assumptions()
    f = facts(t)
    busy_hours = (
        workload.uploads_per_month * job_seconds(workload.upload_bytes, a) / f.concurrency / 3600
    )
    return busy_hours / 730
