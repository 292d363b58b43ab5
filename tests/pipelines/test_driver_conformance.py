"""The compiled pipelines obey the rules of the Kubeflow Pipelines 2.17 backend's driver.

The driver (``backend/src/v2/driver`` of kubeflow/pipelines at tag 2.17.0) resolves each
task's inputs and container arguments just before its pod starts. A spec that breaks its
rules compiles, uploads and passes Argo's validation, then fails (or silently loses a GPU)
at run time. ``kfp.local`` resolves inputs differently and catches none of this, so these
tests read the compiled YAML the way the driver does:

1. ``resolveInputParameter``: a task input given as ``componentInputParameter: X`` is looked
   up in the inputs of the DAG that runs the task; a DAG that does not declare ``X`` fails
   with "parent DAG does not have input parameter X". Every loop level is its own DAG.
2. ``resolveContainerArgs``: ``{{$.inputs.parameters['x']}}`` in a container's command or
   args is filled from the task's executor input, which holds only the inputs the task
   passes (no defaults): "parameter x not found in executor input". Placeholders inside an
   ``IfPresent`` are resolved only when the input is present.
3. ``resolveCondition``: ``IfPresent`` tests the executor input's *parameter* values only,
   so an ``IfPresent`` on an artifact input never fires and its flags are silently dropped.
4. ``resolvePodSpecInputRuntimeParameter``: a resource (image, CPU, memory, accelerator type
   or count) taken from a parameter is read with ``GetStringValue()``, which is empty for a
   number: an integer parameter gives a GPU stage no GPU limit at all, silently. Such a
   parameter must be a STRING where its value comes from.

Each rule runs over both pipelines at their defaults and compiled with other settings
(parallelism, GPU type and count), as a platform team would.
"""

import json
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

#: (pipeline, parallelism, default overrides): the defaults, and what a platform team changes.
VARIANTS = [
    *[(name, 8, {}) for name in sorted(PIPELINES)],
    ("paper", 1, {"gpu_type": "amd.com/gpu", "gpu_count": "4"}),
    ("quick", 3, {"gpu_type": "nvidia.com/mig-1g.10gb", "gpu_count": "2", "repeats": 2,
                  "generators": ["ddpm", "stylegan2"], "archs": ["unet", "swin"]}),
]

