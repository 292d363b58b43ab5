"""S3 ETags: recompute an object's ETag from its bytes to verify a download.

A plain ETag is the MD5 of the content; a multipart one (``<md5>-<parts>``) the MD5 of the
parts' MD5s, so checking it needs the uploader's part size: the object's own (from a HEAD of
part 1) when known, else the usual tool settings in :data:`MULTIPART_PART_SIZES`. Objects
encrypted with KMS or customer keys have ETags that are no MD5 at all: only their size can
be checked.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Callable

MiB = 1024 * 1024
#: Part sizes tried, in order, to recompute a multipart ETag: boto3's default, the S3 minimum
#: (also ``aws s3``'s old default), then common tool settings. The size implied by the part
#: count is tried last.
MULTIPART_PART_SIZES: tuple[int, ...] = (8 * MiB, 5 * MiB, 16 * MiB, 64 * MiB)
CHUNK = 1 * MiB

PLAIN_ETAG = re.compile(r"^[0-9a-f]{32}$")
MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-([0-9]+)$")
#: ETags of objects encrypted with KMS keys or customer keys are not the MD5 of their content.
OPAQUE_ETAG_ENCRYPTION = ("aws:kms", "aws:kms:dsse")


VERIFIED, SIZE_ONLY, MISMATCH = "verified", "size-only", "mismatch"


def etag_verdict(check: EtagCheck | None, opaque: Callable[[], bool]) -> str:
    """`VERIFIED`, `SIZE_ONLY` (the ETag cannot be reproduced) or `MISMATCH`, for hashed content.

    A plain or exactly known multipart ETag that does not match is a mismatch, unless the
    object's encryption makes its ETag something other than an MD5 (`opaque`, asked last).
    """
    if check is not None and check.matches():
        return VERIFIED
    if check is None or not check.exact or opaque():
        return SIZE_ONLY
    return MISMATCH


def opaque_etag(response: dict[str, Any]) -> bool:
    """Whether a HEAD/GET response says the ETag is not the content's MD5 (KMS or customer-key encryption)."""
    return (response.get("ServerSideEncryption") in OPAQUE_ETAG_ENCRYPTION
            or response.get("SSECustomerAlgorithm") is not None)


class PartMd5:
    """The multipart ETag of a stream cut into parts of `part_size` bytes."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.digests: list[bytes] = []
        self.current = hashlib.md5(usedforsecurity=False)
        self.filled = 0

    def update(self, data: memoryview) -> None:
        while data:
            take = min(len(data), self.part_size - self.filled)
            self.current.update(data[:take])
            self.filled += take
            data = data[take:]
            if self.filled == self.part_size:
                self.digests.append(self.current.digest())
                self.current, self.filled = hashlib.md5(usedforsecurity=False), 0

    def etag(self) -> str:
        digests = self.digests + ([self.current.digest()] if self.filled else [])
        return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


class EtagCheck:
    """Hashes a stream once and says whether it reproduces an S3 ETag.

    `exact` is False when the part sizes are guesses: then a mismatch proves nothing.
    """

    def __init__(self, etag: str, part_sizes: list[int], *, exact: bool) -> None:
        self.etag = etag
        self.exact = exact
        self.whole = None if part_sizes else hashlib.md5(usedforsecurity=False)
        self.parts = [PartMd5(size) for size in part_sizes]

    @classmethod
    def for_object(cls, listed_etag: str, size: int, part_size: int | None) -> EtagCheck | None:
        """The check for an object, or None when its ETag is not an MD5 of any kind (size-only).

        Args:
            listed_etag: the ETag as listed (quotes allowed).
            size: the object's size.
            part_size: the multipart part size when known (a HEAD of part 1); otherwise the sizes in
                `MULTIPART_PART_SIZES` and the one implied by the part count are tried.
        """
        etag = listed_etag.strip('"').lower()
        if PLAIN_ETAG.match(etag):
            return cls(etag, [], exact=True)
        multipart = MULTIPART_ETAG.match(etag)
        if multipart is None:
            return None
        count = int(multipart.group(1))
        if part_size and math.ceil(size / part_size) == count:
            return cls(etag, [part_size], exact=True)
        implied = math.ceil(size / count / MiB) * MiB if count else 0
        guesses = [p for p in dict.fromkeys((*MULTIPART_PART_SIZES, implied)) if p and math.ceil(size / p) == count]
        return cls(etag, guesses, exact=False) if guesses else None

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        if self.whole is not None:
            self.whole.update(view)
        for part in self.parts:
            part.update(view)

    def update_from_file(self, path: Path) -> EtagCheck:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                self.update(chunk)
        return self

    def matches(self) -> bool:
        if self.whole is not None:
            return self.whole.hexdigest() == self.etag
        return any(part.etag() == self.etag for part in self.parts)

    def describe(self) -> str:
        if self.whole is not None:
            return f"content md5 {self.whole.hexdigest()}"
        return "recomputed " + ", ".join(f"{part.part_size / MiB:g} MiB parts: {part.etag()}" for part in self.parts)
