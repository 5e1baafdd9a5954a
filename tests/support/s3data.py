"""Large test objects in S3 without holding them in memory."""

from __future__ import annotations

import hashlib
import os
from typing import Any

MiB = 1 << 20


def upload_generated(s3: Any, bucket: str, key: str, size: int, part_size: int = 64 * MiB) -> str:
    """Multipart upload of ``size`` random bytes, one part in memory at a time; returns the
    sha256 of what was uploaded, to check a processor's answer against."""
    digest = hashlib.sha256()
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    try:
        sent, number = 0, 1
        while sent < size:
            part = os.urandom(min(part_size, size - sent))
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
