"""Memory a setting asks for: estimated before anything is allocated where that is possible
(each task's checks: one batch of inputs must fit, a sliding window, an embedding table), and
torch's out-of-memory errors turned into one line naming the setting and the memory asked for
where it is not.
"""

from __future__ import annotations

import os
import re

from fusescope.errors import FusescopeError


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    value = n / 2**30
    return f"{value:.1f} GiB" if value < 1e6 else f"{value:.2g} GiB"


def check_fits(needed: float, what: str) -> None:
    """Refuse a setting whose memory (`needed` bytes, a lower bound) exceeds this machine's.

    Args:
        needed: bytes the setting asks for.
        what: the setting and what it sizes, e.g. "--window 100000 100000 (a batch of windows)".

    Raises:
        FusescopeError: `needed` exceeds the physical memory.
    """
    total = physical_memory()
    if total is not None and needed > total:
        raise FusescopeError(
            f"{what} needs {gib(needed)} of memory, more than this machine's {gib(total)}; lower it"
        )


def is_out_of_memory(err: BaseException) -> bool:
    """Whether torch or NumPy failed to allocate (CPU or GPU), or an allocation size overflowed."""
    if isinstance(err, (MemoryError, *torch_oom_types())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text
        or "out of memory" in text
        or "Storage size calculation overflowed" in text
        or "numel: integer multiplication overflow" in text
    )


def torch_oom_types() -> tuple[type, ...]:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom,) if oom is not None else ()


def requested_bytes(err: BaseException) -> int | None:
    """The allocation that failed, when the error says (torch's CPU and CUDA allocators do)."""
    text = str(err)
    found = re.search(r"tried to allocate (\d+) bytes", text)
    if found:
        return int(found.group(1))
    found = re.search(r"[Tt]ried to allocate ([\d.]+) (KiB|MiB|GiB|TiB)", text)
    if found:
        power = {"KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}[found.group(2)]
        return int(float(found.group(1)) * 2**power)
    found = re.search(r"sizes=\[([\d, ]+)\]", text)
    if found:  # an allocation too large to count: the product of its sizes
        count = 1
        for v in found.group(1).split(","):
            count *= int(v)
        return count * 4
    return None


def out_of_memory_error(err: BaseException, doing: str, settings: str) -> FusescopeError:
    """The one line for an allocation that failed while `doing` something that `settings`
    (the options that size it) decide."""
    asked, total = requested_bytes(err), physical_memory()
    parts = [f"an allocation of {gib(asked)}"] if asked else []
    parts += [f"this machine has {gib(total)}"] if total else []
    detail = f" ({', '.join(parts)})" if parts else ""
    return FusescopeError(f"out of memory {doing}{detail}; lower {settings}")
