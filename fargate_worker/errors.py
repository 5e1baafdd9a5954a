"""Errors a processor or the sandbox raises, and what each means for retries."""

from __future__ import annotations

from collections.abc import Iterable

from offload.user_errors import redact, user_message


class PermanentJobError(Exception):
    """The job can never succeed (bad input, missing object, not an image): fail it now,
    without spending the remaining attempts."""


class S3AccessRefused(PermanentJobError):
    """The worker refused to presign an S3 request of a sandbox child: outside its job's object
    and outputs (``s3grants.py``). The same request would be refused on every attempt."""


class ProcessorFailed(Exception):
    """The processor raised in its child; the message is the child's ``Type: message``.
    A failed attempt, retried; the child itself is fine and is reused."""


class SandboxCrashed(Exception):
    """The child process died mid-job (SIGKILL, segfault, out of memory): a failed attempt,
    retried like any other."""


class JobTimedOut(Exception):
    """The job ran past its timeout; its child was killed. Retried like any other failure."""


class RemoteTraceback(Exception):
    """Carries the child's formatted traceback as the ``__cause__`` of the parent's error, so
    the stack stored in BullMQ and PostgreSQL points at the processor's code."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class AttemptFailed(Exception):
    """What the worker raises to bullmq for a failed attempt that may be retried: its text is
    the job's user-facing error (:func:`job_error_message`), so bullmq's ``failedReason`` (read
    by the reconciler, Bull Board, Node tools) holds no more than the status row does; the
    original exception is its ``__cause__``, in bullmq's stack trace."""


def job_error_message(exc: BaseException, names: Iterable[str] = ()) -> str:
    """The ``error`` a job's user reads for ``exc`` (offload.user_errors says why). The texts
    offload writes itself (a processor's PermanentJobError, the child's already-public
    ``Type: message``, a timeout, a crash, bad job data, an unknown job name) keep their words,
    less internal names; any other exception is described by :func:`user_message`."""
    from bullmq import UnrecoverableError

    from offload.jobs import InvalidJobData

    own = (
        PermanentJobError,
        ProcessorFailed,
        SandboxCrashed,
        JobTimedOut,
        AttemptFailed,
        InvalidJobData,
        UnrecoverableError,
    )
    if isinstance(exc, own):
        return redact(str(exc) or type(exc).__name__, names)
    return user_message(exc, names)
