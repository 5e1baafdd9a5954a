"""The load run: small uploads end to end through the whole local stack (create upload ->
presigned POST -> S3 event -> SQS -> enqueue Lambda -> the upload's flow: its steps, then
``finalize`` -> the upload ``processed``) for a while, as fast as the machine carries them,
while the status API is polled. Shared by
``tests/system/test_system_load.py`` (which asserts that nothing is lost) and
``bench/system_load.py`` (which prints the figures).

Figures:
* the rate: uploads processed per minute (an upload counts once its flow has ended it);
* S3-event-to-job-active latency: from the moment the presigned POST returned (S3 has stored
  the object and queued its event by then: moto sends the notification before it answers) to
  the job's first ``active`` event in ``job_events``; also its two legs, to the ``queued``
  event (SQS poller + enqueue Lambda) and from there to ``active`` (queue + worker); and to the
  upload's final state (its ``finished_at``: every step and ``finalize`` done);
* the status API (``GET /jobs?limit=20``) as a client sees it, polled from a process of its
  own so that the driver's threads do not delay its clock;
* CPU per upload by process kind, from psutil over every process of the stack's tree and of
  its Redis and PostgreSQL (see ``cpu_snapshot``), and per job (an upload is a flow of two or
  more jobs: its steps and ``finalize``). The driver (the "browsers") is not counted.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from offload_local.servers import MOTO_MODULE
from offload_local.stack import StackInfo
from tests.support.system_stack import SystemRun

# Process kinds, in the order the table prints them. "Ours" is what runs our code in AWS too:
# the Lambdas, the workers, PostgreSQL and Redis. Not ours: moto (the emulator of S3, SQS and
# Cognito) and the stack process, whose gateway, SQS poller and schedules stand in for API
# Gateway with its Cognito authorizer, Lambda's SQS event source and EventBridge (AWS runs
# those, and bills them by request, not by our CPU).
KINDS = {
    "api": "API Lambda containers",
    "enqueue": "enqueue Lambda container",
    "scheduled": "queue-metrics + reconciler Lambdas",
    "workers": "workers (event loop)",
    "sandbox": "sandbox children + fork server",
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "other": "other processes of the stack",
    "stack": "gateway + SQS poller + schedules (AWS's part)",
    "moto": "moto server (the AWS emulator, not ours)",
}
OURS = tuple(kind for kind in KINDS if kind not in ("stack", "moto"))
_LAMBDA_LOGS = {
    "lambda-api.log": "api",
    "lambda-enqueue.log": "enqueue",
    "lambda-queue-metrics.log": "scheduled",
    "lambda-reconciler.log": "scheduled",
}

Key = tuple[int, float]  # pid, create time: a pid the kernel reuses is another process


@dataclass
class Sample:
    kind: str
    cpu_s: float  # user + system; plus reaped children's where they are of the same kind
    parent: Key | None
    counts_reaped: bool


def _cpu(proc: psutil.Process, reaped: bool) -> float:
    times = proc.cpu_times()
    total = times.user + times.system
    if reaped:
        total += times.children_user + times.children_system
    return total


def _key(proc: psutil.Process) -> Key:
    return proc.pid, proc.create_time()


def _lambda_kind(proc: psutil.Process) -> str:
    """A Lambda container writes its output to ``lambda-<name>.log`` (fd 1)."""
    try:
        target = os.readlink(f"/proc/{proc.pid}/fd/1")
    except OSError:
        return "other"
    return _LAMBDA_LOGS.get(os.path.basename(target), "other")


def unclassified(run: SystemRun) -> list[str]:
    """Command lines of the stack's processes no kind matched (their CPU counts as "other")."""
    found = []
    for key in (k for k, sample in cpu_snapshot(run).items() if sample.kind == "other"):
        with contextlib.suppress(psutil.Error):
            found.append(" ".join(psutil.Process(key[0]).cmdline())[:200])
    return found


