"""``synthmri.data.sources`` against a real S3 API: ``moto_server`` on a free local port.

The bucket holds a small fake BraTS tree (random bytes, not NIfTI: nothing here parses them)
under ``BraTS2021/``, with a README that must be ignored, a sibling prefix that must not match,
one object uploaded in 5 MiB multipart parts and one in 6 MiB parts (an ETag that the guessed
part sizes cannot reproduce: the part size comes from a HEAD of part 1, or the file is checked
by size only where the store will not say), and one KMS-encrypted object. ``many/`` holds 20
small files for the concurrency test; ``conflict/`` and ``escape/`` hold keys that cannot be
mirrored safely.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

from conftest import MotoS3  # noqa: E402
from synthmri.data.sources import FetchResult, SourceError, fetch_s3, is_s3_uri, parse_s3_uri  # noqa: E402


MiB = 1024 * 1024
BUCKET = "brats"
URI = f"s3://{BUCKET}/BraTS2021"
SUBJECTS = [f"BraTS2021_{n:05d}" for n in range(3)]
MODALITIES = ("t1", "t1ce", "t2", "flair", "seg")
PLAIN_KEY = "BraTS2021/BraTS2021_00000/BraTS2021_00000_t1.nii.gz"
MULTIPART_KEY = "BraTS2021/BraTS2021_00001/BraTS2021_00001_flair.nii.gz"  # 5 MiB parts
ODD_PARTS_KEY = "BraTS2021/BraTS2021_00002/BraTS2021_00002_flair.nii.gz"  # 6 MiB parts
KMS_KEY = "BraTS2021/BraTS2021_00002/BraTS2021_00002_seg.nii.gz"  # SSE-KMS: ETag need not be an MD5
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
_REAL_SESSION_CLIENT = boto3.session.Session.client


@dataclass
class S3:
    """The session's moto_server (tests/conftest.py), what was uploaded, and its log."""

    server: MotoS3
    scratch: Path
    tree: dict[str, bytes] = field(default_factory=dict)  # path below BraTS2021/ -> bytes
    many: dict[str, bytes] = field(default_factory=dict)  # path below many/ -> bytes

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self) -> Any:
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint)

    def logs(self) -> str:
        return self.server.logs()


# ------------------------------------------------------------------------------- fixtures


def _upload(s3: S3) -> None:
    from boto3.s3.transfer import TransferConfig

    client, rng = s3.client(), random.Random(2021)
    for subject in SUBJECTS:
        for modality in MODALITIES:
            rel = f"{subject}/{subject}_{modality}.nii.gz"
            s3.tree[rel] = rng.randbytes(rng.randint(1000, 6000))
    s3.tree["BraTS2021_00000/extra/BraTS2021_00000_t1_raw.nii"] = rng.randbytes(3000)  # nested, uncompressed
    s3.tree[MULTIPART_KEY.removeprefix("BraTS2021/")] = rng.randbytes(11 * MiB + 12345)
    s3.tree[ODD_PARTS_KEY.removeprefix("BraTS2021/")] = rng.randbytes(13 * MiB + 777)
    for rel, data in s3.tree.items():
        key = f"BraTS2021/{rel}"
        part_size = {MULTIPART_KEY: 5 * MiB, ODD_PARTS_KEY: 6 * MiB}.get(key)
        if part_size is None:
            client.put_object(Bucket=BUCKET, Key=key, Body=data, **({"ServerSideEncryption": "aws:kms"}
                                                                     if key == KMS_KEY else {}))
        else:
            path = s3.scratch / "upload.bin"
            path.write_bytes(data)
            client.upload_file(str(path), BUCKET, key,
                               Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=part_size))
    extra = {"BraTS2021/README.txt": b"not a volume", "BraTS2021/BraTS2021_00000/notes.txt": b"ignore me",
             "BraTS2021-extra/BraTS2021_99999/BraTS2021_99999_t1.nii.gz": b"sibling prefix, must not match",
             "empty/README.txt": b"no volumes here",
             "conflict/a.nii": b"file", "conflict/a.nii/b.nii": b"under a file",
             "escape/../outside.nii.gz": b"leaves the destination"}
    for key, data in extra.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    for n in range(20):
        s3.many[f"d{n % 3}/f{n:02d}.nii.gz"] = rng.randbytes(rng.randint(500, 4000))
    for rel, data in s3.many.items():
        client.put_object(Bucket=BUCKET, Key=f"many/{rel}", Body=data)
    etags = {item["Key"]: item["ETag"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix="BraTS2021/")["Contents"]}
    assert etags[MULTIPART_KEY].endswith('-3"') and etags[ODD_PARTS_KEY].endswith('-3"'), etags


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, moto_s3: MotoS3) -> Iterator[S3]:
    """moto_server with the bucket filled; the test process gets fake credentials and no endpoint."""
    root = tmp_path_factory.mktemp("sources")
    with pytest.MonkeyPatch.context() as env:
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            env.delenv(name)
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        env.setenv("AWS_CONFIG_FILE", str(root / "no-config"))  # keep the developer's ~/.aws out
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(root / "no-credentials"))
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        moto_s3.bucket(BUCKET)
        server = S3(moto_s3, root)
        _upload(server)
        yield server


