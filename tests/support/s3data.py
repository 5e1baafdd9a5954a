"""Large test objects in S3 without holding them in memory."""

from __future__ import annotations

import hashlib
import os
from typing import Any

MiB = 1 << 20


def upload_generated(s3: Any, bucket: str, key: str, size: int, part_size: int = 64 * MiB) -> str:
    """Multipart upload of ``size`` bytes, one part in memory at a time; returns the sha256 of
    what was uploaded, to check a processor's answer against.

    Each part is one random block that starts with its part number: incompressible, different
    from every other part (a reader that skips, repeats or reorders parts gets another
    digest), and cheap: a GiB of os.urandom costs ~3 s of CPU, a copy of the block ~20 ms."""
    digest = hashlib.sha256()
    block = os.urandom(min(part_size, size))
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    try:
        sent, number = 0, 1
        while sent < size:
            length = min(part_size, size - sent)
            part = (number.to_bytes(8, "big") + block[8:length])[:length]
            digest.update(part)
            etag = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
            )["ETag"]
            parts.append({"ETag": etag, "PartNumber": number})
            sent += len(part)
            number += 1
            del part
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return digest.hexdigest()
