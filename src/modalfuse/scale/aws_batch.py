"""S3 copy steps of the AWS batch task: `python -m modalfuse.scale.aws_batch download|upload SRC DST`.

The task downloads a prefix (the table and its images), runs `modalfuse predict` on it and
uploads the result; keys that would land outside the target folder are refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

from modalfuse.errors import InvalidInput


def _split(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise InvalidInput(f"expected an s3://bucket/key URI, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def download_prefix(uri: str, dest: Path) -> int:
    """Copy every object under an S3 prefix into `dest`; returns how many were copied."""
    import boto3

    bucket, prefix = _split(uri)
    s3 = boto3.client("s3")
    root = dest.resolve()
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):].lstrip("/")
            target = (root / rel).resolve()
            if not rel or not target.is_relative_to(root):
                raise InvalidInput(f"S3 key {obj['Key']!r} would be written outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            n += 1
    return n


def upload_file(path: Path, uri: str) -> None:
    """Copy a local file to an S3 key."""
    import boto3

    bucket, key = _split(uri)
    boto3.client("s3").upload_file(str(path), bucket, key)


def main(argv: list[str]) -> int:
    """The AWS Batch task's entry point: `download s3://bucket/prefix DIR` or `upload FILE s3://bucket/key`."""
    if len(argv) != 3 or argv[0] not in ("download", "upload"):
        sys.stderr.write("usage: python -m modalfuse.scale.aws_batch download s3://b/prefix DIR | "
                         "upload FILE s3://b/key\n")
        return 2
    if argv[0] == "download":
        download_prefix(argv[1], Path(argv[2]))
    else:
        upload_file(Path(argv[1]), argv[2])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
