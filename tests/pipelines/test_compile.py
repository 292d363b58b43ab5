"""The Kubeflow pipelines compile, and their components call the CLI exactly as it is.

These tests read the compiled pipeline spec (what the cluster runs), not the Python
objects: every executor must run ``synthmri <verb>`` in the pinned project image with
flags that verb's parser accepts, and the DAG must order the stages as docs/design.md does.
"""

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

pytest.importorskip("kfp", reason="the kfp extra is not installed")

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # components/ and pipelines/ live at the project root
    sys.path.insert(0, str(REPO))


from pipelines import PIPELINES  # noqa: E402
from pipelines.cli import compile_pipeline  # noqa: E402
from synthmri import __version__  # noqa: E402
from synthmri.cli import build_parser, main  # noqa: E402
from synthmri.config import Config, flatten  # noqa: E402

STAGE_VERBS = {
    "prepare", "grid", "train-generator", "generate", "evaluate-synthetic", "share", "train-segmenter",
    "evaluate-segmenter", "gather", "promote", "report",
}
GPU_VERBS = {"train-generator", "generate", "evaluate-synthetic", "share", "train-segmenter", "evaluate-segmenter"}
S3_VERBS = {"prepare", "evaluate-synthetic"}
UNTRACKED_VERBS = {"grid", "gather"}
PARALLELISM = 4


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


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, dict]:
    """(name, pipeline spec, Kubernetes platform spec) of each pipeline, compiled to YAML and read back."""
    path = compile_pipeline(request.param, tmp_path_factory.mktemp("compiled") / f"{request.param}.yaml", PARALLELISM)
    spec, platform = yaml.safe_load_all(path.read_text())
    return request.param, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def spec(compiled: tuple[str, dict, dict]) -> dict:
    return compiled[1]


@pytest.fixture(scope="module")
def platform(compiled: tuple[str, dict, dict]) -> dict:
    return compiled[2]


@pytest.fixture(scope="module")
def dag(spec: dict) -> Dag:
    return Dag(spec)


# ---------------------------------------------------------------------------- components


def test_every_component_has_an_executor(spec: dict) -> None:
    leaf_components = {name: c for name, c in spec["components"].items() if "dag" not in c}
    assert leaf_components
    for name, component in leaf_components.items():
        assert component["executorLabel"] in executors(spec), name


def test_pipelines_run_every_stage(spec: dict) -> None:
    assert {verb_of(e) for e in executors(spec).values()} == STAGE_VERBS


def test_containers_run_synthmri_verbs(spec: dict) -> None:
    verbs = verb_parsers()
    for label, executor in executors(spec).items():
        command = executor["container"]["command"]
        assert command[0] == "synthmri" and len(command) == 2, (label, command)
        assert command[1] in verbs, f"{label}: unknown verb {command[1]!r}"


def test_args_use_only_flags_the_verb_accepts(spec: dict) -> None:
    verbs = verb_parsers()
    for label, executor in executors(spec).items():
        parser = verbs[verb_of(executor)]
        accepted = {opt for action in parser._actions for opt in action.option_strings}
        unknown = [f for f in flags_in(executor["container"]["args"]) if f not in accepted]
        assert not unknown, f"{label} ({verb_of(executor)}) passes flags the CLI lacks: {unknown}"


def test_args_give_every_required_flag(spec: dict) -> None:
    verbs = verb_parsers()
    for label, executor in executors(spec).items():
        parser = verbs[verb_of(executor)]
        given = set(flags_in(executor["container"]["args"]))
        for action in parser._actions:
            if action.required and action.option_strings:
                assert given & set(action.option_strings), f"{label} misses required {action.option_strings}"


def test_config_overrides_name_real_config_keys(spec: dict) -> None:
    known = set(flatten(Config()))
    for label, executor in executors(spec).items():
        for key in set_keys_in(executor["container"]["args"]):
            assert key in known, f"{label}: --set {key}=... is not a config key"


