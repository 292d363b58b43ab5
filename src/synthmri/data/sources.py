"""BraTS sources on S3: list, download concurrently, resume and verify (docs/design.md).

``fetch_s3("s3://bucket/prefix", dest)`` mirrors every NIfTI object under the prefix into
`dest`, keeping the key's path below the prefix. The endpoint comes from the argument or the
environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``; MinIO, moto), the credentials only
from boto3's own chain (environment variables, shared files, container or instance roles).

Each object is streamed with ``get_object`` into ``<name>.part`` while it is hashed, checked
against the listing (size and ETag) and only then renamed to ``<name>`` (atomic within one
file system). A file at its final name was therefore verified when it was written, and a
re-run keeps it after checking it again; a ``.part`` left by a killed run is never trusted:
it is overwritten (the object is fetched whole again, not from where it stopped) or removed.
Two processes must not fetch into the same directory at once.

Why ``get_object`` rather than ``download_file``: the stream is hashed while it is written, so
nothing is read twice; the temporary name is ours (``download_file`` renames its own random
temporary file into place before the caller could verify it); ``IfMatch`` pins the object
version that was listed; and the one thread pool here is the only concurrency (``download_file``
starts up to ten threads per call). What it gives up is ranged parallel reads of a single
large object, which BraTS files (a few MB each) do not need.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

from synthmri.data.etags import (  # noqa: F401 (MiB, MULTIPART_PART_SIZES: re-exported)
    CHUNK,
    MISMATCH,
    MULTIPART_ETAG,
    MULTIPART_PART_SIZES,
    SIZE_ONLY,
    VERIFIED,
    EtagCheck,
    MiB,
    etag_verdict,
    opaque_etag,
)
from synthmri.data.s3_errors import describe_error, is_transient
from synthmri.data.store import StoreError

log = logging.getLogger(__name__)

ATTEMPTS = 3
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")

_BUCKET = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")


class SourceError(StoreError):
    """A BraTS source that cannot be read: bad URI, unreachable or denied S3, failed download."""


@dataclass(frozen=True)
class FetchResult:
    """What `fetch_s3` left in its destination.

    Attributes:
        root: the destination directory; every listed file lies below it at its key's path
            relative to the prefix.
        files: NIfTI objects listed (and now present).
        downloaded: files fetched by this call.
        skipped: files already present and verified, not fetched again.
        bytes_downloaded: bytes of the files fetched by this call (failed attempts excluded).
        size_only: keys whose content could only be checked by size (see `fetch_s3`), sorted.
    """

    root: Path
    files: int
    downloaded: int
    skipped: int
    bytes_downloaded: int
    size_only: list[str]


@dataclass(frozen=True)
class _Remote:
    """One listed object and where it goes."""

    key: str
    target: Path
    size: int
    etag: str  # as listed, quotes included (what IfMatch wants)


@dataclass(frozen=True)
class _Outcome:
    key: str
    downloaded: bool
    size: int
    size_only: bool


def is_s3_uri(text: object) -> bool:
    """Whether `text` is a string of the form ``s3://...`` (the scheme only; see `parse_s3_uri`)."""
    return isinstance(text, str) and text.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into the bucket and a prefix that is ``""`` or ends in ``/``.

    Args:
        uri: ``s3://bucket``, ``s3://bucket/`` or ``s3://bucket/some/prefix[/]``.

    Returns:
        ``(bucket, prefix)``; ``s3://b/p`` and ``s3://b/p/`` both give ``("b", "p/")``, so the
        prefix selects the folder ``p/`` and never a sibling such as ``p2/``.

    Raises:
        SourceError: naming the URI, for another scheme, a missing or invalid bucket name.
    """
    if not is_s3_uri(uri):
        raise SourceError(f"{uri}: not an S3 URI (expected s3://bucket/prefix)")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise SourceError(f"{uri}: no bucket name (expected s3://bucket/prefix)")
    if not _BUCKET.match(bucket):
        raise SourceError(f"{uri}: invalid bucket name {bucket!r}")
    prefix = prefix.rstrip("/")
    return bucket, f"{prefix}/" if prefix else ""


def fetch_s3(uri: str, dest: Path, *, endpoint_url: str | None = None, workers: int = 8,
             suffixes: Sequence[str] = NIFTI_SUFFIXES,
             progress: Callable[[int, int], None] | None = None) -> FetchResult:
    """Mirror the objects under ``s3://bucket/prefix`` whose keys end in `suffixes` into `dest`.

    A file already in `dest` with the listed size and matching content is kept. Everything
    else is downloaded to ``<name>.part``, verified and renamed to ``<name>``. Verification:

    * the size must equal the listed ``Size``;
    * a plain ETag (32 hex digits) must equal the content's MD5;
    * a multipart ETag (``<md5>-<n>``) is recomputed with the uploader's part size, which a
      ``HEAD`` of part 1 tells (AWS, MinIO); a store that does not tell it gets guesses: the
      sizes in `MULTIPART_PART_SIZES` (8 MiB, boto3's default, then 5, 16, 64 MiB) and
      ``Size / n`` rounded up to a whole MiB, each where it gives ``n`` parts.

    **Size-only.** When no guess reproduces a multipart ETag (an unusual part size), when the
    ETag is not an MD5 of any kind (some S3-compatible stores), or when it does not match and
    the object is encrypted with a KMS or customer key (whose ETags are not MD5s), the content
    cannot be checked. That alone is not a failure: the file is checked by size only, its key
    is listed in `FetchResult.size_only`, and on a re-run a local copy of the right size is
    kept. Flexible checksums (CRC32, SHA-256) that S3 sends are validated by botocore while
    downloading, size-only or not.

    A download that fails verification (or breaks off) is deleted and retried, `ATTEMPTS`
    times in all. A ``.part`` from an earlier run is never taken for a complete file.

    Args:
        uri: ``s3://bucket/prefix``.
        dest: destination directory, created if missing; keys are written at their path below
            the prefix.
        endpoint_url: S3 endpoint (MinIO, moto); default ``AWS_ENDPOINT_URL_S3``, then
            ``AWS_ENDPOINT_URL``, then AWS. Credentials come from the environment only.
        workers: files downloaded at once (threads sharing one client).
        suffixes: key endings to mirror; other objects (README.txt, ...) are ignored.
        progress: called as ``progress(done, total)`` in the calling thread after each file,
            kept or downloaded.

    Returns:
        The counts; see `FetchResult`.

    Raises:
        SourceError: naming the URI or the object's ``s3://`` address and the cause: malformed
            URI, no credentials, credentials rejected, access denied, missing bucket, endpoint
            unreachable, no matching object under the prefix, a key that does not map to a
            path inside `dest`, or a download still failing verification after every attempt.
    """
    if workers < 1:
        raise SourceError(f"{uri}: workers must be at least 1, got {workers}")
    bucket, prefix = parse_s3_uri(uri)
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    client = _client(uri, endpoint, workers)
    dest = Path(dest)
    remotes = _list(client, uri, bucket, prefix, dest, tuple(suffixes), endpoint)
    dest.mkdir(parents=True, exist_ok=True)

    outcomes: list[_Outcome] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-fetch") as pool:
        pending = [pool.submit(_fetch_one, client, bucket, remote, endpoint) for remote in remotes]
        try:
            for done, future in enumerate(as_completed(pending), start=1):
                outcomes.append(future.result())
                if progress is not None:
                    progress(done, len(remotes))
        except BaseException:
            for future in pending:
                future.cancel()
            raise

    downloaded = [o for o in outcomes if o.downloaded]
    result = FetchResult(root=dest, files=len(outcomes), downloaded=len(downloaded),
                         skipped=len(outcomes) - len(downloaded), bytes_downloaded=sum(o.size for o in downloaded),
                         size_only=sorted(o.key for o in outcomes if o.size_only))
    log.info("fetch: %s -> %s: %d files, %d downloaded (%d bytes), %d already complete", uri, dest, result.files,
             result.downloaded, result.bytes_downloaded, result.skipped)
    if result.size_only:
        log.warning("fetch: %d files of %s checked by size only (ETag not reproducible): %s", len(result.size_only),
                    uri, ", ".join(result.size_only[:5]) + (", ..." if len(result.size_only) > 5 else ""))
    return result


# ------------------------------------------------------------------------------- listing


def _client(uri: str, endpoint: str | None, workers: int) -> Any:
    """One S3 client for all threads; its connection pool is as large as the thread pool.

    A fresh session, not boto3's default one: that one resolves credentials once per process,
    and the environment of this call is what counts.
    """
    import boto3
    from botocore.config import Config

    try:
        return boto3.session.Session().client("s3", endpoint_url=endpoint,
                                              config=Config(max_pool_connections=max(10, workers)))
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise SourceError(f"{uri}: {exc}") from None


def _list(client: Any, uri: str, bucket: str, prefix: str, dest: Path, suffixes: tuple[str, ...],
          endpoint: str | None) -> list[_Remote]:
    """The objects to fetch, in key order, each with its local path checked."""
    remotes: list[_Remote] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith(suffixes):
                    target = dest / _relative_path(uri, prefix, item["Key"], dest)
                    remotes.append(_Remote(item["Key"], target, int(item["Size"]), item.get("ETag", "")))
    except Exception as exc:
        message = describe_error(exc, bucket, endpoint)
        if message is None:
            raise
        raise SourceError(f"{uri}: {message}") from exc
    if not remotes:
        raise SourceError(f"{uri}: no object ending in {' or '.join(suffixes)} under this prefix")
    _check_no_conflicts(uri, remotes, dest)
    return remotes


def _relative_path(uri: str, prefix: str, key: str, dest: Path) -> PurePosixPath:
    """The key's path below the prefix, refused when it is empty, absolute or leaves `dest`."""
    rel = key[len(prefix):]
    parts = rel.split("/")
    if not rel or any(part in ("", ".", "..") for part in parts):
        raise SourceError(f"{uri}: object key {key!r} does not map to a file inside {dest} "
                          "(empty, '.' or '..' path component)")
    return PurePosixPath(*parts)


def _check_no_conflicts(uri: str, remotes: list[_Remote], dest: Path) -> None:
    """Refuse a key whose file would have to be the directory of another key's file."""
    files = {remote.target: remote.key for remote in remotes}
    for remote in remotes:
        for parent in remote.target.parents:
            if parent == dest:
                break
            if parent in files:
                raise SourceError(f"{uri}: object keys {files[parent]!r} and {remote.key!r} map to a file and a "
                                  f"directory of the same name under {dest}")


# ------------------------------------------------------------------------------ one file


def _fetch_one(client: Any, bucket: str, remote: _Remote, endpoint: str | None) -> _Outcome:
    """Keep `remote`'s local file when it verifies, else download it (with retries)."""
    address = f"s3://{bucket}/{remote.key}"
    head = _Head(client, bucket, remote)
    try:
        kept = _keep_local(remote, head)
        if kept is not None:
            _part_path(remote.target).unlink(missing_ok=True)
            return _Outcome(remote.key, downloaded=False, size=remote.size, size_only=kept == SIZE_ONLY)
        return _download_verified(client, bucket, remote, head, address)
    except SourceError:
        raise
    except Exception as exc:
        message = describe_error(exc, bucket, endpoint)
        if message is None:
            raise
        raise SourceError(f"{address}: {message}") from exc


def _keep_local(remote: _Remote, head: _Head) -> str | None:
    """`VERIFIED` or `SIZE_ONLY` when the local file can stay, None when it must be downloaded."""
    if not (remote.target.is_file() and remote.target.stat().st_size == remote.size):
        return None
    check = EtagCheck.for_object(remote.etag, remote.size, head.part_size())
    if check is not None:
        check.update_from_file(remote.target)
    verdict = etag_verdict(check, head.opaque)
    if verdict == MISMATCH:
        log.info("fetch: %s has the listed size but not the listed content; downloading it again", remote.target)
        return None
    return verdict


def _download_verified(client: Any, bucket: str, remote: _Remote, head: _Head, address: str) -> _Outcome:
    """Download to ``.part``, verify, rename; retry a failed verification or a broken-off stream."""
    part = _part_path(remote.target)
    remote.target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            verdict, problem = _download(client, bucket, remote, head, part)
        except Exception as exc:
            part.unlink(missing_ok=True)
            if not is_transient(exc):
                raise
            verdict, problem = MISMATCH, f"download broke off ({type(exc).__name__}: {exc})"
        if verdict != MISMATCH:
            os.replace(part, remote.target)
            return _Outcome(remote.key, downloaded=True, size=remote.size, size_only=verdict == SIZE_ONLY)
        part.unlink(missing_ok=True)
        log.warning("fetch: %s: attempt %d of %d failed: %s", address, attempt, ATTEMPTS, problem)
    raise SourceError(f"{address}: {problem} (after {ATTEMPTS} attempts)")


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _download(client: Any, bucket: str, remote: _Remote, head: _Head, part: Path) -> tuple[str, str]:
    """Stream the object into `part`, hashing it on the way.

    Returns:
        ``(verdict, problem)``: `VERIFIED`, `SIZE_ONLY` or `MISMATCH`, and what differed.
    """
    check = EtagCheck.for_object(remote.etag, remote.size, head.part_size())
    response = client.get_object(Bucket=bucket, Key=remote.key, **({"IfMatch": remote.etag} if remote.etag else {}))
    body, written = response["Body"], 0
    try:
        with open(part, "wb") as fh:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                fh.write(chunk)
                written += len(chunk)
                if check is not None:
                    check.update(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        body.close()
    if written != remote.size:
        return MISMATCH, f"size differs: got {written} bytes, listed {remote.size}"
    verdict = etag_verdict(check, lambda: opaque_etag(response))
    return verdict, "" if check is None else f"content differs from ETag {remote.etag} ({check.describe()})"


class _Head:
    """What one HEAD request says about an object: asked at most once, and only when needed.

    For a multipart ETag it asks for part 1 (``PartNumber=1``), whose length is the part size
    the uploader used; a store that refuses that (or the HEAD) leaves the part size unknown.
    """

    def __init__(self, client: Any, bucket: str, remote: _Remote) -> None:
        self._client, self._bucket, self._remote = client, bucket, remote
        self._multipart = MULTIPART_ETAG.match(remote.etag.strip('"').lower()) is not None
        self._response: dict[str, Any] | None = None

    def part_size(self) -> int | None:
        """The object's multipart part size, or None (not multipart, or not told)."""
        if not self._multipart:
            return None
        response = self._get()
        return int(response["ContentLength"]) if response.get("PartsCount") and "ContentLength" in response else None

    def opaque(self) -> bool:
        return opaque_etag(self._get())

    def _get(self) -> dict[str, Any]:
        if self._response is None:
            from botocore.exceptions import ClientError

            extra = {"PartNumber": 1} if self._multipart else {}
            try:
                self._response = self._client.head_object(Bucket=self._bucket, Key=self._remote.key, **extra)
            except ClientError as exc:
                log.debug("fetch: HEAD %s failed: %s", self._remote.key, exc)
                self._response = {}
        return self._response