def cpu_snapshot(run: SystemRun) -> dict[Key, Sample]:
    """CPU seconds used so far by every process of the run, by kind. A process's reaped
    children count with it only where they are of its kind (the fork server reaps sandbox
    children, the postmaster its backends); the stack process and the workers have children of
    other kinds, which are sampled on their own."""
    found: dict[Key, Sample] = {}

    def add(proc: psutil.Process, kind: str, parent: Key | None, reaped: bool) -> None:
        with contextlib.suppress(psutil.Error):
            found[_key(proc)] = Sample(kind, _cpu(proc, reaped), parent, reaped)

    def add_tree(root: psutil.Process, kind: str, parent: Key | None) -> None:
        add(root, kind, parent, True)
        with contextlib.suppress(psutil.Error):
            root_key = _key(root)
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    add(child, kind, _key(child.parent()) if child.parent() else root_key, True)

    stack = psutil.Process(run.stack_pid)
    stack_key = _key(stack)
    add(stack, "stack", None, False)
    for child in stack.children():
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(child.cmdline())
            if MOTO_MODULE in cmdline or "moto.server" in cmdline:
                add_tree(child, "moto", stack_key)
            elif "multiprocessing.resource_tracker" in cmdline:  # the stack's own helper
                add_tree(child, "stack", stack_key)
            elif "fargate_worker" in cmdline:
                add(child, "workers", stack_key, False)
                for grandchild in child.children():
                    add_tree(grandchild, "sandbox", _key(child))
            else:
                add_tree(child, _lambda_kind(child), stack_key)
    add_tree(psutil.Process(run.redis.pid), "redis", None)
    if run.postgres is not None and run.postgres.proc is not None:
        add_tree(psutil.Process(run.postgres.proc.pid), "postgres", None)
    return found


def cpu_used(before: dict[Key, Sample], after: dict[Key, Sample]) -> dict[str, float]:
    """CPU seconds by kind between two snapshots. A process gone by ``after`` whose parent
    counts reaped children has its CPU in the parent's (all of it, so its share before
    ``before`` is taken off); one whose parent does not is lost after ``before`` (rare: a
    container or worker that died)."""
    used = dict.fromkeys(KINDS, 0.0)
    for key, sample in after.items():
        used[sample.kind] += sample.cpu_s - (before[key].cpu_s if key in before else 0.0)
    for key, sample in before.items():
        if key not in after and sample.parent in after and after[sample.parent].counts_reaped:
            used[sample.kind] -= sample.cpu_s
    return used


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the status API poller, in a process of its own ---------------------------------------------


def _poll_status(
    api_url: str, token: str, every_s: float, stop: Any, conn: Any
) -> None:  # pragma: no cover - runs in the poller process
    import urllib3

    pool = urllib3.PoolManager(maxsize=2, timeout=urllib3.Timeout(30))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.perf_counter()
        answer = pool.request("GET", api_url + "/jobs?limit=20", headers={"Authorization": token})
        latencies.append(time.perf_counter() - started)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        next_at += every_s
        stop.wait(max(0.0, next_at - time.monotonic()))
    conn.send((latencies, statuses))


class StatusPoller:
    """``GET /jobs?limit=20`` every ``every_s`` (a page's poll), from a process of its own."""

    def __init__(self, info: StackInfo, token: str, every_s: float):
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._conn, child_conn = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_poll_status,
            args=(info.api_url, token, every_s, self._stop, child_conn),
            daemon=True,
        )
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}

    def __enter__(self) -> StatusPoller:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._conn.poll(60):
            self.latencies, self.statuses = self._conn.recv()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# --- the load run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    seconds: float = 120.0  # uploads are started for this long
    uploaders: int = 6  # browsers uploading at once
    backlog: int = 24  # uploads sent but not final, at most (keeps the queue short)
    size: int = 2048  # bytes per upload
    poll_every_s: float = 0.25  # the status API's poll
    warmup: int = 12  # uploads through the whole path before anything is measured
    idle_s: float = 5.0  # baseline: the stack's CPU with nothing to do
    poll_only_s: float = 5.0  # the status API's CPU per poll, without uploads
    drain_timeout_s: float = 120.0


