"""Processors for tests and benchmarks, loaded with OFFLOAD_PROCESSOR_MODULES.

Jobs carry references only, so a test processor reads its parameter from the job's key
(e.g. ``sleep`` with key ``"1.5"`` sleeps 1.5 s).
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from fargate_worker.context import JobContext
from fargate_worker.errors import PermanentJobError, S3AccessRefused
from fargate_worker.processors import processor
from fargate_worker.processors.outputs import output_key


@processor("noop")
@processor("noop_too")  # a second step of a test pipeline
def noop(ctx: JobContext) -> dict:
    return {"ok": True}


@processor("sleep")
def sleep(ctx: JobContext) -> dict:
    time.sleep(float(ctx.ref.key))
    return {"slept": float(ctx.ref.key)}


@processor("timed")
@processor("step_capped")
@processor("step_rated")
def timed(ctx: JobContext) -> dict:
    """Sleeps ``key`` seconds and says when it ran: the step-limit tests measure parallelism
    and rate from these (the step names are limited by OFFLOAD_STEP_LIMITS in those tests)."""
    start = time.time()
    time.sleep(float(ctx.ref.key))
    return {"start": start, "end": time.time()}


@processor("cpu")
def cpu(ctx: JobContext) -> dict:
    """Pure-Python work holding the GIL for ``key`` seconds."""
    deadline = time.monotonic() + float(ctx.ref.key)
    count = 0
    while time.monotonic() < deadline:
        count += sum(i * i for i in range(1000))
    return {"count": count}


@processor("fail_always")
def fail_always(ctx: JobContext) -> dict:
    raise ValueError(f"poison job {ctx.job_id} attempt {ctx.attempt}")


@processor("fail_slowly_when_retried")
def fail_slowly_when_retried(ctx: JobContext) -> dict:
    """Fails at once on attempt 1, and after ``key`` seconds on later attempts: a retried job
    still in flight for that long."""
    if ctx.attempt > 1:
        time.sleep(float(ctx.ref.key))
    raise ValueError(f"poison job {ctx.job_id} attempt {ctx.attempt}")


@processor("fail_with_nul")
def fail_with_nul(ctx: JobContext) -> dict:
    """An error quoting binary input: PostgreSQL text cannot hold its NUL byte."""
    raise ValueError("bad header: PNG\x00\x00 where text was expected")


@processor("fail_with_surrogate")
def fail_with_surrogate(ctx: JobContext) -> dict:
    """An error quoting an undecodable file name (``os`` gives its bytes as lone surrogates),
    which UTF-8, and so PostgreSQL text, cannot hold."""
    raise ValueError("cannot read caf\udce9.txt")


@processor("fail_until")
def fail_until(ctx: JobContext) -> dict:
    """Fails until attempt number ``key``, then succeeds."""
    if ctx.attempt < int(ctx.ref.key):
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@processor("crash_until")
def crash_until(ctx: JobContext) -> dict:
    """The child SIGKILLs itself until attempt ``key`` (a crash, not an exception)."""
    if ctx.attempt < int(ctx.ref.key):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempt": ctx.attempt}


@processor("slow_until")
def slow_until(ctx: JobContext) -> dict:
    """Sleeps a minute on attempts below ``key`` (long enough for a test to kill its worker),
    then returns at once."""
    if ctx.attempt < int(ctx.ref.key):
        time.sleep(60)
    return {"attempt": ctx.attempt}


@processor("gated_by_attempt")
def gated_by_attempt(ctx: JobContext) -> dict:
    """Waits until the file ``go-<attempt>`` exists in the directory named by the bucket, then
    reports progress and returns: lets a test decide when each attempt ends."""
    gate = Path(ctx.ref.bucket) / f"go-{ctx.attempt}"
    while not gate.exists():
        time.sleep(0.05)
    ctx.report_progress(50)
    return {"attempt": ctx.attempt}


@processor("fail_permanently")
def fail_permanently(ctx: JobContext) -> dict:
    raise PermanentJobError(f"not an image: {ctx.ref.key}")


@processor("fail_first_attempt_for_good")
def fail_first_attempt_for_good(ctx: JobContext) -> dict:
    """Fails for good on its first attempt, succeeds on any later one (a user's retry): a
    pipeline step whose retry repairs the pipeline."""
    if ctx.attempt == 1:
        raise PermanentJobError("refused on the first attempt")
    return {"attempt": ctx.attempt}


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# Results by name: what PostgreSQL's jsonb (and strict JSON readers such as Node's) can keep,
# and what it cannot: an object JSON has no form for, or values Python's json writes anyway.
RESULTS = {
    "set": lambda: {"tags": {"a", "b"}},
    "nan": lambda: {"ratio": float("nan")},
    "infinity": lambda: {"ratio": float("inf")},
    "nul": lambda: {"text": "PNG\x00header"},
    "surrogate": lambda: {"name": "caf\udce9.txt"},  # an undecodable file name, as os gives it
    "deep": lambda: _nested(100_000),
    "escaped_nul_text": lambda: {"text": "a \\u0000 in the text, and \\\\u0000"},
}


@processor("returns")
def returns(ctx: JobContext) -> object:
    """Returns the result named by the job's key (see RESULTS)."""
    return RESULTS[ctx.ref.key]()


@processor("loaded")
def loaded(ctx: JobContext) -> dict:
    """Whether the module named by ``key`` was loaded in this child before its job ran."""
    return {"loaded": ctx.ref.key in sys.modules}


@processor("memory_error")
def memory_error(ctx: JobContext) -> dict:
    if ctx.attempt < int(ctx.ref.key):
        raise MemoryError("simulated out of memory")
    return {"attempt": ctx.attempt}


@processor("allocate")
def allocate(ctx: JobContext) -> dict:
    """Touches ``key`` MiB (a decoder fed a bomb), then reports the child's limits."""
    block = bytearray(int(ctx.ref.key) * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    with open("/proc/self/status") as status:
        no_new_privs = next(line.split()[1] for line in status if line.startswith("NoNewPrivs"))
    return {
        "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
        "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
        "no_new_privs": no_new_privs,
    }


@processor("environment")
def environment(ctx: JobContext) -> dict:
    """What a processor (or the hostile file it parses) can find of the worker's secrets: the
    environment as Python sees it, the one the kernel shows, and the settings it was given."""
    with open("/proc/self/environ", "rb") as raw:
        kernel = [entry.decode(errors="replace") for entry in raw.read().split(b"\0") if entry]
    return {
        "names": sorted(os.environ),
        "kernel_environ": kernel,
        "settings": {
            "redis_url": ctx.settings.redis_url,
            "redis_auth_token": ctx.settings.redis_auth_token,
            "database_url": ctx.settings.database_url,
            "database_secret_arn": ctx.settings.database_secret_arn,
        },
    }


def _parent_of(pid: int) -> int:
    """From /proc/<pid>/stat, which every process may read, dumpable or not; -1 for a process
    gone since /proc was listed."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return -1


def _try_to_read(pid: int, what: str) -> str:
    """``refused`` when the kernel refuses to open /proc/<pid>/<what> (ptrace access check),
    else what was read: the variable names of an environment, the size of a memory read."""
    try:
        with open(f"/proc/{pid}/{what}", "rb") as file:
            if what == "environ":
                names = [entry.split(b"=")[0].decode() for entry in file.read().split(b"\0")]
                return "read: " + " ".join(sorted(name for name in names if name))
            with open(f"/proc/{pid}/maps") as maps:
                start = int(maps.readline().split("-")[0], 16)
            file.seek(start)
            return f"read: {len(file.read(4096))} bytes"
    except PermissionError:
        return "refused"
    except OSError as exc:
        return f"error: {exc!r}"


def _s3_attempt(call: Any) -> str:
    try:
        response = call()
    except S3AccessRefused:
        return "refused"
    except Exception as exc:
        return f"error: {exc!r}"
    body = response.get("Body")
    return f"read: {body.read()!r}" if body is not None else "written"


@processor("snoop")
def snoop(ctx: JobContext) -> dict:
    """What a compromised child reaches: the memory and environment of its worker, of its
    parent (the fork server) and of its sibling children through /proc; AWS credentials in its
    environment (a client made from it lists the bucket?); S3 objects beyond its job's object
    and outputs (the job's key is an upload's; ``uploads/other-user/up-2/secret.bin`` exists in
    the same bucket)."""
    ref = ctx.ref
    fork_server = os.getppid()
    siblings = [
        int(name)
        for name in os.listdir("/proc")
        if name.isdigit() and int(name) != os.getpid() and _parent_of(int(name)) == fork_server
    ]
    targets = {"worker": _parent_of(fork_server), "fork server": fork_server}
    targets |= {f"sibling {n}": pid for n, pid in enumerate(siblings)}
    proc = {
        f"{role} {what}": _try_to_read(pid, what)
        for role, pid in targets.items()
        for what in ("environ", "mem")
    }
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=ctx.settings.s3_endpoint_url)
        client.list_objects_v2(Bucket=ref.bucket)
        own_credentials = "listed the bucket"
    except Exception as exc:
        own_credentials = type(exc).__name__
    other = "uploads/other-user/up-2/secret.bin"
    s3 = {
        "read own object": _s3_attempt(lambda: ctx.s3.get_object(Bucket=ref.bucket, Key=ref.key)),
        "read another object": _s3_attempt(lambda: ctx.s3.get_object(Bucket=ref.bucket, Key=other)),
        "write own output": _s3_attempt(
            lambda: ctx.s3.put_object(
                Bucket=ref.bucket,
                Key=output_key(ref.key, "snoop.txt"),
                Body=b"snooped",
                ContentType="text/plain",
            )
        ),
        "write elsewhere": _s3_attempt(
            lambda: ctx.s3.put_object(Bucket=ref.bucket, Key=other, Body=b"overwritten")
        ),
    }
    environment = sorted(name for name in os.environ if name.startswith(("AWS_", "ECS_")))
    return {
        "uid": os.getuid(),
        "siblings": len(siblings),
        "proc": proc,
        "aws_environment": environment,
        "own_credentials": own_credentials,
        "s3": s3,
    }


class _TouchesWhenUnpickled:
    """A pickle that creates a file where it is loaded: code of the child's choosing."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


@processor("pickle_to_the_worker")
def pickle_to_the_worker(ctx: JobContext) -> dict:
    """A compromised child writing its own message to the worker's pipe: a pickle that, if the
    worker loaded it, would create the file named by the bucket in the worker."""
    import gc
    from multiprocessing.connection import Connection

    conn = next(o for o in gc.get_objects() if isinstance(o, Connection) and not o.closed)
    conn.send(_TouchesWhenUnpickled(ctx.ref.bucket))
    time.sleep(2)  # the worker reads it while this job still runs
    return {"sent": True}


@processor("quick_progress")
def quick_progress(ctx: JobContext) -> dict:
    """Reports progress as an inspect of a small file does, and is done at once."""
    ctx.report_progress(99)
    ctx.report_progress(100)
    return {"done": True}


@processor("progress")
def progress(ctx: JobContext) -> dict:
    """10, 50 and 90 over 2.4 s: long enough for the worker's one write a second (at 1 s and
    2 s) to show 50, then 90, while the job runs."""
    for percent, then_sleep in ((10, 0.6), (50, 0.6), (90, 1.2)):
        ctx.report_progress(percent)
        time.sleep(then_sleep)
    return {"done": True}


@processor("ticker")
def ticker(ctx: JobContext) -> dict:
    """Appends a line to the file named by the bucket every 50 ms for ``key`` seconds: lets a
    test see whether a child keeps writing after its worker died."""
    path = Path(ctx.ref.bucket)
    deadline = time.monotonic() + float(ctx.ref.key)
    while time.monotonic() < deadline:
        with path.open("a") as out:
            out.write(f"{os.getpid()} {ctx.attempt} {time.time()}\n")
        time.sleep(0.05)
    return {"ticked": True}


@processor("gated")
def gated(ctx: JobContext) -> dict:
    """Runs until a file ``go`` exists in the directory named by the bucket, then appends
    ``<job id> <attempt> <time>`` to ``done.log`` there: the test decides when the work ends
    (e.g. during an outage) and sees when it did, however loaded the machine is."""
    directory = Path(ctx.ref.bucket)
    while not (directory / "go").exists():
        time.sleep(0.02)
    with (directory / "done.log").open("a") as out:
        out.write(f"{ctx.job_id} {ctx.attempt} {time.time()}\n")
    return {"attempt": ctx.attempt}


@processor("logged")
def logged(ctx: JobContext) -> dict:
    """Sleeps (``sleep/<seconds>/<n>``) or holds the CPU (``cpu/<seconds>/<n>``) as its key says,
    and appends ``start`` and ``done`` lines (job id, attempt, pid, time) to the file named by
    the bucket: system tests count the runs that really finished against the completions the
    status rows show. ``<n>`` only makes the key, and so the job id, unique."""
    kind, seconds, _ = ctx.ref.key.split("/", 2)
    path = Path(ctx.ref.bucket)

    def line(what: str) -> None:
        with path.open("a") as out:  # one short write: O_APPEND keeps lines whole
            out.write(f"{what} {ctx.job_id} {ctx.attempt} {os.getpid()} {time.time():.3f}\n")

    line("start")
    deadline = time.monotonic() + float(seconds)
    if kind == "cpu":
        while time.monotonic() < deadline:
            sum(i * i for i in range(1000))
    else:
        time.sleep(float(seconds))
    line("done")
    return {"kind": kind, "seconds": float(seconds)}


def _internal_names(ctx: JobContext) -> str:
    """A text naming what a job's user must never read: the bucket, ARNs, an account id, a
    presigned URL, an AWS host (as botocore's and other libraries' messages do)."""
    bucket, key = ctx.ref.bucket, ctx.ref.key
    return (
        f"cannot write s3://{bucket}/{key}: User: arn:aws:sts::123456789012:assumed-role/w/i-0"
        f" is not authorized on arn:aws:s3:::{bucket}/{key}"
        f" (https://{bucket}.s3.us-east-1.amazonaws.com/{key}?X-Amz-Signature=abc, account"
        f" 123456789012, bucket {bucket})"
    )


@processor("fail_naming_internals")
def fail_naming_internals(ctx: JobContext) -> dict:
    raise RuntimeError(_internal_names(ctx))


@processor("fail_permanently_naming_internals")
def fail_permanently_naming_internals(ctx: JobContext) -> dict:
    """A processor's own permanent error that quotes too much."""
    raise PermanentJobError(f"not an image: {_internal_names(ctx)}")


@processor("fail_with_client_error")
def fail_with_client_error(ctx: JobContext) -> dict:
    """An S3 refusal as botocore raises it (AccessDenied names the role, bucket and key)."""
    from botocore.exceptions import ClientError

    error = {"Code": "AccessDenied", "Message": _internal_names(ctx)}
    raise ClientError({"Error": error}, "PutObject")


@processor("fail_with_sql_error")
def fail_with_sql_error(ctx: JobContext) -> dict:
    """A PostgreSQL error as psycopg raises it: its text quotes the statement."""
    import psycopg

    raise psycopg.errors.UndefinedTable(
        'relation "secret_table" does not exist\nLINE 1: SELECT * FROM secret_table'
        f" -- {ctx.ref.bucket}"
    )
