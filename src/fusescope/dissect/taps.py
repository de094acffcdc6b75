"""Feature taps: read any module's output by its dotted name, through forward hooks.

Dissection never edits a model. A `Tap` names a module (`"encoders.rgb.layer4"`, `"fuse.3"`),
optionally an element of its output (timm `features_only` encoders return a list), and, for
multi-stream models that stack their modalities along the batch axis (`(B*M, C, H, W)`), the
modality names to split that axis into per-modality views.

    with FeatureTaps(model, {"rgb": Tap("encoders.rgb.layer4"), "fused": Tap("fuse.3")}) as taps:
        model(batch)
        taps.features["rgb"]          # (B, C, h, w)

`stream_features` runs several models over a probe loader batch by batch and yields the tapped
(and channel-concatenated, e.g. Cat(F_rgb, F_depth)) features of each batch, so nothing but one
batch of activations is ever held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusescope.errors import FusescopeError


@dataclass(frozen=True)
class Tap:
    """What to read from one module.

    Attributes:
        module: dotted module name as in `model.named_modules()`; "" is the model itself.
        index: element to take when the module returns a list/tuple (int) or a dict (key).
        split: modality names, in stacking order, when the output is `(B*M, ...)`; the tap then
            yields one feature per modality, keyed `"{tap}@{modality}"`.
        tokens: the output is a transformer block's tokens `(B, N, C)` (or Swin's channels-last
            `(B, h, w, C)`): read them as a map `(B, C, h, w)` on the input's grid
            (`tokens_as_map`).
    """

    module: str
    index: int | str | None = None
    split: tuple[str, ...] | None = None
    tokens: bool = False


def tokens_as_map(x: Tensor, input_size: tuple[int, int], name: str) -> Tensor:
    """A transformer block's tokens as a feature map: `(B, N, C)` on the input's grid of some
    stride s (N = ceil(H/s) * ceil(W/s), plus up to 16 leading prefix tokens such as a ViT's
    class token, dropped) -> `(B, C, h, w)`; channels-last maps `(B, h, w, C)` (Swin) are
    permuted."""
    if x.dim() == 4:
        return x.permute(0, 3, 1, 2)
    if x.dim() != 3:
        raise FusescopeError(f"tap {name!r}: tokens must be (B, N, C), got {tuple(x.shape)}")
    B, N, C = x.shape
    H, W = input_size
    grids = [(-(-H // 2**k), -(-W // 2**k)) for k in range(7)]  # strides 1 ... 64
    fits = [(h, w) for h, w in grids if 0 <= N - h * w <= 16]
    if not fits:
        raise FusescopeError(
            f"tap {name!r}: {N} tokens lie on no grid of the {H}x{W} input (strides 1-64)"
        )
    h, w = min(fits, key=lambda g: N - g[0] * g[1])
    return x[:, N - h * w :].transpose(1, 2).reshape(B, C, h, w)


def as_tap(spec: Tap | str) -> Tap:
    return spec if isinstance(spec, Tap) else Tap(spec)


def tap_keys(name: str, tap: Tap) -> list[str]:
    """The feature keys one tap produces."""
    if tap.split:
        return [f"{name}@{m}" for m in tap.split]
    return [name]


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`, or an error listing a few names that do exist."""
    modules = dict(model.named_modules())
    if name not in modules:
        close = [n for n in modules if n and (name.split(".")[0] in n)][:8]
        hint = ", ".join(close) if close else ", ".join(list(modules)[1:9])
        raise FusescopeError(f"no module {name!r} in {type(model).__name__}; e.g. {hint}")
    return modules[name]


def select_output(output: Any, tap: Tap, name: str) -> Tensor:
    out = output
    if tap.index is not None:
        try:
            out = output[tap.index]
        except (IndexError, KeyError, TypeError):
            raise FusescopeError(
                f"tap {name!r}: output of {tap.module!r} has no element {tap.index!r}"
            ) from None
    if not isinstance(out, Tensor):
        raise FusescopeError(
            f"tap {name!r}: {tap.module!r} returns {type(out).__name__}; "
            f"set Tap(index=...) to pick a tensor"
        )
    return out