def _tree(root: Path) -> dict[str, bytes]:
    """Every file below `root`, relative POSIX path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Spy:
    """Wraps ``boto3.session.Session.client``: counts clients, records get_object calls and their threads, can corrupt bodies."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, corrupt: dict[str, str] | None = None,
                 delay_s: float = 0.0, refuse_part_heads: bool = False) -> None:
        self.corrupt = corrupt or {}  # key -> "flip" | "truncate"
        self.delay_s = delay_s
        self.refuse_part_heads = refuse_part_heads  # a store without HEAD ?partNumber=
        self.clients = 0
        self.calls: list[str] = []
        self.threads: set[int] = set()
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        real = _REAL_SESSION_CLIENT  # not a Spy installed earlier in the same test

        def make(session: Any, *args: Any, **kwargs: Any) -> Any:
            self.clients += 1
            return _SpyClient(real(session, *args, **kwargs), self)

        monkeypatch.setattr(boto3.session.Session, "client", make)


class _SpyClient:
    def __init__(self, client: Any, spy: Spy) -> None:
        self._client, self._spy = client, spy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def head_object(self, **kwargs: Any) -> Any:
        if self._spy.refuse_part_heads and "PartNumber" in kwargs:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "partNumber"}}, "HeadObject")
        return self._client.head_object(**kwargs)

    def get_object(self, **kwargs: Any) -> Any:
        spy = self._spy
        with spy._lock:
            spy.calls.append(kwargs["Key"])
            spy.threads.add(threading.get_ident())
            spy.in_flight += 1
            spy.max_in_flight = max(spy.max_in_flight, spy.in_flight)
        try:
            time.sleep(spy.delay_s)
            response = self._client.get_object(**kwargs)
        finally:
            with spy._lock:
                spy.in_flight -= 1
        mode = spy.corrupt.get(kwargs["Key"])
        if mode is not None:
            response["Body"] = _Damaged(response["Body"].read(), mode)
        return response


class _Damaged:
    """A body with its first byte flipped, or its last byte missing."""

    def __init__(self, data: bytes, mode: str) -> None:
        data = bytes([data[0] ^ 0xFF]) + data[1:] if mode == "flip" else data[:-1]
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return chunk

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------- tests


