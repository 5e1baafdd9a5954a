"""``offload`` (or ``python -m offload_cli``): the command-line uploader. See ``offload --help``."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offload_cli import errors, report, transfer
from offload_cli.errors import AuthError, CliError, UsageError

if TYPE_CHECKING:
    from offload_cli.api import Api
    from offload_cli.follow import Followed

DESCRIPTION = """\
Upload files straight to S3 through the offload API, then follow each upload's pipeline to its
final state and print the result.json it produced.
(`offload` is the installed command; `python -m offload_cli` runs the same program.)

Where the API is: --site URL (the web page; its config.json says where the API and Cognito
are), or --api URL --client-id ID --region R [--cognito-endpoint URL].
Who you are: --username (OFFLOAD_USERNAME) and a password from OFFLOAD_PASSWORD,
--password-stdin, or a prompt; or --token / OFFLOAD_TOKEN, a Cognito ID token used as is."""

EPILOG = (
    errors.EXIT_CODES_HELP
    + """

environment:
  OFFLOAD_SITE, OFFLOAD_API_URL, OFFLOAD_CLIENT_ID, OFFLOAD_REGION, OFFLOAD_COGNITO_ENDPOINT,
  OFFLOAD_USERNAME, OFFLOAD_PASSWORD, OFFLOAD_TOKEN, OFFLOAD_STATE_DIR

examples:
  offload --site http://127.0.0.1:8000/ upload video.mp4 photos/*.jpg
  offload --site https://files.example.com/ upload --json --no-wait big.iso
  offload uploads --state failed
  offload jobs --limit 50
  offload status AxniGvRKrXztRzMmcKiXJw"""
)

Env = dict[str, str] | os._Environ[str]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _common(parser: argparse.ArgumentParser, env: Env, top: bool) -> None:
    """Options accepted before and after the subcommand (after it, they override)."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection and sign-in")
    group.add_argument("--site", default=default(env.get("OFFLOAD_SITE")), help="web page URL")
    group.add_argument("--api", default=default(env.get("OFFLOAD_API_URL")), help="API base URL")
    group.add_argument(
        "--client-id", default=default(env.get("OFFLOAD_CLIENT_ID")), help="Cognito app client"
    )
    group.add_argument("--region", default=default(env.get("OFFLOAD_REGION")), help="AWS region")
    group.add_argument(
        "--cognito-endpoint",
        default=default(env.get("OFFLOAD_COGNITO_ENDPOINT")),
        help="Cognito endpoint (default: AWS's for the region)",
    )
    group.add_argument("--username", default=default(env.get("OFFLOAD_USERNAME")))
    group.add_argument(
        "--password-stdin",
        action="store_true",
        default=default(False),
        help="read the password from the first line of stdin",
    )
    group.add_argument(
        "--token", default=default(env.get("OFFLOAD_TOKEN")), help="a Cognito ID token"
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json", action="store_true", default=default(False), help="one JSON document on stdout"
    )
    out.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="no notes on stderr"
    )


