"""The engine is task-free: the import graph of every module under src/fusescope/engine, followed
through fusescope's own modules (module-level and function-level imports, read with `ast`, not
by searching text), reaches no model module and no task module; tasks come only through the
task interface (`fusescope.tasks`, `fusescope.tasks.base`), which finds them by registry. What
only one task has (segmentation's loss, metrics, evaluation protocols, prediction, export;
classification's metrics) lives beside that task, and is defined nowhere under the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "fusescope"
ALLOWED = {"fusescope.tasks", "fusescope.tasks.base"}  # the task interface and its registry


def forbidden(module: str) -> bool:
    """A model module, or a task module other than the interface."""
    if module == "fusescope.models" or module.startswith("fusescope.models."):
        return True
    return module.startswith("fusescope.tasks.") and module not in ALLOWED


def module_file(module: str, src: Path = SRC) -> Path | None:
    base = src.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(module: str, src: Path = SRC) -> set[str]:
    """The fusescope modules `module` imports anywhere in its file (relative imports resolved;
    `from package import name` counts `package.name` when that is a module)."""
    path = module_file(module, src)
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                head = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{head}.{node.module}" if node.module else head
            else:
                base = node.module
            found.add(base)
            for alias in node.names:
                if module_file(f"{base}.{alias.name}", src) is not None:
                    found.add(f"{base}.{alias.name}")
    # importing a.b.c runs a/__init__ and a.b/__init__ too
    closed = set()
    for name in found:
        parts = name.split(".")
        closed.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in closed if m.split(".")[0] == PACKAGE and module_file(m, src)}


def reachable(start: list[str], src: Path = SRC) -> dict[str, list[str]]:
    """Every fusescope module reachable from `start`, with one import chain to it."""
    chains = {m: [m] for m in start}
    todo = list(start)
    while todo:  # breadth first: the chains are shortest
        module = todo.pop(0)
        for other in sorted(imports_of(module, src)):
            if other not in chains:
                chains[other] = [*chains[module], other]
                todo.append(other)
    return chains


def violations(start: list[str], src: Path = SRC) -> list[str]:
    return sorted(
        " -> ".join(chain) for module, chain in reachable(start, src).items() if forbidden(module)
    )


ENGINE = sorted(f"fusescope.engine.{p.stem}" for p in (SRC / "fusescope/engine").glob("*.py"))


def test_the_engine_reaches_no_model_and_no_task_module():
    assert len(ENGINE) > 10
    graph = reachable(ENGINE)
    assert "fusescope.tasks.base" in graph  # it does reach tasks, through the interface
    assert violations(ENGINE) == []


def test_the_walk_finds_a_model_or_task_import_anywhere_in_a_file(tmp_path):
    """The check can fail: a module importing a model class (at the top, inside a function, or
    through another fusescope module) or a task module is reported with its chain."""
    pkg = tmp_path / "fusescope"
    for sub in ("", "engine", "models", "tasks", "data"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "models/segmentor.py").write_text("class Segmentor: ...\n")
    (pkg / "tasks/base.py").write_text("TASKS = {}\n")
    (pkg / "tasks/segmentation.py").write_text("TASK = None\n")
    (pkg / "data/helper.py").write_text("from fusescope.models.segmentor import Segmentor\n")
    (pkg / "engine/ok.py").write_text("from fusescope.tasks import base\nfrom . import clean\n")
    (pkg / "engine/clean.py").write_text("import os\n")
    assert violations(["fusescope.engine.ok", "fusescope.engine.clean"], tmp_path) == []
    (pkg / "engine/lazy.py").write_text("def f():\n    from ..models import segmentor\n")
    (pkg / "engine/indirect.py").write_text("import fusescope.data.helper\n")
    (pkg / "engine/task.py").write_text("from fusescope.tasks.segmentation import TASK\n")
    assert "fusescope.engine.lazy -> fusescope.models.segmentor" in violations(
        ["fusescope.engine.lazy"], tmp_path
    )
    assert violations(["fusescope.engine.indirect"], tmp_path) == [
        "fusescope.engine.indirect -> fusescope.data.helper -> fusescope.models",
        "fusescope.engine.indirect -> fusescope.data.helper -> fusescope.models.segmentor",
    ]
    assert violations(["fusescope.engine.task"], tmp_path) == [
        "fusescope.engine.task -> fusescope.tasks.segmentation"
    ]


@pytest.mark.parametrize("module", ENGINE)
def test_every_engine_module_parses(module):
    assert module_file(module) is not None and isinstance(imports_of(module), set)


# what was the engine's and is one task's: module -> its home now
MOVED = {
    "fusescope.engine.loss": "fusescope.tasks.segmentation.loss",
    "fusescope.engine.metrics": "fusescope.tasks.segmentation.metrics",
    "fusescope.engine.predict": "fusescope.tasks.segmentation.predict",
    "fusescope.engine.frames": "fusescope.tasks.segmentation.frames",
    "fusescope.engine.export": "fusescope.tasks.segmentation.export",
    "fusescope.engine.classification_metrics": "fusescope.tasks.classification.metrics",
}
# one task's classes and functions: the module defining each (read with `ast`)
TASK_OWN = {
    "total_loss": "fusescope.tasks.segmentation.loss",
    "label_weight": "fusescope.tasks.segmentation.loss",
    "SegMetrics": "fusescope.tasks.segmentation.metrics",
    "metrics_from_confusion": "fusescope.tasks.segmentation.metrics",
    "predict_probs": "fusescope.tasks.segmentation.evaluation",
    "sliding_logits": "fusescope.tasks.segmentation.evaluation",
    "OnnxSegmentor": "fusescope.tasks.segmentation.export",
    "export_model": "fusescope.tasks.segmentation.export",
    "write_prediction": "fusescope.tasks.segmentation.predict",
    "multilabel_f1": "fusescope.tasks.classification.metrics",
    "TranslationScores": "fusescope.tasks.translation.scores",
}


def defined_at_top(module: str, src: Path = SRC) -> set[str]:
    """The names of the functions and classes `module` defines at its top level."""
    tree = ast.parse(module_file(module, src).read_text())
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in tree.body if isinstance(node, kinds)}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_task_own_module_lives_beside_its_task(old):
    assert module_file(old) is None and old not in ENGINE
    assert module_file(MOVED[old]) is not None


def test_a_task_own_function_is_defined_beside_its_task_only():
    every = sorted(
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for p in (SRC / PACKAGE).rglob("*.py")
    )
    where = {name: [] for name in TASK_OWN}
    for module in every:
        for name in defined_at_top(module) & set(TASK_OWN):
            where[name].append(module)
    assert where == {name: [home] for name, home in TASK_OWN.items()}
    # the engine keeps what every task runs through, e.g. `fusescope eval`'s run-level side
    assert {"evaluate_run", "save_eval"} <= defined_at_top("fusescope.engine.evaluate")
