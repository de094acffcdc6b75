"""The registries of model parts. Builders register themselves when their module is imported;
`fusescope.models` imports every module that registers one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fusescope.registry import Registry

FUSION_METHODS = Registry("fusion method")
DECODERS = Registry("decoder")
CLASSIFICATION_METHODS = Registry("classification method")  # fusescope.models.classification


class FusionOpRegistry(Registry):
    """The fusion ops every task takes: name -> `insert(model, **options)`, which puts the op
    into a `MultiStreamModel` at the sites its encoder's block family has. The function's
    keyword-only arguments are the op's one option set, for every task; `task_defaults` gives a
    task's paper defaults where they differ, `check(**options)` refuses bad values before
    anything is built, `paper` says where the op comes from, `block_families` the encoder block
    families it is defined on (None: every one; `fusescope.models.sites`)."""

    def register(
        self,
        name: str,
        *,
        paper: str,
        check: Callable[..., None] | None = None,
        task_defaults: dict[str, dict[str, Any]] | None = None,
        tasks: tuple[str, ...] = ("segmentation", "translation", "classification"),
        block_families: tuple[str, ...] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        add = super().register(name)

        def describe(insert: Callable[..., Any]) -> Callable[..., Any]:
            insert.paper = paper
            insert.check = check
            insert.task_defaults = task_defaults or {}
            insert.tasks = tasks
            insert.block_families = block_families
            return add(insert)

        return describe


# fusescope.models.fusion.* (CEN, AsymFusion, the baseline ops, MANGO, BMC, ...)
FUSION_OPS = FusionOpRegistry("fusion op")