PARAMETER_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.parameters\['(.+?)'\]\}\}")
ARTIFACT_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.artifacts\['(.+?)'\]")
#: The container resource fields the driver resolves through resolvePodSpecInputRuntimeParameter.
RESOURCE_FIELDS = ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit")


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-p{v[1]}-{'-'.join(map(str, v[2].values())) or 'defaults'}")
def spec(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A pipeline spec compiled to YAML and read back, as the API server receives it."""
    name, parallelism, overrides = request.param
    path = compile_pipeline(name, tmp_path_factory.mktemp("compiled") / f"{name}.yaml", parallelism, overrides)
    pipeline_spec, _platform = yaml.safe_load_all(path.read_text())
    return pipeline_spec


# ---------------------------------------------------------------------------- reading the spec


def dags(spec: dict) -> Iterator[tuple[str, dict]]:
    """(name, component) of the root and of every DAG component (loops, groups)."""
    yield "root", spec["root"]
    for name, component in spec["components"].items():
        if "dag" in component:
            yield name, component


def tasks_running(spec: dict) -> Iterator[tuple[str, str, dict, dict]]:
    """(dag name, task name, task, its container) of every task that runs a container."""
    executors = spec["deploymentSpec"]["executors"]
    for dag_name, dag in dags(spec):
        for task_name, task in dag["dag"]["tasks"].items():
            component = spec["components"][task["componentRef"]["name"]]
            if "executorLabel" in component:
                yield dag_name, task_name, task, executors[component["executorLabel"]]["container"]


def placeholders(arg: Any) -> tuple[set[str], set[str], list[dict]]:
    """(parameters, artifacts) an argument needs unconditionally, and its IfPresent clauses."""
    if isinstance(arg, str) and arg.lstrip().startswith('{"IfPresent":'):
        return set(), set(), [json.loads(arg)["IfPresent"]]
    text = json.dumps(arg) if not isinstance(arg, str) else arg
    return set(PARAMETER_PLACEHOLDER.findall(text)), set(ARTIFACT_PLACEHOLDER.findall(text)), []


def passed(task: dict) -> tuple[set[str], set[str]]:
    """The parameters and artifacts a task passes to its component."""
    inputs = task.get("inputs", {})
    return set(inputs.get("parameters", {})), set(inputs.get("artifacts", {}))


class Sources:
    """Where a task input's value comes from, followed up through every enclosing DAG."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.callers: dict[str, list[tuple[str, dict]]] = {}  # DAG component -> (caller DAG, calling task)
        for dag_name, dag in dags(spec):
            for task in dag["dag"]["tasks"].values():
                self.callers.setdefault(task["componentRef"]["name"], []).append((dag_name, task))

    def declared(self, dag_name: str) -> dict:
        dag = self.spec["root"] if dag_name == "root" else self.spec["components"][dag_name]
        return dag.get("inputDefinitions", {}).get("parameters", {})

    def types(self, dag_name: str, task: dict, input_name: str) -> set[str]:
        """Parameter types that `input_name` of `task` (in `dag_name`) can arrive as."""
        source = task.get("inputs", {}).get("parameters", {}).get(input_name)
        if source is None:
            return {"NOT PASSED"}
        if "runtimeValue" in source:
            constant = source["runtimeValue"]["constant"]
            return {"STRING" if isinstance(constant, str) else type(constant).__name__}
        if "taskOutputParameter" in source:
            dag = self.spec["root"] if dag_name == "root" else self.spec["components"][dag_name]
            output = source["taskOutputParameter"]
            producer = self.spec["components"][dag["dag"]["tasks"][output["producerTask"]]["componentRef"]["name"]]
            return {producer["outputDefinitions"]["parameters"][output["outputParameterKey"]]["parameterType"]}
        name = source["componentInputParameter"]
        if dag_name == "root":
            return {self.spec["root"]["inputDefinitions"]["parameters"][name]["parameterType"]}
        if any(task.get("parameterIterator", {}).get("itemInput") == name
               for _, task in self.callers.get(dag_name, [])):
            return {"LOOP_ITEM"}
        return set().union(*(self.types(caller, calling, name) for caller, calling in self.callers[dag_name]))


# ---------------------------------------------------------------------------- the driver's rules


def test_every_component_input_a_task_uses_is_declared_by_its_dag(spec: dict) -> None:
    missing = []
    for dag_name, dag in dags(spec):
        definitions = dag.get("inputDefinitions", {})
        parameters, artifacts = set(definitions.get("parameters", {})), set(definitions.get("artifacts", {}))
        for task_name, task in dag["dag"]["tasks"].items():
            inputs = task.get("inputs", {})
            for name, source in inputs.get("parameters", {}).items():
                if "componentInputParameter" in source and source["componentInputParameter"] not in parameters:
                    missing.append(f"{dag_name}/{task_name}.{name} <- {source['componentInputParameter']}")
                if "taskOutputParameter" in source:
                    assert source["taskOutputParameter"]["producerTask"] in dag["dag"]["tasks"], (dag_name, task_name)
            for name, source in inputs.get("artifacts", {}).items():
                if "componentInputArtifact" in source and source["componentInputArtifact"] not in artifacts:
                    missing.append(f"{dag_name}/{task_name}.{name} <- artifact {source['componentInputArtifact']}")
            # A loop's items are one of the loop task's own inputs.
            items = task.get("parameterIterator", {}).get("items", {}).get("inputParameter")
            if items is not None and items not in inputs.get("parameters", {}):
                missing.append(f"{dag_name}/{task_name} iterates over {items}, which it is not given")
    assert not missing, "parent DAG does not have input parameter:\n" + "\n".join(missing)


def test_every_placeholder_outside_if_present_is_passed_by_every_task(spec: dict) -> None:
    missing = []
    for dag_name, task_name, task, container in tasks_running(spec):
        given_parameters, given_artifacts = passed(task)
        for arg in [*container.get("command", []), *container.get("args", [])]:
            parameters, artifacts, _ = placeholders(arg)
            missing += [f"{dag_name}/{task_name}: parameter {p!r} not passed" for p in parameters - given_parameters]
            missing += [f"{dag_name}/{task_name}: artifact {a!r} not passed" for a in artifacts - given_artifacts]
    assert not missing, "not found in executor input:\n" + "\n".join(missing)


def test_if_present_names_a_parameter_and_uses_only_it(spec: dict) -> None:
    wrong = []
    for name, component in spec["components"].items():
        if "executorLabel" not in component:
            continue
        container = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        parameters = set(component.get("inputDefinitions", {}).get("parameters", {}))
        for arg in container.get("args", []):
            for clause in placeholders(arg)[2]:
                if clause["InputName"] not in parameters:
                    wrong.append(f"{name}: IfPresent on {clause['InputName']!r}, not a parameter input")
                for branch, allowed in (("Then", {clause["InputName"]}), ("Else", set())):
                    used_parameters, used_artifacts, nested = placeholders(json.dumps(clause.get(branch, [])))
                    if (used_parameters | used_artifacts) - allowed or nested:
                        wrong.append(f"{name}: IfPresent {clause['InputName']!r} {branch} uses "
                                     f"{sorted((used_parameters | used_artifacts) - allowed)}")
    assert not wrong, "\n".join(wrong)


def test_resources_from_parameters_are_strings_where_they_come_from(spec: dict) -> None:
    sources = Sources(spec)
    wrong, checked = [], 0
    for dag_name, task_name, task, container in tasks_running(spec):
        resources = container.get("resources", {})
        values = {"image": container["image"], **{f: resources.get(f) for f in RESOURCE_FIELDS},
                  "accelerator type": resources.get("accelerator", {}).get("resourceType"),
                  "accelerator count": resources.get("accelerator", {}).get("resourceCount")}
        for field, value in values.items():
            match = PARAMETER_PLACEHOLDER.fullmatch(str(value)) if value is not None else None
            if match is None:
                continue
            checked += 1
            if match.group(1) not in task.get("inputs", {}).get("parameters", {}):
                wrong.append(f"{dag_name}/{task_name}: {field} from {match.group(1)}, which the task does not pass")
                continue
            types = sources.types(dag_name, task, match.group(1))
            if types != {"STRING"}:
                wrong.append(f"{dag_name}/{task_name}: {field} from {match.group(1)} arrives as {sorted(types)}")
    assert checked, "no resource comes from a parameter: the GPU settings are not pipeline parameters any more"
    assert not wrong, "resolvePodSpecInputRuntimeParameter reads strings only:\n" + "\n".join(wrong)


def test_every_gpu_stage_gets_a_gpu_limit_from_the_gpu_parameters(spec: dict) -> None:
    """What the driver puts in the pod: the accelerator type and a count, both resolvable."""
    sources = Sources(spec)
    gpu_tasks = 0
    for dag_name, task_name, task, container in tasks_running(spec):
        accelerator = container.get("resources", {}).get("accelerator")
        if accelerator is None:
            continue
        gpu_tasks += 1
        assert accelerator.get("resourceType") and accelerator.get("resourceCount"), (dag_name, task_name)
        count = PARAMETER_PLACEHOLDER.fullmatch(accelerator["resourceCount"])
        if count is None:
            assert re.fullmatch(r"[1-9]\d*", accelerator["resourceCount"]), (task_name, accelerator)
        else:
            assert sources.types(dag_name, task, count.group(1)) == {"STRING"}, (task_name, count.group(1))
    assert gpu_tasks >= 6
