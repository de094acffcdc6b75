"""Where evaluation, prediction, benchmarks and dissection run: the `--device` option.

The default is the GPU when there is one (CUDA), else the CPU. A device that does not exist here
is a one-line error before anything is loaded, never a silent fallback to the CPU. Training
places itself through Lightning Fabric (`train.accelerator`); `training_device` says where that
was, so the evaluation at the end of a run uses the same device.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fusescope.errors import FusescopeError

if TYPE_CHECKING:  # torch is imported where a device is resolved, not when the CLI parses
    import torch

DEVICES = "cpu, cuda, cuda:N or mps"
DEVICE_HELP = f"{DEVICES} (default: cuda when available, else cpu)"


def resolve_device(spec: str | None = None) -> torch.device:
    """The torch device for a `--device` value.

    Args:
        spec: None or "auto" (CUDA when available, else the CPU), or a torch device string.

    Raises:
        FusescopeError: the string is not a device, or that device is not available here.
    """
    import torch

    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise FusescopeError(f"--device {spec!r} is not a device; use {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU found"
            raise FusescopeError(
                f"--device {spec}: CUDA is not available here ({why}, torch "
                f"{torch.__version__}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise FusescopeError(
                f"--device {spec}: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise FusescopeError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise FusescopeError(f"--device {spec}: unsupported device type; use {DEVICES}")
    return device


def training_device(accelerator: str) -> torch.device:
    """The device a one-process Fabric run with this `train.accelerator` trained on (the first
    process's, for several): "auto" and "gpu" pick CUDA, then MPS, then the CPU, as Fabric does."""
    import torch

    accelerator = str(accelerator).lower()
    if accelerator in ("auto", "gpu"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if accelerator in ("cuda", "mps"):
        return torch.device(accelerator)
    return torch.device("cpu")  # cpu, and accelerators fusescope does not evaluate on


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to `count` inside the block, as they were after it
    (None: left as they are).

    Why: PyTorch's CPU kernels (convolution weight gradients, sums, norms) split a reduction
    into one chunk per thread and add the chunks' results, so the thread count decides the
    order of the additions and thus the last bits of every gradient; training amplifies those
    bits into different weights and a different table. With `count` fixed, a run gives the same
    bytes on any machine with the same kernels (CPU instruction set, torch version), loaded or
    idle, whatever number of cores it has (measured: see the README's quick start).

    Raises:
        FusescopeError: `count` is not a positive integer.
    """
    import torch

    if count is None:
        yield
        return
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FusescopeError(f"CPU threads must be a positive integer, got {count!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _int_at_least(text: str, low: int, rule: str) -> int:
    """`text` as an integer of at least `low`, else argparse's one-line error saying `rule`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be {rule}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts such as --batch-size."""
    return _int_at_least(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    """argparse type for counts where 0 means "none" or "automatic" (--workers, --threads)."""
    return _int_at_least(text, 0, "0 or more")


def positive_float(text: str) -> float:
    """argparse type for a finite number > 0 (a learning rate, a scale)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """`--device` with the common default and help."""
    parser.add_argument("--device", default=None, help=DEVICE_HELP)
