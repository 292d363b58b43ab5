"""The slice store under DVC with an S3 remote, and its content hash in MLflow.

A throwaway git + DVC project holds the ``prepare`` stage as the project's ``dvc.yaml`` has
it (``synthmri prepare --profile ${profile} --source ${source} --out data/slices``, the store
a DVC-tracked stage output) on four tiny phantom subjects. ``dvc repro`` builds the store
twice, with two subject-shuffle seeds, and each version is committed to git and pushed to an
S3 remote played by ``moto_server`` on 127.0.0.1. The tests then check what landed in the
bucket, wipe the store and the DVC cache, pull each git revision back byte for byte, and run
``synthmri share`` on pulled stores to see that their content hashes reach the MLflow run.

Credentials reach DVC only through the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY);
``.dvc/config`` holds the URL and the endpoint, never a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from conftest import MotoS3
from synthmri.data.store import SliceStore

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")
pytest.importorskip("dvc_s3")

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
pytestmark = pytest.mark.skipif(not Path(DVC).exists(), reason="needs the dvc command next to the interpreter")

REPO = Path(__file__).resolve().parents[2]
TINY_PROFILE = REPO / "tests" / "profiles" / "tiny.yaml"
BUCKET = "synthmri-dvc"
PREFIX = "dvc"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
STORE = Path("data") / "slices"
#: The project's prepare stage (dvc.yaml), with the CLI run by this interpreter. Four subjects,
#: one held out, shards of 16 slices: a few shards per version, in well under a second.
PREPARE_CMD = ("{python} -m synthmri prepare --profile ${{profile}} --source ${{source}} --out data/slices "
               "--seed ${{seed}} --set data.test_subjects=1 --set data.shard_size=16")


# ------------------------------------------------------------------------------------ helpers


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str = "", timeout: float = 120) -> str:
    """Run `cmd` in `cwd`; fail with its output (and `what`, e.g. the moto log) on a non-zero exit."""
    try:
        result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}\n{what}")
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} (in {cwd}) exited with {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
                    f"stderr:\n{result.stderr[-4000:]}\n{what}")
    return result.stdout


def _digests(root: Path, algorithm: str = "sha256") -> dict[str, str]:
    """Relative path -> hex digest of every file under `root`."""
    return {path.relative_to(root).as_posix(): hashlib.new(algorithm, path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _object_key(md5: str) -> str:
    """Where DVC 3 keeps an object (a file, or a directory listing ending in ``.dir``) on a remote."""
    return f"{PREFIX}/files/md5/{md5[:2]}/{md5[2:]}"


# ------------------------------------------------------------------------------------ S3


@dataclass
class S3:
    """The session's moto_server (tests/conftest.py) with the bucket DVC pushes to."""

    server: MotoS3

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self) -> Any:
        return self.server.client()

    def keys(self) -> set[str]:
        """Every key under the DVC prefix of the bucket."""
        found: set[str] = set()
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
            found.update(item["Key"] for item in page.get("Contents", []))
        return found

    def log(self) -> str:
        return self.server.logs()


@pytest.fixture(scope="module")
def s3(moto_s3: MotoS3) -> S3:
    moto_s3.bucket(BUCKET)
    return S3(moto_s3)


# ------------------------------------------------------------------------------------ project


@dataclass
class Version:
    """One committed version of the store."""

    seed: int
    rev: str
    snapshot: Path  # a copy of data/slices right after `dvc repro`
    lock: dict  # dvc.lock at `rev`
    keys_after_push: set[str]

    @property
    def out(self) -> dict:
        """The data/slices entry of the prepare stage in dvc.lock."""
        (out,) = self.lock["stages"]["prepare"]["outs"]
        assert out["path"] == STORE.as_posix()
        return out

    @property
    def content_hash(self) -> str:
        return json.loads((self.snapshot / "manifest.json").read_text())["content_hash"]


@dataclass
class Project:
    """The git + DVC project, how to run commands in it, and the versions it committed."""

    root: Path
    env: dict[str, str]
    s3: S3
    branch: str
    versions: list[Version] = field(default_factory=list)
    status_before_second_repro: str = ""

    def dvc(self, *args: str, timeout: float = 120) -> str:
        return _run([DVC, *args], self.root, self.env, self.s3.log(), timeout)

    def git(self, *args: str) -> str:
        return _run(["git", *args], self.root, self.env).strip()

    def synthmri(self, *args: str, cwd: Path | None = None) -> str:
        return _run([sys.executable, "-m", "synthmri", *args], cwd or self.root, self.env, timeout=300)

    def wipe(self) -> None:
        """Remove the store and the whole DVC cache: what comes back must come from S3."""
        shutil.rmtree(self.root / STORE, ignore_errors=True)
        shutil.rmtree(self.root / ".dvc" / "cache", ignore_errors=True)

    def checkout(self, rev: str) -> None:
        """git checkout `rev`, wipe store and cache, `dvc pull` it from the remote."""
        self.git("checkout", "-q", rev)
        self.wipe()
        self.dvc("pull")


