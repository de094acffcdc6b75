"""The `Task` interface the engine drives, and the lookup of a run's task by name."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from fusescope.errors import FusescopeError
from fusescope.registry import Registry

if TYPE_CHECKING:  # the engine's types; importing this module needs no torch
    from torch import Tensor, nn
    from torch.utils.data import Dataset

TASKS = Registry("task")
"""Every task by its config name (`task: ...`); a task module registers its own instance
(`register_task`), so the engine and the config know tasks only through this table."""


class Task:
    """What the engine asks of a task. `cfg` is the whole run config, `meta` the data set's
    `DatasetMeta`; batches are dicts of tensors (every key of the collated samples but "id",
    on the device).

    Attributes:
        name: the config's `task` value.
        methods: the registry `model.name` is looked up in.
        primary_metric: key of `evaluate`'s result logged as `val_<key>` during training.
        higher_is_better: whether a larger `primary_metric` is better (compare's "best val").
    """

    name: str
    methods: Registry
    primary_metric: str
    higher_is_better: bool = True

    def check_data(self, cfg: DictConfig, meta, world_size: int = 1) -> None:
        """Everything about the data that would otherwise fail after the run folder is written.

        Raises:
            FusescopeError: naming the split, key or file.
        """
        raise NotImplementedError

    def normalisation_stats(self, cfg: DictConfig, progress: bool = False) -> dict:
        """The input normaliser's statistics from the train split (kept in run.json)."""
        raise NotImplementedError

    def train_dataset(self, cfg: DictConfig, stats: dict, seed: int) -> Dataset:
        raise NotImplementedError

    def eval_dataset(
        self, cfg: DictConfig, split: str, stats: dict, corruption=None, seed: int = 0
    ) -> Dataset:
        raise NotImplementedError

    def build_model(
        self, cfg: DictConfig, meta, pretrained: bool = True, stats: dict | None = None
    ) -> nn.Module:
        """The run's model; `pretrained=False` skips downloads (weights are loaded next).
        `stats` are the run's normaliser statistics (e.g. a text modality's vocabulary, which
        pretrained word vectors are looked up by)."""
        raise NotImplementedError

    def logged_during_training(self, result: dict) -> dict[str, float]:
        """What an evaluation during training (`train.eval_every`) logs of `evaluate`'s result,
        each as `val_<key>`: the primary metric (a task may add others)."""
        return {self.primary_metric: result[self.primary_metric]}

    def loss_denominator(self, batch: dict[str, Tensor], meta, train_cfg: DictConfig) -> Tensor:
        """What the summed loss of the whole global `batch` is divided by (e.g. its labelled
        pixels), so a loss does not depend on how the batch is split into micro-batches and
        processes (the engine all-reduces it under several processes)."""
        raise NotImplementedError

    def loss(
        self,
        output: dict,
        batch: dict[str, Tensor],
        meta,
        train_cfg: DictConfig,
        denominator: Tensor,
        aux_scale: float = 1.0,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The micro-batch's total loss (its summed supervised losses / `denominator`, plus the
        model's `aux_losses` x `aux_scale`) and its detached parts for logging: a task computes
        its supervised parts and hands them to `aggregate_loss`."""
        raise NotImplementedError

    def evaluate(
        self,
        model: nn.Module,
        dataset: Dataset,
        cfg: DictConfig,
        meta,
        device: Any = "cpu",
        fabric=None,
        progress: bool = False,
    ) -> dict:
        """Metrics of `model` on `dataset` under `cfg.eval` (summed over processes)."""
        raise NotImplementedError

    def format_result(self, result: dict) -> str:
        """`fusescope eval`'s human-readable lines for `evaluate_run`'s result."""
        raise NotImplementedError

    def compare_columns(self, result: dict) -> dict[str, float | None]:
        """`fusescope compare`'s columns for one run's evaluation result: the task's own
        metrics, each named with its unit and scaled as it should print (None: not measured)."""
        raise NotImplementedError

    def blank_text_ids(self, cfg: DictConfig) -> list[int] | None:
        """The ids of a text that says nothing in the run's tokenizer, for a dropped or absent
        text modality (`engine/missing`); None: one `<unk>` word of the run's vocabulary."""
        return None

    def check_eval_options(self, **options: Any) -> None:
        """Refuse `fusescope eval` options the task has no meaning for (segmentation's tta,
        window, corrupt, drop), naming them; a task that supports one overrides this."""
        given = sorted(k for k, v in options.items() if v)
        if given:
            raise FusescopeError(
                f"fusescope eval: --{', --'.join(given)} "
                f"{'is' if len(given) == 1 else 'are'} not supported for "
                f"task {self.name!r}"
            )


def check_global_batch(cfg: DictConfig, train_size: int, world_size: int) -> None:
    """The global batch (batch_size x grad_accum) fits in the train split and splits evenly
    over the processes. Every task checks this."""
    t = cfg.train
    global_batch = t.batch_size * t.grad_accum
    if global_batch > train_size:
        raise FusescopeError(
            f"train.batch_size={t.batch_size} x train.grad_accum={t.grad_accum} "
            f"exceeds the {train_size} samples of split "
            f"{cfg.data.train_split!r} (the last partial batch of an epoch is "
            f"dropped)"
        )
    if global_batch % world_size:
        raise FusescopeError(
            f"train.batch_size={t.batch_size} x train.grad_accum="
            f"{t.grad_accum} must be divisible by the number of processes "
            f"({world_size})"
        )


def aggregate_loss(
    supervised: dict[str, Tensor], output: dict, aux_scale: float = 1.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """The one way every task's `loss` ends: the task's supervised parts, then each of the
    model's `aux_losses` (already weighted by the model) x `aux_scale` under its own name, summed
    in float32. Returns the total and its detached parts for logging (the engine sums them over
    micro-batches and logs each).

    Args:
        supervised: name -> scalar loss of the task's own terms, in the order they are logged.
        output: the model's output dict (its `aux_losses`, if any, are read).
        aux_scale: factor on the aux losses (1 / gradient-accumulation steps, as each
            micro-batch adds them).
    """
    import torch  # here, so importing the task interface needs no torch

    parts = dict(supervised)
    for name, value in output.get("aux_losses", {}).items():
        parts[name] = aux_scale * value
    total = torch.stack([v.float() for v in parts.values()]).sum()
    return total, {k: v.detach() for k, v in parts.items()}


def register_task(task: Task) -> Task:
    """Add `task` to `TASKS` under `task.name`; a task module ends with
    `TASK = register_task(MyTask())`."""
    TASKS.register(task.name)(task)
    return task


def _import_task_modules(name: str | None = None) -> None:
    """Import the modules of this package, whose import registers their tasks: only
    `fusescope.tasks.<name>` when it exists (the usual layout), else every one of them."""
    import fusescope.tasks as package

    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
    if name is not None and name.isidentifier() and name in modules:
        modules = [name]
    for module in modules:
        importlib.import_module(f"{package.__name__}.{module}")


def known_tasks() -> list[str]:
    """The names of every task this installation has."""
    _import_task_modules()
    return TASKS.names()


def task_of(cfg_or_name: DictConfig | str) -> Task:
    """The task of a run config (its `task` key) or of a task name.

    Raises:
        FusescopeError: an unknown task name, listing the known ones.
    """
    name = cfg_or_name if isinstance(cfg_or_name, str) else cfg_or_name.get("task", "segmentation")
    if name not in TASKS:
        _import_task_modules(str(name))
    if name not in TASKS:
        raise FusescopeError(f"task={name!r} unknown; known: {', '.join(known_tasks())}")
    return TASKS.get(name)