def split_modalities(x: Tensor, modalities: tuple[str, ...], name: str) -> dict[str, Tensor]:
    """Per-modality views of a `(B*M, ...)` activation (sample-major stacking, as
    `fusescope.models.multistream.stack_modalities` builds it)."""
    m = len(modalities)
    if x.shape[0] % m:
        raise FusescopeError(
            f"tap {name!r}: batch axis {x.shape[0]} is not a multiple of {m} modalities"
        )
    views = x.unflatten(0, (-1, m))  # (B, M, ...)
    return {f"{name}@{mod}": views[:, i] for i, mod in enumerate(modalities)}


class FeatureTaps:
    """Forward hooks on named modules; a context manager that removes them on exit.

    Args:
        model: any module.
        taps: feature name -> `Tap` (or a bare dotted module name).
        grad: keep tapped activations in the autograd graph (Grad-CAM). The hook then hands a
            clone downstream, so a later in-place op (`x += shortcut`, `ReLU(inplace=True)`)
            cannot overwrite the tensor whose gradient is asked for.

    After each forward, `features` maps every key of `tap_keys` to a tensor (detached copies
    unless `grad`); in grad mode `raw` maps each tap name to the unsplit output, the tensor
    to differentiate with respect to (a split view is not itself on the path to the output).
    """

    def __init__(self, model: nn.Module, taps: Mapping[str, Tap | str], grad: bool = False):
        self.model = model
        self.taps = {name: as_tap(spec) for name, spec in taps.items()}
        self.grad = grad
        self.features: dict[str, Tensor] = {}
        self.raw: dict[str, Tensor] = {}  # tap name -> unsplit output, in grad mode
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.input_size: tuple[int, int] = (0, 0)  # the forward's image size (token taps)
        for tap in self.taps.values():
            find_module(model, tap.module)  # fail before any forward, naming the bad tap

    def _record_input(self, module: nn.Module, args: tuple) -> None:
        images = [v for v in _tensors(args) if v.dim() == 4]
        if images:
            self.input_size = tuple(images[0].shape[-2:])

    def _hook(self, name: str, tap: Tap) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            out = select_output(output, tap, name)
            x = tokens_as_map(out, self.input_size, name) if tap.tokens else out
            if self.grad:
                kept = x
            else:
                # a copy: the module's output may be modified in place further on
                kept = x.detach().clone()
            if self.grad:
                self.raw[name] = x
            if tap.split:
                self.features.update(split_modalities(kept, tap.split, name))
            else:
                self.features[name] = kept
            if self.grad and tap.index is None:
                # the forward goes on from the tapped tensor (a token tap: from its map), so
                # the gradient asked for is the one that reaches the output
                return map_as_tokens(x, out) if tap.tokens else x.clone()
            return None

        return hook

    def __enter__(self) -> FeatureTaps:
        self.features, self.raw = {}, {}
        if any(tap.tokens for tap in self.taps.values()):
            self._handles.append(self.model.register_forward_pre_hook(self._record_input))
        for name, tap in self.taps.items():
            module = find_module(self.model, tap.module)
            self._handles.append(module.register_forward_hook(self._hook(name, tap)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def keys(self) -> list[str]:
        return [k for name, tap in self.taps.items() for k in tap_keys(name, tap)]


def map_as_tokens(x: Tensor, like: Tensor) -> Tensor:
    """The inverse of `tokens_as_map`: the map `(B, C, h, w)` back in the layout of `like`
    (its prefix tokens kept), a new tensor."""
    if like.dim() == 4:
        return x.permute(0, 2, 3, 1).clone()
    tokens = x.flatten(2).transpose(1, 2)
    prefix = like.shape[1] - tokens.shape[1]
    return torch.cat([like[:, :prefix], tokens], 1) if prefix else tokens.clone()


def _tensors(args: Any) -> list[Tensor]:
    """The tensors of a forward's arguments (a batch dict, or tensors)."""
    found = []
    for a in args:
        if isinstance(a, Tensor):
            found.append(a)
        elif isinstance(a, Mapping):
            found.extend(v for v in a.values() if isinstance(v, Tensor))
    return found


def concat_features(features: list[Tensor]) -> Tensor:
    """Channel-wise concatenation, Cat(F_1, F_2, ...): `(B, C_i, h_i, w_i)` -> `(B, sum C, h, w)`.

    Features of different spatial size are resized bilinearly to the first one's, so the same
    stage of two different backbones can still be concatenated.
    """
    size = features[0].shape[-2:]
    same = [
        f
        if f.shape[-2:] == size or f.dim() != 4
        else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        for f in features
    ]
    return torch.cat(same, dim=1)


@dataclass(frozen=True)
class ModelTap:
    """A tap on one of several models: which model, and what to read from it."""

    model: str
    tap: Tap


def move_batch(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


@torch.no_grad()
def stream_features(
    models: Mapping[str, nn.Module],
    taps: Mapping[str, tuple[str, Tap | str] | ModelTap],
    loader: Iterable[Mapping[str, Any]],
    concat: Mapping[str, list[str]] | None = None,
    device: torch.device | str = "cpu",
    adapt: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
) -> Iterator[tuple[dict[str, Any], dict[str, Tensor]]]:
    """Run every model on each batch and yield `(batch, features)`, one batch at a time.

    Args:
        models: name -> model (put in eval mode by the caller); each reads its own modalities
            from the shared batch dict.
        taps: feature name -> (model name, Tap or dotted name). A split tap yields
            `"{name}@{modality}"` keys.
        loader: yields batch dicts (`{"rgb": (B,3,H,W), "depth": ..., "label": (B,H,W)}`).
        concat: feature name -> list of feature keys to concatenate over channels
            (Cat(F_rgb, F_depth)), computed in order (a part may be an earlier concatenation;
            one part renames a feature); the parts stay in the output too.
        device: where the models run.
        adapt: model name -> function turning the shared batch into that model's input (e.g.
            each run's own normalisation); models without one get the batch as is.

    Yields:
        The batch (moved to `device`) and a dict feature key -> `(B, C, h, w)` tensor.
    """
    parsed = {
        name: spec if isinstance(spec, ModelTap) else ModelTap(spec[0], as_tap(spec[1]))
        for name, spec in taps.items()
    }
    unknown = sorted({t.model for t in parsed.values()} - set(models))
    if unknown:
        raise FusescopeError(f"taps name unknown models {unknown}; models: {sorted(models)}")
    per_model: dict[str, dict[str, Tap]] = {}
    for name, spec in parsed.items():
        per_model.setdefault(spec.model, {})[name] = spec.tap
    known = {k for name, spec in parsed.items() for k in tap_keys(name, spec.tap)}
    for name, parts in (concat or {}).items():  # in order: one may read an earlier one
        missing = [p for p in parts if p not in known]
        if missing:
            raise FusescopeError(
                f"concat {name!r}: unknown features {missing}; known: {sorted(known)}"
            )
        known.add(name)
    hooks = {m: FeatureTaps(models[m], t) for m, t in per_model.items()}
    for batch in loader:
        batch = move_batch(batch, device)
        features: dict[str, Tensor] = {}
        for model_name, taps_of_model in hooks.items():
            fn = (adapt or {}).get(model_name)
            with taps_of_model:
                models[model_name](fn(batch) if fn else batch)
            features.update(taps_of_model.features)
        for name, parts in (concat or {}).items():
            features[name] = concat_features([features[p] for p in parts])
        yield batch, features
