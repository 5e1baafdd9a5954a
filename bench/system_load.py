"""System load: how many small uploads a minute the whole local stack carries end to end, and
what each costs.

    python bench/system_load.py [--seconds 120] [--uploaders 6] [--backlog 24] [--size 2048]
                                [--workers 2] [--concurrency 2] [--poll-every 0.25]

Starts the local stack (``python -m offload_local``, the shipped worker and reconciler
settings) on a Redis and a PostgreSQL of its own, warms the path up, measures the stack idle
and with the status API polled only (baselines), then for ``--seconds`` sends uploads as fast
as the pipeline takes them (``--uploaders`` browsers at once, at most ``--backlog`` uploads
sent but not processed, so that the figures are those of the pipeline, not of a growing queue):
``POST /uploads`` through the gateway (Cognito ID token), the presigned POST to the moto
server, S3 event -> SQS -> enqueue Lambda (a ranged GET of the first KiB, the upload's flow) ->
Redis -> worker -> sandbox ``inspect`` -> ``finalize`` in the worker (result.json, the upload
``processed``, its EventBridge event); ``GET /jobs?limit=20`` is polled meanwhile from a
process of its own.

Prints the rate, S3-event-to-job-active latency (from the presigned POST's answer to the job's
first ``active`` event in ``job_events``) and its legs, the status API's p50/p99 as the client
sees it, the time to the upload's final state, and CPU ms per upload by process kind (and
per job: an upload is a flow of two or more jobs) (psutil over every process of the stack's tree,
its Redis and its PostgreSQL; moto apart: it is the emulator). How the figures are taken:
``tests/support/system_load.py``. The test ``tests/system/test_system_load.py`` runs the same
code briefly and asserts that nothing was lost. The last line, ``RESULT ...``, is
machine-parsable.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: repo root

from tests.support.system_load import LoadOptions, report, run_load
from tests.support.system_stack import SystemConfig, SystemRun


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = LoadOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="load window")
    parser.add_argument("--uploaders", type=int, default=defaults.uploaders)
    parser.add_argument("--backlog", type=int, default=defaults.backlog)
    parser.add_argument("--size", type=int, default=defaults.size, help="bytes per upload")
    parser.add_argument("--poll-every", type=float, default=defaults.poll_every_s)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="jobs per worker")
    args = parser.parse_args(argv)
    if min(args.seconds, args.uploaders, args.backlog, args.size, args.workers) <= 0:
        parser.error("--seconds, --uploaders, --backlog, --size and --workers must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = LoadOptions(
        seconds=args.seconds,
        uploaders=args.uploaders,
        backlog=args.backlog,
        size=args.size,
        poll_every_s=args.poll_every,
    )
    with tempfile.TemporaryDirectory(prefix="offload-system-load-") as workdir:
        run = SystemRun(
            Path(workdir), SystemConfig(workers=args.workers, concurrency=args.concurrency)
        )
        try:
            run.start()
            print(report(run_load(run, options)), flush=True)
        finally:
            forced = run.close()
        if forced:
            print("processes left behind, killed by force:", *forced, sep="\n", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
