"""The job contract: what a queued job carries and how its id is derived.

A job carries references only (bucket, key, version/etag, owner, upload id), never file bytes,
so Redis stays small and a job can be replayed from PostgreSQL. The job id is a digest of
name + bucket + key + version (or etag): S3 delivers events at least once, and the same object
version must map to the same job, which BullMQ then refuses to add twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

INSPECT = "inspect"
THUMBNAIL = "thumbnail"


class InvalidJobData(ValueError):
    """The job's data does not follow the contract; retrying cannot fix it."""


@dataclass(frozen=True)
class JobRef:
    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    owner: str | None = None
    upload_id: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_data(cls, data: Any) -> JobRef:
        if not isinstance(data, dict):
            raise InvalidJobData(f"job data must be an object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidJobData(f"job data has unknown fields: {sorted(unknown)}")
        for required in ("bucket", "key"):
            if not isinstance(data.get(required), str) or not data[required]:
                raise InvalidJobData(f"job data needs a non-empty string {required!r}")
        for optional in ("version_id", "etag", "owner", "upload_id"):
            if data.get(optional) is not None and not isinstance(data[optional], str):
                raise InvalidJobData(f"job data field {optional!r} must be a string")
        return cls(**data)

    @property
    def revision(self) -> str:
        """What identifies this exact object content: the version id, else the etag."""
        return self.version_id or (self.etag or "").strip('"')


def job_id(name: str, ref: JobRef) -> str:
    """Deterministic, Redis-key-safe job id (no ':'; BullMQ rejects purely numeric ids)."""
    digest = hashlib.sha256(
        "\0".join((name, ref.bucket, ref.key, ref.revision)).encode("utf-8")
    ).hexdigest()
    return f"{name}-{digest[:40]}"