def _environment(tmp: Path, s3: S3) -> dict[str, str]:
    """This interpreter's environment, isolated: S3 credentials only from here, no user or
    system DVC/git/AWS configuration, no MLflow or proxy settings from outside."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "DVC_", "GIT_")) and k.lower() not in ("http_proxy", "https_proxy",
                                                                                        "all_proxy")}
    for name in ("dvc-global", "dvc-system", "dvc-site-cache"):
        (tmp / name).mkdir(exist_ok=True)
    env.update(CREDENTIALS)
    env.update({
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "DVC_NO_ANALYTICS": "1",
        "DVC_STUDIO_OFFLINE": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(tmp / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(tmp / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site-cache"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _repro_and_commit(project: Project, seed: int, snapshots: Path) -> Version:
    (project.root / "params.yaml").write_text(yaml.safe_dump({"profile": "tiny", "source": "brats", "seed": seed}))
    project.dvc("repro", "prepare")
    snapshot = snapshots / f"seed-{seed}"
    shutil.copytree(project.root / STORE, snapshot)
    project.git("add", "-A")
    project.git("commit", "-q", "-m", f"slice store, shuffle seed {seed}")
    rev = project.git("rev-parse", "HEAD")
    project.dvc("push")
    lock = yaml.safe_load(project.git("show", f"{rev}:dvc.lock"))
    return Version(seed=seed, rev=rev, snapshot=snapshot, lock=lock, keys_after_push=project.s3.keys())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, s3: S3) -> Project:
    """Two versions of the store (shuffle seeds 0 and 1), each committed and pushed."""
    tmp = tmp_path_factory.mktemp("dvc-project")
    root = tmp / "repo"
    root.mkdir()
    project = Project(root=root, env=_environment(tmp, s3), s3=s3, branch="main")
    project.git("init", "-q", "-b", project.branch)
    for key, value in (("user.name", "synthmri tests"), ("user.email", "tests@synthmri.invalid"),
                       ("commit.gpgsign", "false")):
        project.git("config", "--local", key, value)
    project.dvc("init", "-q")
    project.dvc("remote", "add", "-d", "storage", f"s3://{BUCKET}/{PREFIX}")
    project.dvc("remote", "modify", "storage", "endpointurl", s3.endpoint)

    (root / "configs").mkdir()
    shutil.copy(TINY_PROFILE, root / "configs" / "tiny.yaml")
    project.synthmri("phantom", "--profile", "tiny", "--out", "brats", "--subjects", "4", "--seed", "0")
    (root / ".gitignore").write_text("/brats\n")  # the source is a dependency, not versioned here
    stage = {"desc": "the paper's slicing into the slice store, split by subject",
             "cmd": PREPARE_CMD.format(python=sys.executable),
             "deps": ["${source}", "configs/${profile}.yaml"],
             "outs": [STORE.as_posix()]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": stage}}, sort_keys=False))

    snapshots = tmp / "snapshots"
    project.versions.append(_repro_and_commit(project, 0, snapshots))
    (root / "params.yaml").write_text(yaml.safe_dump({"profile": "tiny", "source": "brats", "seed": 1}))
    project.status_before_second_repro = project.dvc("status", "prepare")
    project.versions.append(_repro_and_commit(project, 1, snapshots))
    return project


@contextlib.contextmanager
def _on_branch(project: Project) -> Iterator[None]:
    """Leave the project on its branch with the newest store pulled, whatever the test did."""
    try:
        yield
    finally:
        project.git("checkout", "-q", project.branch)
        project.dvc("pull")


# ------------------------------------------------------------------------------------ tests


def test_push_uploads_every_file_of_the_store_and_its_listing(project: Project):
    first, second = project.versions
    for version, keys_before in ((first, set()), (second, first.keys_after_push)):
        files = _digests(version.snapshot, "md5")
        names = set(files)
        assert {"manifest.json", "index.csv"} <= names and any(n.startswith("shards/shard-") for n in names), names
        manifest = json.loads((version.snapshot / "manifest.json").read_text())
        assert {f"shards/{s['name']}" for s in manifest["shards"]} == {n for n in names if n.startswith("shards/")}
        assert len(manifest["shards"]) > 1, "the test store should have several shards"
        assert version.out["nfiles"] == len(files) and version.out["md5"].endswith(".dir")
        expected = {_object_key(md5) for md5 in files.values()} | {_object_key(version.out["md5"])}
        # the store's files plus the .dir listing: nothing more, nothing less (files shared with an
        # earlier version are stored once)
        assert version.keys_after_push - keys_before == expected - keys_before, project.s3.log()
        assert expected <= version.keys_after_push
    assert len(first.keys_after_push) == len(set(_digests(first.snapshot, "md5").values())) + 1

    config = (project.root / ".dvc" / "config").read_text()
    assert f"s3://{BUCKET}/{PREFIX}" in config and project.s3.endpoint in config
    for secret in ("access_key_id", "secret_access_key", "session_token", CREDENTIALS["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in config, f".dvc/config holds {secret!r}:\n{config}"
    assert not (project.root / ".dvc" / "config.local").exists()
    assert "config.local" in (project.root / ".dvc" / ".gitignore").read_text()


def test_pull_restores_each_revision_byte_for_byte_from_s3(project: Project):
    with _on_branch(project):
        for version in reversed(project.versions):  # the newest, then the old revision
            project.checkout(version.rev)
            store = project.root / STORE
            assert _digests(store) == _digests(version.snapshot), f"seed {version.seed}: pulled bytes differ"
            pulled = SliceStore(store, verify=True)  # each shard against its sha256 in the manifest
            assert pulled.content_hash == version.content_hash
            assert json.loads(project.dvc("status", "--json")) == {}
            assert json.loads(project.dvc("status", "--cloud", "--json")) == {}


def test_a_new_seed_is_a_new_distinguishable_version(project: Project):
    first, second = project.versions
    status = project.status_before_second_repro
    # ${seed} is interpolated into the command (as dvc.yaml does with ${profile} and ${source}),
    # so DVC sees the new seed as a changed command, not as a tracked parameter.
    assert "prepare" in status and "changed command" in status, status
    assert "--seed 0 " in first.lock["stages"]["prepare"]["cmd"]
    assert "--seed 1 " in second.lock["stages"]["prepare"]["cmd"]
    assert first.lock["stages"]["prepare"]["deps"] == second.lock["stages"]["prepare"]["deps"]
    assert first.out["md5"] != second.out["md5"]
    assert first.content_hash != second.content_hash
    assert _digests(first.snapshot) != _digests(second.snapshot)

    # The working tree's store (the newest) no longer matches the old revision's dvc.lock.
    with _on_branch(project):
        project.git("checkout", "-q", first.rev)
        assert "modified" in project.dvc("status", "prepare")
        project.dvc("checkout")  # from the local cache this time
        assert _digests(project.root / STORE) == _digests(first.snapshot)
        assert json.loads(project.dvc("status", "--json")) == {}


def test_share_run_carries_the_content_hashes_of_the_versioned_stores(project: Project, tmp_path: Path):
    """``share`` reads a real and a synthetic store; both hashes must be tags and params of its run.

    (train-generator, train-segmenter, evaluate-synthetic and evaluate-segmenter already have
    such assertions elsewhere; share had none.)
    """
    from mlflow.tracking import MlflowClient

    first, second = project.versions
    project.dvc("checkout")  # the branch's (newest) store; the pull test shows it equals what S3 holds
    real, old = project.root / STORE, first.snapshot  # the older version stands in for a synthetic store
    real_hash = json.loads((real / "manifest.json").read_text())["content_hash"]
    old_hash = json.loads((old / "manifest.json").read_text())["content_hash"]
    assert (real_hash, old_hash) == (second.content_hash, first.content_hash)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project.synthmri("share", "--profile", str(project.root / "configs" / "tiny.yaml"), "--synthetic", str(old),
                     "--real", str(real), "--out", str(tmp_path / "shared"), "--set", f"tracking.tracking_uri={uri}",
                     cwd=tmp_path)  # MLflow's default artifact root lands in tmp_path/mlruns

    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`synthmri.stage` = 'share'")
    assert len(runs) == 1, [r.data.tags for r in runs]
    tags, params = runs[0].data.tags, runs[0].data.params
    assert tags["synthmri.data.real"] == real_hash and params["data.real.hash"] == real_hash
    assert tags["synthmri.data.synthetic"] == old_hash and params["data.synthetic.hash"] == old_hash
    assert params["data.real.slices"] == str(json.loads((real / "manifest.json").read_text())["counts"]["slices"])
