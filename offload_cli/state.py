"""Resume state: one small JSON file per multipart upload in progress, written right after
``POST /uploads``, named after the file (absolute path, size, mtime) and the API, so that
re-running the same upload of the same unchanged file finds it. Deleted once the upload is
completed or aborted.

Default directory: ``$XDG_CACHE_HOME/offload/uploads`` (``~/.cache/offload/uploads``);
``--state-dir`` / ``OFFLOAD_STATE_DIR`` override it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VERSION = 1


def default_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "offload" / "uploads"


@dataclass(frozen=True)
class FileIdentity:
    path: str  # absolute
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        resolved = path.resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class UploadState:
    upload_id: str
    api_url: str
    path: str
    size: int
    mtime_ns: int
    part_size: int
    part_count: int
    key: str = ""
    content_type: str = ""
    version: int = VERSION


class StateStore:
    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory else default_dir()

    @staticmethod
    def name_for(identity: FileIdentity, api_url: str) -> str:
        digest = hashlib.sha256(
            json.dumps([identity.path, identity.size, identity.mtime_ns, api_url]).encode()
        ).hexdigest()
        return digest[:32] + ".json"

    def path_for(self, identity: FileIdentity, api_url: str) -> Path:
        return self.directory / self.name_for(identity, api_url)

    def load(self, identity: FileIdentity, api_url: str) -> UploadState | None:
        """The state of this file's unfinished upload to this API, if any (and readable)."""
        path = self.path_for(identity, api_url)
        try:
            raw: Any = json.loads(path.read_text())
            state = UploadState(**raw)
        except (OSError, ValueError, TypeError):
            return None
        same = (state.path, state.size, state.mtime_ns, state.api_url) == (
            identity.path,
            identity.size,
            identity.mtime_ns,
            api_url,
        )
        return state if same and state.version == VERSION else None

    def save(self, state: UploadState) -> Path:
        """Atomically (a reader never sees half a file), private to the user."""
        identity = FileIdentity(state.path, state.size, state.mtime_ns)
        target = self.path_for(identity, state.api_url)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(asdict(state), out, indent=1)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return target

    def delete(self, identity: FileIdentity, api_url: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(identity, api_url).unlink()

    def delete_upload(self, upload_id: str) -> int:
        """Forget every state file of ``upload_id`` (after ``abort``); how many there were."""
        removed = 0
        for path in self.directory.glob("*.json"):
            try:
                if json.loads(path.read_text()).get("upload_id") == upload_id:
                    path.unlink()
                    removed += 1
            except (OSError, ValueError, AttributeError):
                continue
        return removed
