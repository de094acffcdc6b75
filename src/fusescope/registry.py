"""Name -> builder registries, one per kind of component (fusion method, decoder, data set).

An unknown name is an error listing the known ones, never a silent fallback; a builder's keyword
arguments are its config schema, so an unknown config key is reported with the accepted ones, and
a value that is not a number where the annotation asks for one (a string, NaN or infinity) is
reported before the builder runs.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from fusescope.errors import FusescopeError


class Registry:
    """A named table of builders.

    Args:
        kind: what the entries build, used in error messages ("fusion method", "decoder", ...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                warnings.warn(
                    f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2
                )
            self._builders[name] = builder
            return builder

        return add

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders:
            raise FusescopeError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._builders[name]

    def build(self, name: str, options: Mapping[str, Any], where: str = "", **fixed: Any) -> Any:
        """Call the builder `name` with `fixed` arguments plus user `options`.

        Args:
            name: registered name.
            options: user-supplied keyword arguments (from a config section); every key must be a
                parameter of the builder.
            where: config path of `options` (e.g. "model"), to name unknown keys precisely.
            **fixed: arguments supplied by fusescope itself (modalities, class count, ...).
        """
        builder = self.get(name)
        check_keywords(builder, options, where or self.kind, exclude=set(fixed))
        check_option_types(builder, options, where or self.kind)
        return builder(**fixed, **dict(options))


def check_keywords(
    fn: Callable[..., Any], options: Mapping[str, Any], where: str, exclude: set[str] = frozenset()
) -> None:
    """Raise a FusescopeError naming every key of `options` that `fn` does not accept."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = sorted(k for k in params if k not in exclude)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        keys = ", ".join(f"{where}.{k}" for k in unknown)
        raise FusescopeError(f"unknown config key {keys}; accepted: {', '.join(accepted)}")


def _fits(value: Any, annotation: Any) -> bool | None:
    """Whether `value` fits a numeric annotation (int, float, None and unions of them); None
    where the annotation is anything else: builders take mappings where a name is annotated
    (`backbone: str` given `{name, output_stride}`), and check those themselves."""
    if annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_fits(value, a) for a in typing.get_args(annotation)]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if annotation is type(None):
        return value is None
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    return None


def check_option_types(fn: Callable[..., Any], options: Mapping[str, Any], where: str) -> None:
    """Raise a FusescopeError naming the first option whose value does not fit its parameter's
    numeric annotation: `theta: float` given "nan" (a string) or .nan, `depth: int` given 2.5.

    Raises:
        FusescopeError: `<where>.<key>=<value>` and the kind expected.
    """
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved: not checked
        return
    for key, value in options.items():
        if key in hints and _fits(value, hints[key]) is False:
            raise FusescopeError(f"{where}.{key}={value!r} must be {_describe(hints[key])}")


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    words = {
        bool: "true or false",
        int: "an integer",
        float: "a finite number",
        str: "a string",
        type(None): "null",
    }
    return words.get(annotation, getattr(annotation, "__name__", str(annotation)))