@dataclass
class LoadResult:
    options: LoadOptions
    uploads: int = 0
    jobs: int = 0  # the jobs of the window's uploads' flows
    seconds: float = 0.0  # first upload of the window to the last job completed
    post_done: dict[str, float] = field(default_factory=dict)  # upload id -> S3 POST sent
    sent: dict[str, bytes] = field(default_factory=dict)  # every upload (warm-up too) -> bytes
    legs: dict[str, list[float]] = field(default_factory=dict)  # latency name -> seconds
    status_latencies: list[float] = field(default_factory=list)
    status_statuses: dict[int, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU s by kind in the window
    idle_cpu_per_s: dict[str, float] = field(default_factory=dict)
    poll_cpu_s: float = 0.0  # API containers' CPU per poll
    polls: int = 0
    failed: list[str] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)  # processes counted as "other"
    load_average: tuple[float, float] = (0.0, 0.0)

    @property
    def per_minute(self) -> float:
        return 60 * self.uploads / self.seconds if self.seconds else float("nan")

    def ms_per_upload(self, kind: str) -> float:
        return 1000 * self.cpu.get(kind, 0.0) / self.uploads if self.uploads else float("nan")

    def net_ms_per_upload(self, kind: str) -> float:
        """Without the idle baseline and, for the API, without the status polls."""
        if not self.uploads:
            return float("nan")
        net = self.cpu.get(kind, 0.0) - self.idle_cpu_per_s.get(kind, 0.0) * self.seconds
        if kind == "api":
            net -= self.poll_cpu_s * self.polls
        return 1000 * net / self.uploads

    @property
    def ours_ms(self) -> float:
        return sum(self.ms_per_upload(kind) for kind in OURS)

    @property
    def jobs_per_upload(self) -> float:
        return self.jobs / self.uploads if self.uploads else float("nan")

    @property
    def ours_ms_per_job(self) -> float:
        """Ours per job of the uploads' flows: the whole path's CPU (the API's upload, the
        enqueue's ranged GET and flow, each job's run) spread over the jobs."""
        return self.ours_ms / self.jobs_per_upload if self.jobs else float("nan")

    @property
    def ours_net_ms(self) -> float:
        return sum(self.net_ms_per_upload(kind) for kind in OURS)


def _finished(run: SystemRun) -> int:
    """Uploads in a final state: their flow (every step, then ``finalize``) has ended them."""
    return run.sql("SELECT count(*) AS n FROM uploads WHERE state IN ('processed', 'failed')")[0][
        "n"
    ]


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s:.0f}s: {what}")
        time.sleep(0.1)


