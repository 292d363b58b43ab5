"""The shape of the code, as docs/design.md states it.

- Imports only point down the pipeline: core < data < generators < metrics < segmenters <
  report < stages < cli, and no module imports itself back through a circle.
- The libraries never open an MLflow run or a progress monitor, and never import a stage.
- Every verb's flags have one source, its stage module: the Kubeflow components (checked in
  tests/pipelines/test_compile.py), ``dvc.yaml`` and the README's CLI table use only them.
- No module over 400 lines.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "synthmri"

#: Layer of each top-level part of the package, in the order data flows.
LAYERS = {
    "__init__": 0, "__main__": 7, "config": 0, "registry": 0, "io": 0, "training": 0, "monitoring": 0,
    "tracking": 0, "executor_output": 0, "records": 0, "threads": 0,
    "data": 1, "generators": 2, "metrics": 3, "segmenters": 4,
    "report": 5, "report_tables": 5, "report_figures": 5, "report_generators": 5, "report_dataset": 5, "promote": 5, "promote_evidence": 5, "reader": 5,
    "summary": 5,
    "stages": 6, "cli": 7,
}
LIBRARIES = {"data", "generators", "metrics", "segmenters", "report", "report_tables", "report_figures", "report_dataset",
             "report_generators", "promote", "promote_evidence", "reader", "summary"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def part_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, known: set[str]) -> set[str]:
    """synthmri modules `path` imports, at module level or inside functions (TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith("synthmri"):
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in known:
                    found.add(name)
    return found


def test_every_part_of_the_package_has_a_layer() -> None:
    assert {part_of(name) for name in modules()} <= set(LAYERS)


def test_imports_point_down_the_pipeline() -> None:
    known = set(modules())
    upward = []
    for name, path in modules().items():
        for target in imports_of(path, known):
            if LAYERS[part_of(target)] > LAYERS[part_of(name)]:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports against the pipeline's direction:\n" + "\n".join(upward)


def test_no_import_circles_between_modules() -> None:
    known = set(modules())
    # A package's __init__ re-exporting its own modules is not a circle of dependencies.
    graph = {name: {t for t in imports_of(path, known) if not name.startswith(t + ".") and t != name}
             for name, path in modules().items()}
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append(" -> ".join(trail[trail.index(target):] + [target]) if target in trail
                               else f"{node} -> {target}")
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # Parents importing children (package __init__ registries) are fine; circles between siblings are not.
    real = [c for c in circles if not all(a.startswith(b + ".") or b.startswith(a + ".")
                                          for a, b in zip(c.split(" -> "), c.split(" -> ")[1:]))]
    assert not real, "import circles:\n" + "\n".join(real)


@pytest.mark.parametrize("name", sorted(n for n in modules() if part_of(n) in LIBRARIES))
def test_libraries_never_open_a_run_or_a_monitor(name: str) -> None:
    tree = ast.parse(modules()[name].read_text())
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not used & {"stage_run", "start_run", "StageMonitor", "stage_context"}, name


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_400_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400


# ---------------------------------------------------------------------------- one source of flags


def verb_parsers() -> dict[str, argparse.ArgumentParser]:
    from synthmri.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def required_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {action.option_strings[0] for action in parser._actions if action.required and action.option_strings}


def dvc_commands() -> list[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return [(stage.get("do") or stage)["cmd"] for stage in stages.values()]


@pytest.mark.parametrize("command", dvc_commands())
def test_dvc_yaml_calls_verbs_with_their_own_flags(command: str) -> None:
    words = shlex.split(command)
    assert words[0] == "synthmri", command
    parser = verb_parsers()[words[1]]
    given = {word.split("=", 1)[0] for word in words[2:] if word.startswith("--")}
    assert given <= flags(parser), f"{command}: {sorted(given - flags(parser))} not flags of {words[1]}"
    assert required_flags(parser) <= given, f"{command}: misses {sorted(required_flags(parser) - given)}"


def readme_cli_rows() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    table = text.split("## The CLI", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        if match := re.match(r"\| `([a-z-]+)[^`]*` \| (.*) \|$", line):
            rows[match.group(1)] = match.group(2)
    return rows


def test_the_readme_lists_exactly_the_verbs() -> None:
    from synthmri.stages import VERBS

    assert list(readme_cli_rows()) == list(VERBS)


@pytest.mark.parametrize("verb", sorted(readme_cli_rows()))
def test_flags_the_readme_names_are_the_verbs_flags(verb: str) -> None:
    named = set(re.findall(r"`(--[a-z][a-z-]*)", readme_cli_rows()[verb]))
    named |= {f"--{word}" for word in re.findall(r"`--\[no-\]([a-z-]+)", readme_cli_rows()[verb])}
    assert named <= flags(verb_parsers()[verb]) | {"--no-aug"}, sorted(named - flags(verb_parsers()[verb]))


def test_config_flags_set_real_config_keys() -> None:
    from synthmri.config import Config, flatten
    from synthmri.stages.arguments import config_keys

    keys = set(flatten(Config()))
    for verb, parser in verb_parsers().items():
        assert set(config_keys(parser).values()) <= keys, verb


@pytest.mark.parametrize("module", ["training.py", "generators/train.py", "segmenters/train.py",
                                    "stages/train_generator.py", "stages/train_segmenter.py"])
def test_training_loops_define_no_functions_inside_functions(module: str) -> None:
    tree = ast.parse((PACKAGE / module).read_text())
    nested = [f"{outer.name} -> {getattr(inner, 'name', 'lambda')} (line {inner.lineno})"
              for outer in ast.walk(tree) if isinstance(outer, (ast.FunctionDef, ast.AsyncFunctionDef))
              for inner in ast.walk(outer)
              if inner is not outer and isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    assert not nested, nested


def test_design_doc_lists_exactly_the_verbs() -> None:
    from synthmri.stages import VERBS

    text = (REPO / "docs" / "design.md").read_text()
    table = text.split("| verb | library it drives | writes |", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"^\| `([a-z-]+)` \|", table, flags=re.M) == list(VERBS)
