"""What a user may read of a failure: a short message without the names of the system's insides.

A job's ``error`` is shown to the user who uploaded the file (``GET /jobs``, the CLI, the web
page). The exception behind it may carry what that user must not see: botocore's messages name
buckets, keys, ARNs and account ids ("User: arn:aws:sts::123456789012:assumed-role/... is not
authorized to perform: s3:GetObject on resource: arn:aws:s3:::bucket/key"), psycopg's carry
SQL, table and host names, redis-py's carry hosts and ports, and any repr may carry a URL. So
the text stored for users is built here, from the exception or from a text someone else wrote
(bullmq's failed reason):

* the exceptions of the libraries that talk to AWS, PostgreSQL and Redis never give their text,
  only what failed and, for an AWS error, its code (one word such as ``AccessDenied``);
* any other text keeps its words, with ARNs, URLs (``s3://``, ``https://``, ``postgresql://``
  ...), AWS host names, account ids after the word "account", the given names (the job's
  bucket) and anything from a traceback on replaced, cut to :data:`MAX_CHARS`.

The full text stays where operators read it: the job's ``error_stack`` column in PostgreSQL
(which the API never shows) and the logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_CHARS = 500
HIDDEN = "[hidden]"

# Libraries whose exception texts describe our infrastructure: (module, what the user reads).
_INFRASTRUCTURE = {
    "botocore": "storage request failed",
    "boto3": "storage request failed",
    "s3transfer": "storage request failed",
    "psycopg": "internal database error",
    "psycopg_pool": "internal database error",
    "redis": "internal queue error",
    "bullmq": "internal queue error",
}
_PATTERNS = (
    # ARNs of any partition: arn:aws:s3:::bucket/key, arn:aws-cn:sts::123:assumed-role/x
    re.compile(r"\barn:aws[a-z-]*:[^\s\"'<>,;)]*", re.IGNORECASE),
    # URLs of any scheme (presigned URLs, endpoints, s3://bucket/key, database URLs)
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>]*", re.IGNORECASE),
    # AWS host names (RDS, ElastiCache, S3 virtual hosts) outside a URL
    re.compile(r"[\w.-]+\.amazonaws\.com(?:\.cn)?\b", re.IGNORECASE),
    # account ids where a text names them ("account 123456789012", "AccountId: ...")
    re.compile(r"(?<=account)([\s_:=\"'-]*(?:id)?[\s:=\"'-]*)\d{12}\b", re.IGNORECASE),
)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
# A name is replaced where it stands alone: not inside a longer word (bucket names are
# 3..63 characters of [a-z0-9.-]; a shorter name is never replaced, it would hit words).
_MIN_NAME = 3


def _hide_name(text: str, name: str) -> str:
    if len(name) < _MIN_NAME:
        return text
    return re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-]|\.\w)", HIDDEN, text)


def redact(text: str, names: Iterable[str] = ()) -> str:
    """``text`` without internal names: see the module docstring. Idempotent."""
    if match := _TRACEBACK.search(text):
        text = text[: match.start()].rstrip()
    for pattern in _PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + HIDDEN, text)
        else:
            text = pattern.sub(HIDDEN, text)
    for name in names:
        if name:
            text = _hide_name(text, name)
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 3].rstrip() + "..."
    return text


def aws_error_code(exc: BaseException) -> str | None:
    """The error code of a botocore ``ClientError`` (``NoSuchKey``, ``404``, ...), if it is one
    and the code is one plain word; None otherwise. For decisions as well as for users."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    code = error.get("Code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and re.fullmatch(r"[A-Za-z0-9.]{1,64}", code) else None


def infrastructure_message(exc: BaseException) -> str | None:
    """A fixed description when ``exc`` (or its type's bases) comes from a library whose texts
    name our infrastructure; None otherwise."""
    for cls in type(exc).__mro__:
        described = _INFRASTRUCTURE.get(cls.__module__.split(".", 1)[0])
        if described is not None:
            code = aws_error_code(exc)
            return f"{described} ({code})" if code else described
    return None


def user_message(exc: BaseException, names: Iterable[str] = ()) -> str:
    """``Type: message`` of ``exc`` as its user may read it."""
    text = infrastructure_message(exc)
    if text is None:
        try:
            text = redact(str(exc), names)
        except Exception:  # an exception whose __str__ fails still has a type to show
            text = ""
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, names)