def test_every_stage_gets_the_profile_and_stages_that_track_get_mlflow(spec: dict) -> None:
    for label, executor in executors(spec).items():
        args = executor["container"]["args"]
        assert "--profile" in flags_in(args), label
        if verb_of(executor) not in UNTRACKED_VERBS:
            assert "tracking.tracking_uri" in set_keys_in(args), label


def test_images_are_the_pinned_project_images(spec: dict) -> None:
    pyproject_version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert pyproject_version and pyproject_version.group(1) == __version__
    for label, executor in executors(spec).items():
        suffix = "-cuda" if verb_of(executor) in GPU_VERBS else ""
        assert executor["container"]["image"] == f"ghcr.io/synthmri/synthmri:{__version__}{suffix}", label


def test_every_container_requests_cpu_and_memory(spec: dict) -> None:
    for label, executor in executors(spec).items():
        resources = executor["container"].get("resources", {})
        assert resources.get("resourceCpuRequest") and resources.get("resourceMemoryRequest"), label


def test_every_container_sizes_its_threads_to_its_cpu_request(spec: dict) -> None:
    # Kubernetes CPU quantities: "500m" is half a CPU; torch gets at least one thread, never a core count.
    for label, executor in executors(spec).items():
        container = executor["container"]
        request = container["resources"]["resourceCpuRequest"]
        cpus = float(request[:-1]) / 1000 if request.endswith("m") else float(request)
        env = {item["name"]: item["value"] for item in container.get("env", [])}
        assert env.get("SYNTHMRI_THREADS") == str(max(1, math.ceil(cpus))), label


# ---------------------------------------------------------------------------- Kubernetes placement