def build_parser(env: Env | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="offload",
        usage="offload [options] {upload,status,uploads,jobs,retry,abort} ...",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, env, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=errors.EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(sub, env, top=False)
        sub.set_defaults(func=func)
        return sub

    up = command(
        "upload", "upload files, then wait for their final state and print their result", cmd_upload
    )
    up.add_argument("files", nargs="+", type=Path, metavar="FILE")
    up.add_argument("--content-type", help="media type (default: guessed from the name)")
    up.add_argument(
        "--parallel",
        type=_positive_int,
        default=transfer.DEFAULT_PARALLEL,
        help=f"parts in flight (default {transfer.DEFAULT_PARALLEL})",
    )
    up.add_argument("--tries", type=_positive_int, default=5, help="attempts per part (default 5)")
    up.add_argument(
        "--limit-rate", type=_rate, metavar="MIB_S", help="at most this many MiB/s in total"
    )
    up.add_argument("--no-resume", action="store_true", help="always start a new upload")
    up.add_argument(
        "--state-dir",
        type=Path,
        default=env.get("OFFLOAD_STATE_DIR") or None,
        help="resume state (default ~/.cache/offload/uploads)",
    )
    up.add_argument("--no-wait", action="store_true", help="do not wait for the final state")
    up.add_argument(
        "--timeout",
        type=_seconds,
        default=1800.0,
        help="seconds to wait for the final state (default 1800; 0: no limit)",
    )
    bar = up.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always"
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never")

    st = command("status", "an upload's state and its pipeline's steps", cmd_status)
    st.add_argument("upload_id", metavar="UPLOAD_ID")
    st.add_argument("--wait", action="store_true", help="wait until it reaches its final state")
    st.add_argument("--timeout", type=_seconds, default=1800.0, help="with --wait (0: no limit)")

    ul = command("uploads", "your uploads and their pipelines' progress, newest first", cmd_uploads)
    ul.add_argument("--limit", type=_positive_int, default=20, help="uploads per page (1..100)")
    ul.add_argument("--all", action="store_true", help="every page")
    ul.add_argument("--cursor", help="the page after this one (nextCursor of --json)")
    ul.add_argument(
        "--state", metavar="STATE", help="only uploads in this state (processed, failed, ...)"
    )

    jb = command("jobs", "your jobs, newest first", cmd_jobs)
    jb.add_argument("--limit", type=_positive_int, default=20, help="jobs per page (1..100)")
    jb.add_argument("--all", action="store_true", help="every page")
    jb.add_argument("--cursor", help="the page after this one (nextCursor of --json)")
    jb.add_argument("--upload", metavar="UPLOAD_ID", help="only this upload's jobs")

    rt = command("retry", "put a failed job back in the queue", cmd_retry)
    rt.add_argument("job_id", metavar="JOB_ID")

    ab = command("abort", "abort a pending upload (and forget its resume state)", cmd_abort)
    ab.add_argument("upload_id", metavar="UPLOAD_ID")
    ab.add_argument("--state-dir", type=Path, default=env.get("OFFLOAD_STATE_DIR") or None)
    return parser


# --- the session: configuration, sign-in, API client -----------------------------------------


class Session:
    def __init__(
        self, args: argparse.Namespace, env: Env, parallel: int = transfer.DEFAULT_PARALLEL
    ):
        from offload_cli import api, config

        self.args = args
        self.env = env
        self.pool = api.new_pool(maxsize=max(16, parallel + 4))
        self.config = config.resolve(
            site=args.site,
            api=args.api,
            client_id=args.client_id,
            region=args.region,
            cognito_endpoint=args.cognito_endpoint,
            pool=self.pool,
        )
        self.api = api.Api(self.config.api_url, self._token_source(), self.pool)

    def _token_source(self) -> Any:
        from offload_cli.auth import CognitoSession, StaticToken

        args = self.args
        if args.token:
            return StaticToken(args.token)
        username = args.username
        interactive = sys.stdin.isatty() and not args.password_stdin
        if not username:
            if not interactive:
                raise UsageError("who are you? give --username (or OFFLOAD_USERNAME) or --token")
            username = input("Username: ").strip()
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        elif self.env.get("OFFLOAD_PASSWORD"):
            password = self.env["OFFLOAD_PASSWORD"]
        elif interactive:
            password = getpass.getpass(f"Password for {username}: ")
        else:
            raise UsageError("no password: set OFFLOAD_PASSWORD, or use --password-stdin")
        if not password:
            raise AuthError("empty password")
        return CognitoSession(self.config, username, password)


class Printer:
    def __init__(self, args: argparse.Namespace):
        self.args = args

    def note(self, message: str) -> None:
        if not self.args.quiet:
            print(f"offload: {message}", file=sys.stderr, flush=True)

    def error(self, message: str) -> None:
        print(f"offload: error: {message}", file=sys.stderr, flush=True)

    def out(self, text: str) -> None:
        print(text, flush=True)

    def json(self, doc: Any) -> None:
        print(json.dumps(doc, indent=2, sort_keys=False), flush=True)


# --- commands ----------------------------------------------------------------------------------


def cmd_upload(args: argparse.Namespace, env: Env) -> int:
    from offload_cli.follow import follow
    from offload_cli.progress import ProgressBar
    from offload_cli.state import StateStore
    from offload_cli.transfer import RateLimit
    from offload_cli.uploader import Uploader, UploadOutcome, check_file

    printer = Printer(args)
    for path in args.files:  # every file, before signing in: a refusal sends no request
        check_file(path)
    session = Session(args, env, args.parallel)
    show_bar = args.progress if args.progress is not None else sys.stderr.isatty()
    if args.quiet and args.progress is None:
        show_bar = False
    uploader = Uploader(
        session.api,
        session.pool,
        store=StateStore(args.state_dir),
        parallel=args.parallel,
        tries=args.tries,
        rate=RateLimit(args.limit_rate * (1 << 20)) if args.limit_rate else None,
        progress=(lambda label, total, done: ProgressBar(label, total, done)) if show_bar else None,
        note=printer.note,
    )
    worst = errors.OK
    outcomes: list[UploadOutcome] = []
    failures: list[dict[str, Any]] = []
    for path in args.files:
        try:
            outcomes.append(uploader.upload(path, args.content_type, resume=not args.no_resume))
        except KeyboardInterrupt:
            raise CliError(
                "interrupted; run the same command again to resume a multipart upload",
                errors.INTERRUPTED,
            ) from None
        except (AuthError, errors.UnavailableError):
            raise
        except CliError as exc:
            printer.error(f"{path}: {exc}")
            failures.append({"file": str(path), "error": str(exc), "exitCode": exc.exit_code})
            worst = max(worst, exc.exit_code)
    followed: dict[str, Followed] = {}
    results: dict[str, bytes] = {}
    timed_out = False
    if outcomes and not args.no_wait:
        if not args.quiet and not args.json:
            printer.note(f"waiting for {len(outcomes)} upload(s) to be processed...")
        followed, timed_out = follow(
            session.api, [o.upload_id for o in outcomes], args.timeout or None
        )
        for upload_id, item in followed.items():
            if item.finished and not item.succeeded:
                worst = max(worst, errors.JOB_FAILED)
            try:
                if (raw := fetch_result(session.api, item)) is not None:
                    results[upload_id] = raw
            except CliError as exc:
                printer.error(f"upload {upload_id}: result.json: {exc}")
                worst = max(worst, exc.exit_code)
        if timed_out:
            worst = max(worst, errors.TIMEOUT)
    if args.json:
        printer.json(
            {
                "uploads": [
                    report.upload_json(
                        o.upload,
                        followed.get(o.upload_id),
                        o,
                        report.result_json(results[o.upload_id])
                        if o.upload_id in results
                        else None,
                    )
                    for o in outcomes
                ],
                "failures": failures,
                "timedOut": timed_out,
                "exitCode": worst,
            }
        )
    else:
        for o in outcomes:
            printer.out(
                report.upload_text(o.upload, followed.get(o.upload_id), o, results.get(o.upload_id))
            )
    if timed_out:
        printer.error(f"timed out after {args.timeout:g} s waiting for the final state")
    elif worst == errors.JOB_FAILED:
        printer.error("an upload failed, was rejected or aborted, or one of its jobs failed")
    return worst


def fetch_result(api: Api, item: Followed) -> bytes | None:
    """A processed upload's result.json, downloaded through the link its answer carries;
    None when there is none (not processed, or its result archived)."""
    if item.state != "processed":
        return None
    links = item.upload.get("links") or []
    url = next((link.get("url") for link in links if link.get("name") == "result.json"), None)
    return api.download(url) if isinstance(url, str) else None


def cmd_status(args: argparse.Namespace, env: Env) -> int:
    from offload_cli.follow import Followed, follow

    printer = Printer(args)
    session = Session(args, env)
    code = errors.OK
    if args.wait:
        followed, timed_out = follow(session.api, [args.upload_id], args.timeout or None)
        item = followed[args.upload_id]
        code = errors.TIMEOUT if timed_out else (errors.OK if item.succeeded else errors.JOB_FAILED)
    else:
        item = Followed(session.api.get_upload(args.upload_id))
    upload = item.upload
    if args.json:
        doc = report.upload_json(upload, item)
        del doc["result"]  # status shows the link, upload downloads the result
        for name in ("sizeActual", "uploadedParts", "multipartOpen", "createdAt", "updatedAt"):
            if name in upload:
                doc[name] = upload[name]
        printer.json(doc)
    else:
        printer.out(report.upload_text(upload, item))
        for link in upload.get("links") or []:
            printer.out(f"  {link.get('name')}: {link.get('url')}")
        if "uploadedParts" in upload:
            printer.out(
                f"  {len(upload['uploadedParts'])} of {upload.get('partCount')} parts in S3"
                + ("" if upload.get("multipartOpen") else " (multipart upload closed)")
            )
    return code


def _check_limit(args: argparse.Namespace) -> None:
    if args.limit > 100:
        raise UsageError("--limit is at most 100 (use --all for every page)")


def _pages(
    args: argparse.Namespace, key: str, fetch: Callable[[str | None], dict[str, Any]]
) -> tuple[list[dict[str, Any]], str | None]:
    """The ``key`` items of one page from ``--cursor`` (``fetch(cursor)``), or of every page
    with ``--all``, and the cursor of the page after them. ``--limit`` is checked by
    :func:`_check_limit` before the session signs in."""
    items: list[dict[str, Any]] = []
    cursor = args.cursor
    while True:
        page = fetch(cursor)
        items.extend(page.get(key, []))
        cursor = page.get("nextCursor")
        if not args.all or not cursor:
            return items, cursor


def cmd_uploads(args: argparse.Namespace, env: Env) -> int:
    printer = Printer(args)
    _check_limit(args)
    session = Session(args, env)
    uploads, cursor = _pages(
        args, "uploads", lambda at: session.api.uploads_page(args.limit, at, args.state)
    )
    if args.json:
        printer.json({"uploads": uploads, "nextCursor": cursor})
    else:
        printer.out(report.uploads_table(uploads))
        if cursor:
            printer.note(f"more: --cursor {cursor} (or --all)")
    return errors.OK


def cmd_jobs(args: argparse.Namespace, env: Env) -> int:
    printer = Printer(args)
    _check_limit(args)
    session = Session(args, env)
    jobs, cursor = _pages(
        args, "jobs", lambda at: session.api.jobs_page(args.limit, at, args.upload)
    )
    if args.json:
        printer.json({"jobs": [report.job_json(j) for j in jobs], "nextCursor": cursor})
    else:
        printer.out(report.jobs_table(jobs))
        if cursor:
            printer.note(f"more: --cursor {cursor} (or --all)")
    return errors.OK


def cmd_retry(args: argparse.Namespace, env: Env) -> int:
    printer = Printer(args)
    job = Session(args, env).api.retry_job(args.job_id)
    if args.json:
        printer.json(report.job_json(job))
    else:
        printer.out(report.job_line(job).strip())
    return errors.OK


def cmd_abort(args: argparse.Namespace, env: Env) -> int:
    from offload_cli.state import StateStore

    printer = Printer(args)
    upload = Session(args, env).api.abort(args.upload_id)
    StateStore(args.state_dir).delete_upload(args.upload_id)
    if args.json:
        printer.json(report.upload_json(upload))
    else:
        printer.out(f"upload {upload.get('id')} {upload.get('state')}")
    return errors.OK


def main(argv: list[str] | None = None, env: Env | None = None) -> int:
    env = os.environ if env is None else env
    parser = build_parser(env)
    args = parser.parse_args(argv)  # a usage error exits 2 here, "offload: error: ..."
    try:
        status: int = args.func(args, env)  # every command's handler returns its exit status
        return status
    except KeyboardInterrupt:
        print("offload: interrupted", file=sys.stderr, flush=True)
        return errors.INTERRUPTED
    except CliError as exc:
        print(f"offload: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except BrokenPipeError:
        # stdout closed early (| head): not an error worth a trace.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return errors.OK
