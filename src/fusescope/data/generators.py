"""Known-answer data generators by `data.synth.kind`: the registry `fusescope.data.build` makes
a missing `data.root` with, and checks an existing one against.

Each generator registers itself in the module that implements it (`register_generator`): the
RGB-D rooms in `fusescope.data.synthetic.writing`, the posters in `fusescope.data.posters`. A new
kind is one `Generator` there and its module named in `PROVIDERS`, as `fusescope.models` imports
every module that registers a method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusescope.errors import FusescopeError
from fusescope.registry import Registry

GENERATORS = Registry("synthetic data kind")

PROVIDERS = ("fusescope.data.synthetic", "fusescope.data.posters")
"""The modules whose import registers a generator (imported on the first lookup)."""


def _no_check(spec: Mapping[str, Any]) -> None:
    return None


def _no_differences(found: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class Generator:
    """A known-answer data set that `data.synth` can ask for.

    Attributes:
        kind: the `data.synth.kind` that selects it.
        version: its generator version; a folder written by another version is refused.
        record: the `name` of the generator record it writes into meta.json (`generator`), by
            which a folder written before records named their kind is recognised.
        generate: `(root, spec, progress)`: write the data set at `root` (all or nothing);
            `spec` is the `data.synth` section.
        check: `(spec)`: refuse options this kind cannot make (a one-line FusescopeError),
            before anything is written.
        differences: `(record, spec)`: what differs, in words, between the folder's generator
            record and `spec`, beyond kind, frames, seed, size and version (which every kind
            has).
    """

    kind: str
    version: int
    record: str
    generate: Callable[[Path, Mapping[str, Any], bool], None]
    check: Callable[[Mapping[str, Any]], None] = field(default=_no_check)
    differences: Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]] = field(
        default=_no_differences
    )


def register_generator(generator: Generator) -> Generator:
    """Add `generator` under its kind; a generator module calls it once at import."""
    GENERATORS.register(generator.kind)(generator)
    return generator


def _load() -> None:
    for module in PROVIDERS:
        importlib.import_module(module)


def known_kinds() -> list[str]:
    _load()
    return GENERATORS.names()


def generator(kind: str) -> Generator:
    """The generator of `data.synth.kind`.

    Raises:
        FusescopeError: an unknown kind, listing the known ones.
    """
    _load()
    if kind not in GENERATORS:
        raise FusescopeError(f"data.synth.kind={kind!r} unknown; known: {', '.join(known_kinds())}")
    return GENERATORS.get(kind)


def kind_of_record(record: Mapping[str, Any]) -> str | None:
    """The kind that wrote a folder's generator record: its `kind`, or for a record written
    before records named it, the kind whose record name it has."""
    if "kind" in record:
        return record["kind"]
    _load()
    names = [k for k in GENERATORS.names() if GENERATORS.get(k).record == record.get("name")]
    return names[0] if names else None