def _upload_one(run: SystemRun, index: int, size: int, sent: dict[str, bytes]) -> tuple[str, float]:
    data = (f"{index},{time.time()}," * (size // 16 + 1)).encode()[:size]
    upload_id, sent_at = run.timed_upload(data, f"load-{index}.csv")
    sent[upload_id] = data
    return upload_id, sent_at


def run_load(run: SystemRun, options: LoadOptions) -> LoadResult:
    result = LoadResult(options)
    load_before = os.getloadavg()[0]
    counter = iter(range(10**9))
    lock = threading.Lock()

    # Warm-up: every container, pool and sandbox child has served the path once.
    for _ in range(options.warmup):
        _upload_one(run, next(counter), options.size, result.sent)
    _wait(lambda: _finished(run) >= options.warmup, 120, "the warm-up uploads")
    base = _finished(run)

    # Baselines: idle, then polls only.
    before = cpu_snapshot(run)
    time.sleep(options.idle_s)
    idle = cpu_used(before, cpu_snapshot(run))
    result.idle_cpu_per_s = {kind: used / options.idle_s for kind, used in idle.items()}
    before = cpu_snapshot(run)
    with StatusPoller(run.info, run.api.token, options.poll_every_s) as poller:  # type: ignore[arg-type]
        time.sleep(options.poll_only_s)
    poll_only = cpu_used(before, cpu_snapshot(run))
    idle_api = result.idle_cpu_per_s["api"] * options.poll_only_s
    if poller.latencies:
        result.poll_cpu_s = max(0.0, poll_only["api"] - idle_api) / len(poller.latencies)

    # The window: uploads as fast as the pipeline takes them, the status API polled.
    sent = 0
    finished = 0  # uploads of the window final, as last counted
    stop_at = 0.0
    done = threading.Event()

    def count_finished() -> None:
        """One count query every 0.2 s for all uploaders (its PostgreSQL CPU is in the
        figures: about 0.1 ms a query)."""
        nonlocal finished
        while not done.wait(0.2):
            finished = _finished(run) - base

    def uploader() -> None:
        nonlocal sent
        while time.monotonic() < stop_at:
            if sent - finished >= options.backlog:
                time.sleep(0.02)
                continue
            with lock:
                sent += 1
                index = next(counter)
            try:
                upload_id, sent_at = _upload_one(run, index, options.size, result.sent)
            except Exception as exc:  # counted, never lost silently
                with lock:
                    result.failed.append(f"upload {index}: {exc}")
                continue
            with lock:
                result.post_done[upload_id] = sent_at

    before = cpu_snapshot(run)
    started = time.monotonic()
    stop_at = started + options.seconds
    with StatusPoller(run.info, run.api.token, options.poll_every_s) as poller:  # type: ignore[arg-type]
        counter_thread = threading.Thread(target=count_finished)
        counter_thread.start()
        threads = [threading.Thread(target=uploader) for _ in range(options.uploaders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(options.seconds + 120)
        done.set()
        counter_thread.join(10)
        result.uploads = len(result.post_done)
        _wait(
            lambda: _finished(run) - base >= result.uploads,
            options.drain_timeout_s,
            f"the {result.uploads} uploads' flows",
        )
        result.seconds = time.monotonic() - started
    result.cpu = cpu_used(before, cpu_snapshot(run))
    result.status_latencies, result.status_statuses = poller.latencies, poller.statuses
    result.polls = len(poller.latencies)
    result.legs = _latencies(run, result.post_done)
    if result.post_done:
        result.jobs = run.sql(
            "SELECT count(*) AS n FROM jobs WHERE upload_id = ANY(%s)", (list(result.post_done),)
        )[0]["n"]
    result.unclassified = unclassified(run)
    result.load_average = (load_before, os.getloadavg()[0])
    return result


def _latencies(run: SystemRun, post_done: dict[str, float]) -> dict[str, list[float]]:
    """From ``job_events`` and the uploads' ``finished_at`` (PostgreSQL's clock, the same
    host's as the driver's). An upload's ``queued`` and ``active`` are its flow's first (the
    flow's rows are written together; the first job active is a step)."""
    legs: dict[str, list[float]] = {
        "event_to_queued": [],
        "queued_to_active": [],
        "event_to_active": [],
        "event_to_processed": [],
    }
    rows = run.sql(
        "SELECT j.upload_id, e.state, extract(epoch FROM min(e.at))::float8 AS at"
        " FROM jobs j JOIN job_events e ON e.job_id = j.id"
        " WHERE j.upload_id = ANY(%s) AND e.state IN ('queued', 'active')"
        " GROUP BY j.upload_id, e.state",
        (list(post_done),),
    )
    at: dict[str, dict[str, float]] = {}
    for row in rows:
        at.setdefault(row["upload_id"], {})[row["state"]] = row["at"]
    for upload_id, posted in post_done.items():
        events = at.get(upload_id, {})
        if "queued" in events and "active" in events:
            legs["event_to_queued"].append(events["queued"] - posted)
            legs["queued_to_active"].append(events["active"] - events["queued"])
            legs["event_to_active"].append(events["active"] - posted)
    for row in run.sql(
        "SELECT id, extract(epoch FROM finished_at)::float8 AS at FROM uploads"
        " WHERE id = ANY(%s) AND finished_at IS NOT NULL",
        (list(post_done),),
    ):
        legs["event_to_processed"].append(row["at"] - post_done[row["id"]])
    return legs


def report(result: LoadResult) -> str:
    """The figures as the benchmark prints them."""
    opts = result.options
    ms = 1000
    lines = [
        f"system load: {result.uploads} uploads of {opts.size} B in {result.seconds:.1f} s "
        f"({opts.uploaders} uploaders, backlog <= {opts.backlog}), status API polled every "
        f"{opts.poll_every_s:g} s ({result.polls} polls), {os.cpu_count()} CPUs, load average "
        f"{result.load_average[0]:.1f} -> {result.load_average[1]:.1f}",
        f"rate: {result.per_minute:.0f} uploads/min end to end",
        "",
        f"{'latency (ms)':<44}{'p50':>9}{'p99':>9}{'max':>9}",
    ]
    for name, label in (
        ("event_to_active", "S3 POST sent -> job active"),
        ("event_to_queued", "  S3 POST sent -> queued (S3 event, enqueue)"),
        ("queued_to_active", "  queued -> active (queue, worker)"),
        ("event_to_processed", "S3 POST sent -> upload processed (its flow)"),
    ):
        values = result.legs.get(name, [])
        lines.append(
            f"{label:<44}{ms * percentile(values, 0.5):9.1f}{ms * percentile(values, 0.99):9.1f}"
            f"{ms * max(values, default=float('nan')):9.1f}"
        )
    status = result.status_latencies
    lines.append(
        f"{'GET /jobs?limit=20 (target p99 < 100)':<44}{ms * percentile(status, 0.5):9.1f}"
        f"{ms * percentile(status, 0.99):9.1f}{ms * max(status, default=float('nan')):9.1f}"
        f"   answers {dict(sorted(result.status_statuses.items()))}"
    )
    lines += ["", f"{'CPU ms per upload':<52}{'gross':>9}{'net':>9}"]
    for kind, label in KINDS.items():
        lines.append(
            f"{label:<52}{result.ms_per_upload(kind):9.2f}{result.net_ms_per_upload(kind):9.2f}"
        )
    lines.append(
        f"{'ours (all but AWS and moto)':<52}{result.ours_ms:9.2f}{result.ours_net_ms:9.2f}"
    )
    per_job = result.jobs_per_upload
    lines.append(
        f"{f'ours per job ({per_job:.2f} jobs an upload: steps + finalize)':<52}"
        f"{result.ours_ms / per_job:9.2f}{result.ours_net_ms / per_job:9.2f}"
    )
    lines.append(
        "gross: all CPU in the window / uploads; net: without the idle baseline "
        f"({1000 * sum(result.idle_cpu_per_s[k] for k in OURS):.1f} ms/s of ours) and, for the "
        f"API, without the status polls ({1000 * result.poll_cpu_s:.2f} ms each)"
    )
    if result.failed:
        lines.append(f"FAILED uploads: {len(result.failed)}: {result.failed[:3]}")
    if result.unclassified:
        lines.append(f"processes of no known kind (counted as other): {result.unclassified}")
    active = result.legs.get("event_to_active", [])
    lines.append(
        f"RESULT uploads_per_min={result.per_minute:.0f} "
        f"event_to_active_p50_ms={ms * percentile(active, 0.5):.0f} "
        f"event_to_active_p99_ms={ms * percentile(active, 0.99):.0f} "
        f"status_p50_ms={ms * percentile(status, 0.5):.1f} "
        f"status_p99_ms={ms * percentile(status, 0.99):.1f} "
        f"ours_cpu_ms_per_upload={result.ours_ms:.2f} "
        f"ours_net_cpu_ms_per_upload={result.ours_net_ms:.2f} "
        f"jobs_per_upload={per_job:.2f} ours_cpu_ms_per_job={result.ours_ms_per_job:.2f}"
    )
    return "\n".join(lines)