def test_full_download_with_endpoint_argument(s3: S3, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    result = fetch_s3(URI, tmp_path / "src", endpoint_url=s3.endpoint, progress=lambda d, t: calls.append((d, t)))
    n = len(s3.tree)
    assert result == FetchResult(root=tmp_path / "src", files=n, downloaded=n, skipped=0,
                                 bytes_downloaded=sum(map(len, s3.tree.values())), size_only=[])
    assert _tree(tmp_path / "src") == s3.tree  # byte-identical; README/notes/sibling prefix absent, no .part
    assert calls == [(i, n) for i in range(1, n + 1)]


def test_size_only_when_the_part_size_is_unknown(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Spy(monkeypatch, refuse_part_heads=True)
    dest = tmp_path / "src"
    first = fetch_s3(URI, dest, endpoint_url=s3.endpoint)
    assert first.size_only == [ODD_PARTS_KEY]  # 5 MiB parts are guessed right, 6 MiB parts are not
    assert _tree(dest) == s3.tree
    local = dest / ODD_PARTS_KEY.removeprefix("BraTS2021/")
    local.write_bytes(bytes(local.stat().st_size))  # right size, wrong bytes: undetectable by size
    again = fetch_s3(URI, dest, endpoint_url=s3.endpoint)
    assert (again.downloaded, again.skipped, again.size_only) == (0, len(s3.tree), [ODD_PARTS_KEY])


def test_kms_encrypted_object_with_a_non_md5_etag_is_size_only(s3: S3, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    Spy(monkeypatch, corrupt={KMS_KEY: "flip"})  # bytes that do not hash to the ETag, as with KMS on AWS
    result = fetch_s3(URI, tmp_path / "src", endpoint_url=s3.endpoint)
    assert result.size_only == [KMS_KEY] and result.downloaded == len(s3.tree)


def test_endpoint_from_environment(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    result = fetch_s3(f"{URI}/", tmp_path / "src", workers=3)  # trailing slash: same prefix
    assert (result.files, result.downloaded) == (len(s3.tree), len(s3.tree))
    assert _tree(tmp_path / "src") == s3.tree


def test_resume_skips_complete_files_and_refetches_broken_ones(s3: S3, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "src"
    fetch_s3(URI, dest, endpoint_url=s3.endpoint)
    spy = Spy(monkeypatch)
    again = fetch_s3(URI, dest, endpoint_url=s3.endpoint)
    assert (again.downloaded, again.skipped, again.bytes_downloaded) == (0, len(s3.tree), 0)
    assert spy.calls == [] and spy.clients == 1

    deleted, truncated = PLAIN_KEY.removeprefix("BraTS2021/"), MULTIPART_KEY.removeprefix("BraTS2021/")
    (dest / deleted).unlink()
    (dest / f"{deleted}.part").write_bytes(s3.tree[deleted][: len(s3.tree[deleted]) // 2])  # a killed download
    with open(dest / truncated, "r+b") as fh:
        fh.truncate(5 * MiB)
    resumed = fetch_s3(URI, dest, endpoint_url=s3.endpoint)
    assert (resumed.downloaded, resumed.skipped) == (2, len(s3.tree) - 2)
    assert sorted(spy.calls) == sorted([PLAIN_KEY, MULTIPART_KEY])
    assert resumed.bytes_downloaded == len(s3.tree[deleted]) + len(s3.tree[truncated])
    assert _tree(dest) == s3.tree  # the .part is gone


@pytest.mark.parametrize("key", [PLAIN_KEY, MULTIPART_KEY, ODD_PARTS_KEY], ids=["plain", "5MiB-parts", "6MiB-parts"])
def test_same_size_different_content_is_replaced(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 key: str) -> None:
    dest = tmp_path / "src"
    fetch_s3(URI, dest, endpoint_url=s3.endpoint)
    local = dest / key.removeprefix("BraTS2021/")
    data = bytearray(local.read_bytes())
    data[len(data) // 2] ^= 0x01
    local.write_bytes(bytes(data))
    spy = Spy(monkeypatch)
    result = fetch_s3(URI, dest, endpoint_url=s3.endpoint)
    assert (result.downloaded, spy.calls) == (1, [key])
    assert _tree(dest) == s3.tree


@pytest.mark.parametrize(("key", "mode", "said"), [(PLAIN_KEY, "flip", "content differs from ETag"),
                                                    (ODD_PARTS_KEY, "flip", "content differs from ETag"),
                                                    (PLAIN_KEY, "truncate", "size differs")])
def test_download_failing_verification_raises_and_leaves_nothing(s3: S3, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 key: str, mode: str, said: str) -> None:
    spy = Spy(monkeypatch, corrupt={key: mode})
    dest = tmp_path / "src"
    with pytest.raises(SourceError, match=said) as failure:
        fetch_s3(URI, dest, endpoint_url=s3.endpoint, workers=2)
    assert f"s3://{BUCKET}/{key}" in str(failure.value) and "3 attempts" in str(failure.value)
    assert spy.calls.count(key) == 3
    local = dest / key.removeprefix("BraTS2021/")
    assert not local.exists() and not local.with_name(local.name + ".part").exists()


@pytest.mark.parametrize("uri", ["s3://", "s3:/x", "http://x", "s3:///prefix", "s3://bad bucket/p"])
def test_malformed_uri_is_named(uri: str) -> None:
    assert is_s3_uri(uri) == uri.startswith("s3://")
    with pytest.raises(SourceError, match="^" + uri.replace("/", "/")):
        parse_s3_uri(uri)
    with pytest.raises(SourceError) as failure:
        fetch_s3(uri, Path("unused"))
    assert str(failure.value).startswith(f"{uri}: ")


def test_parse_normalises_prefix() -> None:
    assert parse_s3_uri("s3://b") == ("b", "")
    assert parse_s3_uri("s3://b/") == ("b", "")
    assert parse_s3_uri("s3://b/p") == parse_s3_uri("s3://b/p/") == ("b", "p/")
    assert parse_s3_uri("s3://b/p/q") == ("b", "p/q/")
    assert not is_s3_uri(Path("s3://b/p"))


@pytest.mark.parametrize(("uri", "said"), [
    ("s3://no-such-bucket/BraTS2021", "bucket 'no-such-bucket' does not exist"),
    (f"s3://{BUCKET}/empty", "no object ending in .nii or .nii.gz under this prefix"),
    (f"s3://{BUCKET}/nothing-here", "no object ending in .nii or .nii.gz under this prefix"),
    (f"s3://{BUCKET}/conflict", "'conflict/a.nii' and 'conflict/a.nii/b.nii' map to a file and a directory"),
    (f"s3://{BUCKET}/escape", "'escape/../outside.nii.gz' does not map to a file inside"),
])
def test_listing_errors_are_named(s3: S3, tmp_path: Path, uri: str, said: str) -> None:
    with pytest.raises(SourceError) as failure:
        fetch_s3(uri, tmp_path / "src", endpoint_url=s3.endpoint)
    assert str(failure.value).startswith(f"{uri}: ") and said in str(failure.value)
    assert not (tmp_path / "src").exists()


def test_missing_credentials_are_named(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(SourceError, match=f"^{URI}: no credentials found"):
        fetch_s3(URI, tmp_path / "src", endpoint_url=s3.endpoint)


def test_unreachable_endpoint_is_named(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retry back-off on a refused connection
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(SourceError, match=f"^{URI}: cannot reach the S3 endpoint {endpoint}"):
        fetch_s3(URI, tmp_path / "src", endpoint_url=endpoint)


def test_concurrent_download_matches_sequential(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{BUCKET}/many"
    sequential_spy = Spy(monkeypatch, delay_s=0.01)
    sequential = fetch_s3(uri, tmp_path / "one", endpoint_url=s3.endpoint, workers=1)
    concurrent_spy = Spy(monkeypatch, delay_s=0.01)
    concurrent = fetch_s3(uri, tmp_path / "four", endpoint_url=s3.endpoint, workers=4)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "four") == s3.many
    assert (sequential.files, sequential.downloaded, sequential.bytes_downloaded, sequential.size_only) == \
        (concurrent.files, concurrent.downloaded, concurrent.bytes_downloaded, concurrent.size_only) == \
        (20, 20, sum(map(len, s3.many.values())), [])
    assert sequential_spy.clients == concurrent_spy.clients == 1  # one client shared by the threads
    assert len(sequential_spy.threads) == sequential_spy.max_in_flight == 1
    assert 1 < concurrent_spy.max_in_flight <= 4 and len(concurrent_spy.threads) > 1


def test_workers_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="workers must be at least 1"):
        fetch_s3(URI, tmp_path, workers=0)
