"""The CLI's exit codes and the errors that carry them.

A script can rely on these codes (they are in ``offload --help`` too):

====  =======================================================================
code  meaning
====  =======================================================================
0     success (every upload processed)
1     an upload failed (a step failed for good), was rejected or aborted
2     usage error (bad arguments, missing settings, missing, unreadable or empty file)
3     authentication failed (sign-in refused, token refused)
4     the API refused a request (4xx; its message is printed)
5     network or server error, after retries
6     timed out waiting for the final state
130   interrupted (Ctrl-C); an interrupted multipart upload resumes on re-run
====  =======================================================================
"""

from __future__ import annotations

OK = 0
JOB_FAILED = 1
USAGE = 2
AUTH = 3
REFUSED = 4
UNAVAILABLE = 5
TIMEOUT = 6
INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0    success (every upload processed)
  1    an upload failed (a step failed for good), was rejected or aborted
  2    usage error (bad arguments, missing settings, missing, unreadable or empty file)
  3    authentication failed (sign-in or token refused)
  4    the API refused a request (4xx; its message is printed)
  5    network or server error, after retries
  6    timed out waiting for the final state
  130  interrupted (Ctrl-C); re-run the same upload to resume it"""


class CliError(Exception):
    """An error the CLI reports as one line ``offload: error: <message>`` and exits with."""

    exit_code = UNAVAILABLE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    exit_code = USAGE


class AuthError(CliError):
    exit_code = AUTH


class ApiError(CliError):
    """The API answered 4xx: ``status``, its ``message`` and the ``field`` at fault."""

    exit_code = REFUSED

    def __init__(self, status: int, message: str, field: str | None = None):
        self.status = status
        self.api_message = message
        self.field = field
        where = f" (field {field})" if field else ""
        super().__init__(f"API refused the request: HTTP {status}: {message}{where}")


class UnavailableError(CliError):
    """No answer, or a 5xx, after every retry."""

    exit_code = UNAVAILABLE


class TransferError(CliError):
    """S3 refused or kept failing a transfer."""

    exit_code = UNAVAILABLE

    def __init__(self, message: str, status: int = 0, retryable: bool = True):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class WaitTimeout(CliError):
    exit_code = TIMEOUT