def test_exactly_the_gpu_stages_get_an_accelerator_node_selector_and_toleration(spec: dict, platform: dict) -> None:
    for label, executor in executors(spec).items():
        gpu = verb_of(executor) in GPU_VERBS
        accelerator = executor["container"].get("resources", {}).get("accelerator")
        settings = platform.get(label, {})
        if not gpu:
            assert accelerator is None, f"{label} is a CPU stage but requests {accelerator}"
            assert not {"nodeSelector", "tolerations", "emptyDirMounts"} & set(settings), label
            continue
        assert accelerator["resourceType"] == "{{$.inputs.parameters['pipelinechannel--gpu_type']}}", label
        count = "pipelinechannel--gpu_count" if verb_of(executor) == "train-generator" else None
        if count:
            assert accelerator["resourceCount"] == f"{{{{$.inputs.parameters['{count}']}}}}", label
        else:
            assert str(accelerator["resourceCount"]) == "1", label
        assert settings["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("gpu_node_selector")
        (toleration,) = settings["tolerations"]
        assert toleration["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations"), label
        (shm,) = settings["emptyDirMounts"]
        assert shm["mountPath"] == "/dev/shm" and shm["medium"] == "Memory", label


def _secrets(settings: dict) -> dict[str, set[str]]:
    """Secret parameter -> env variables it sets, for one executor."""
    return {entry["secretNameParameter"]["componentInputParameter"].removeprefix("pipelinechannel--"):
            {pair["envVar"] for pair in entry["keyToEnv"]} for entry in settings.get("secretAsEnv", [])}


def test_secrets_reach_exactly_the_stages_that_need_them(spec: dict, platform: dict) -> None:
    for label, executor in executors(spec).items():
        verb = verb_of(executor)
        secrets = _secrets(platform.get(label, {}))
        expected = {}
        if verb in S3_VERBS:
            expected["s3_secret"] = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        if verb not in UNTRACKED_VERBS:
            expected["mlflow_secret"] = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        assert secrets == expected, f"{label} ({verb})"
        config_maps = platform.get(label, {}).get("configMapAsEnv", [])
        assert [c["configMapName"] for c in config_maps] == ["synthmri-endpoints"], label
        assert {p["envVar"] for p in config_maps[0]["keyToEnv"]} == {"SYNTHMRI_PUSHGATEWAY", "AWS_ENDPOINT_URL"}


def test_no_credentials_in_the_compiled_yaml(compiled: tuple[str, dict, dict]) -> None:
    text = yaml.safe_dump(compiled[1]) + yaml.safe_dump(compiled[2])
    assert not re.search(r"(AKIA[0-9A-Z]{16}|password\s*[:=]\s*\S+|secret_access_key\s*[:=])", text, re.IGNORECASE)


def test_train_generator_spreads_over_the_pipelines_gpu_count(spec: dict) -> None:
    (executor,) = [e for e in executors(spec).values() if verb_of(e) == "train-generator"]
    args = list(strings_in(executor["container"]["args"]))
    assert args[args.index("--nproc-per-node") + 1] == "{{$.inputs.parameters['gpu_count']}}"


# ---------------------------------------------------------------------------- parameters and loops


REQUIRED_PARAMETERS = {
    "data_uri", "generators", "repeats", "n_synthetic", "image_size", "profile", "mlflow_tracking_uri",
    "gpu_type", "gpu_count", "gpu_node_selector", "gpu_tolerations", "archs", "segmenter_data", "augmentation",
    "seed", "s3_secret", "mlflow_secret",
}


def test_everything_a_user_turns_is_a_parameter_with_a_default(spec: dict) -> None:
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert REQUIRED_PARAMETERS <= set(parameters)
    for name, definition in parameters.items():
        assert "defaultValue" in definition, f"{name} has no default"
    assert spec["root"]["inputDefinitions"]["parameters"]["gpu_node_selector"]["defaultValue"] == {
        "synthmri.io/node-pool": "gpu"}


def test_paper_defaults_are_the_papers_grid(compiled: tuple[str, dict, dict]) -> None:
    name, spec, _ = compiled
    defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    if name == "quick":
        assert defaults["generators"] == ["ddpm"] and defaults["archs"] == ["nnunet"] and defaults["repeats"] == 1
        return
    assert defaults["generators"] == ["progan", "stylegan1", "stylegan2", "stylegan3", "ddpm"]
    assert defaults["archs"] == ["unet", "swin"] and defaults["segmenter_data"] == ["synthetic", "mixed"]
    assert defaults["augmentation"] == ["on", "off"] and defaults["repeats"] == 10
    assert defaults["image_size"] == 256 and defaults["n_synthetic"] == 100000 and defaults["profile"] == "paper"


def _loops(spec: dict) -> list[dict]:
    tasks = [task for component in [spec["root"], *spec["components"].values()] if "dag" in component
             for task in component["dag"]["tasks"].values()]
    return [task for task in tasks if "parameterIterator" in task]


def test_loops_fan_out_with_the_compiled_parallelism(spec: dict) -> None:
    loops = _loops(spec)
    assert len(loops) == 3  # real baseline, generators, each generator's segmenters
    for loop in loops:
        assert loop["iteratorPolicy"]["parallelismLimit"] == PARALLELISM


# ---------------------------------------------------------------------------- DAG


@pytest.mark.parametrize(
    ("verb", "needs"),
    [
        ("train-generator", {"prepare"}),
        ("generate", {"train-generator"}),
        ("evaluate-synthetic", {"prepare", "generate", "train-segmenter"}),
        ("share", {"generate"}),
        ("train-segmenter", {"prepare"}),
        ("evaluate-segmenter", {"train-segmenter"}),
        ("gather", {"evaluate-segmenter"}),
        ("promote", {"evaluate-synthetic", "gather", "train-generator"}),
        ("report", {"promote", "evaluate-synthetic", "gather", "generate"}),
    ],
)
def test_stages_run_after_what_they_read(dag: Dag, verb: str, needs: set[str]) -> None:
    tasks = dag.tasks(verb)
    assert tasks, f"no {verb} task"
    for task in tasks:
        assert needs <= dag.upstream_verbs(task), f"{dag.display[task]} runs before {needs - dag.upstream_verbs(task)}"


def test_grid_cells_wait_for_their_grid(dag: Dag) -> None:
    looped = [t for t in dag.tasks("train-segmenter") if t != dag.by_display("train-segmenter-features")]
    assert looped and all("grid" in dag.upstream_verbs(t) for t in looped)


def test_real_baseline_does_not_wait_for_generators(dag: Dag) -> None:
    for task in dag.tasks("train-segmenter"):
        upstream = dag.upstream_verbs(task)
        if "generate" not in upstream:
            assert "train-generator" not in upstream, dag.display[task]
    real_only = [t for t in dag.tasks("train-segmenter") if "generate" not in dag.upstream_verbs(t)]
    assert len(real_only) == 2  # the baseline grid's task and the feature network
    assert dag.by_display("train-segmenter-features") in real_only


def test_promote_is_never_served_from_cache(spec: dict) -> None:
    promotes = [task for component in spec["components"].values() if "dag" in component
                for task in component["dag"]["tasks"].values() if task["taskInfo"]["name"] == "promote"]
    assert len(promotes) == 1 and promotes[0]["cachingOptions"].get("enableCache", False) is False


# ---------------------------------------------------------------------------- CLI


def test_synthmri_pipeline_compile_writes_every_pipeline(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    out = tmp_path / "compiled"
    assert main(["pipeline", "compile", "--out", str(out), "--project-root", str(REPO), "--parallelism", "3"]) == 0
    printed = capfd.readouterr().out
    for name in PIPELINES:
        written = out / f"{name}.yaml"
        assert str(written) in printed
        spec = next(yaml.safe_load_all(written.read_text()))
        assert spec["pipelineInfo"]["name"] == f"synthmri-{name}"
        assert {loop["iteratorPolicy"]["parallelismLimit"] for loop in _loops(spec)} == {3}


def test_pipeline_params_parse_as_yaml() -> None:
    from pipelines.cli import parse_params

    assert parse_params(["repeats=3", "generators=[ddpm, stylegan2]", "data_uri=", "profile=demo"]) == {
        "repeats": 3, "generators": ["ddpm", "stylegan2"], "data_uri": "", "profile": "demo"}
    with pytest.raises(ValueError, match="'repeats': expected KEY=VALUE"):
        parse_params(["repeats"])


def test_params_are_typed_as_the_backend_reads_them() -> None:
    """``gpu_count=2`` parses as a number; the pipeline's gpu_count is a string parameter."""
    from pipelines.cli import check_params, parse_params

    typed = check_params("paper", parse_params(["gpu_count=2", "repeats=3", "gpu_type=amd.com/gpu"]))
    assert typed == {"gpu_count": "2", "repeats": 3, "gpu_type": "amd.com/gpu"}
    for bad in ("0", "two", "1.5", "-1"):
        with pytest.raises(ValueError, match=f"gpu_count='{bad}': expected a whole number of GPUs"):
            check_params("paper", parse_params([f"gpu_count={bad}"]))


def test_compile_takes_other_defaults(tmp_path: Path) -> None:
    assert main(["pipeline", "compile", "--project-root", str(REPO), "--out", str(tmp_path),
                 "--param", "gpu_type=amd.com/gpu", "--param", "gpu_count=2"]) == 0
    for name in PIPELINES:
        spec = next(yaml.safe_load_all((tmp_path / f"{name}.yaml").read_text()))
        parameters = spec["root"]["inputDefinitions"]["parameters"]
        assert parameters["gpu_type"]["defaultValue"] == "amd.com/gpu"
        assert parameters["gpu_count"] == {**parameters["gpu_count"], "defaultValue": "2", "parameterType": "STRING"}


def test_unknown_pipeline_parameter_is_named(capfd: pytest.CaptureFixture) -> None:
    status = main(["pipeline", "run-local", "--project-root", str(REPO), "--param", "repeat=3"])
    assert status == 1
    assert "has no parameter(s) ['repeat']" in capfd.readouterr().err


def test_submit_without_an_endpoint_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch,
                                                         capfd: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("KFP_HOST", raising=False)
    assert main(["pipeline", "submit", "--project-root", str(REPO)]) == 1
    assert "pass --host or set $KFP_HOST" in capfd.readouterr().err
